"""Decoding responses into results, and the error type."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import status_pb2

from client import ClassScore, ClientError, PredictResult, StreamResult
from serving.v1 import model_pb2, predict_pb2, stream_pb2
from wire.codec import from_numpy

SCORES = np.array([[0.1, 0.9], [0.7, 0.3]], dtype=np.float32)


def hand_made_response() -> predict_pb2.PredictResponse:
    """Two rows: a raw float32 output, a typed int64 output and classifications."""
    return predict_pb2.PredictResponse(
        request_id="req-1",
        model=model_pb2.ModelRef(name="digits", version=3),
        outputs={
            "scores": from_numpy(SCORES, raw=True),
            "ids": from_numpy(np.array([4, 5], dtype=np.int64), raw=False),
        },
        classifications=[
            predict_pb2.Classification(
                classes=[
                    predict_pb2.ClassScore(label="b", index=1, score=0.9),
                    predict_pb2.ClassScore(label="a", index=0, score=0.1),
                ]
            ),
            predict_pb2.Classification(classes=[predict_pb2.ClassScore(label="a", score=0.7)]),
        ],
        task_id="task-9",
    )


def test_predict_result_from_response() -> None:
    response = hand_made_response()
    result = PredictResult.from_response(response)
    assert (result.request_id, result.model, result.version, result.task_id) == (
        "req-1",
        "digits",
        3,
        "task-9",
    )
    assert list(result.outputs) == ["ids", "scores"]
    np.testing.assert_array_equal(result.outputs["scores"], SCORES)
    assert result.outputs["scores"].dtype == np.float32
    np.testing.assert_array_equal(result.outputs["ids"], [4, 5])
    assert result.classifications[0] == [
        ClassScore("b", 1, pytest.approx(0.9)),  # type: ignore[arg-type]  # approx() equals the float
        ClassScore("a", 0, pytest.approx(0.1)),  # type: ignore[arg-type]
    ]
    assert result.classifications[1][0].label == "a"
    assert result.response is response


def test_predict_result_without_classifications() -> None:
    result = PredictResult.from_response(predict_pb2.PredictResponse(request_id="x"))
    assert result.outputs == {}
    assert result.classifications == []
    assert result.task_id == ""


def test_stream_result_from_response_and_error() -> None:
    ok = StreamResult.from_message(stream_pb2.StreamPredictResponse(request_id="0", response=hand_made_response()))
    assert ok.ok and ok.request_id == "0" and ok.error is None
    assert ok.result is not None and ok.result.model == "digits"

    error = status_pb2.Status(code=3, message="input 'image': wrong shape")
    message = stream_pb2.StreamPredictResponse(request_id="1", error=error)
    failed = StreamResult.from_message(message)
    assert not failed.ok and failed.result is None
    assert failed.error is not None
    assert failed.error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(failed.error) == "INVALID_ARGUMENT: input 'image': wrong shape"


def test_client_error_text() -> None:
    assert str(ClientError(grpc.StatusCode.NOT_FOUND, "no model 'x'")) == "NOT_FOUND: no model 'x'"
    assert str(ClientError(grpc.StatusCode.CANCELLED, "")) == "CANCELLED"
    assert ClientError.from_status(999, "?").code == grpc.StatusCode.UNKNOWN
    assert ClientError.from_status(14, "down").code == grpc.StatusCode.UNAVAILABLE
