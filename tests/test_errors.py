"""Every kind of bad input gets its gRPC code and a message naming the field; the server lives on."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.v1 import predict_pb2, predict_pb2_grpc, stream_pb2_grpc, tensor_pb2
from tests.conftest import digits_rows
from tests.support.servers import wait_for
from wire.codec import from_numpy

pytestmark = pytest.mark.integration

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def image_input(*images: bytes) -> tensor_pb2.Input:
    return tensor_pb2.Input(images=tensor_pb2.ImageBatch(images=list(images)))


def tensor_input(x: np.ndarray, **changes) -> tensor_pb2.Input:
    tensor = from_numpy(x)
    for name, value in changes.items():
        if name == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)
        else:
            setattr(tensor, name, value)
    return tensor_pb2.Input(tensor=tensor)


GOOD = digits_rows(2)
PNG = b"\x89PNG\r\n\x1a\n"

CASES = {
    "unknown model": (
        predict_pb2.PredictRequest(model="nope", inputs={"image": tensor_input(GOOD)}),
        grpc.StatusCode.NOT_FOUND,
        "model 'nope' not found; available models: 'digits'",
    ),
    "unknown version": (
        predict_pb2.PredictRequest(model="digits", version=9, inputs={"image": tensor_input(GOOD)}),
        grpc.StatusCode.NOT_FOUND,
        "version 9 of model 'digits' is not served; served version: 1",
    ),
    "no inputs": (
        predict_pb2.PredictRequest(model="digits"),
        INVALID,
        "inputs: none given; model 'digits' takes 'image' (FLOAT32 [-1, 8, 8, 1])",
    ),
    "missing input": (
        predict_pb2.PredictRequest(model="digits", inputs={"pixels": tensor_input(GOOD)}),
        INVALID,
        "inputs: unknown input 'pixels'; model 'digits' takes 'image'",
    ),
    "wrong dtype": (
        predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_input(GOOD.astype(np.float64))}),
        INVALID,
        "input 'image': dtype FLOAT64 does not match the model's FLOAT32 [-1, 8, 8, 1]",
    ),
    "wrong shape": (
        predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_input(np.zeros((2, 8, 8), np.float32))}),
        INVALID,
        "input 'image': shape [2, 8, 8] does not match the model's FLOAT32 [-1, 8, 8, 1]",
    ),
    "byte length not matching shape": (
        predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_input(GOOD, shape=[3, 8, 8, 1])}),
        INVALID,
        "input 'image': raw holds 512 bytes but shape [3, 8, 8, 1] of FLOAT32 needs 768",
    ),
    "no dtype": (
        predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_input(GOOD, dtype=0)}),
        INVALID,
        "input 'image': dtype is required (for example DATA_TYPE_FLOAT32)",
    ),
    "zero rows": (
        predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_input(np.zeros((0, 8, 8, 1), np.float32))}),
        INVALID,
        "input 'image': batch dimension is 0; send at least one row",
    ),
    "corrupt image": (
        predict_pb2.PredictRequest(model="digits", inputs={"image": image_input(PNG + b"broken")}),
        INVALID,
        "input 'image': image 0 is not a decodable JPEG, PNG, GIF or BMP image",
    ),
    "not an image": (
        predict_pb2.PredictRequest(model="digits", inputs={"image": image_input(b"hello")}),
        INVALID,
        "input 'image': image 0 is not a decodable JPEG, PNG, GIF or BMP image (unknown format)",
    ),
    "empty image list": (
        predict_pb2.PredictRequest(model="digits", inputs={"image": image_input()}),
        INVALID,
        "input 'image': images is empty; send at least one encoded image",
    ),
    "input with neither tensor nor images": (
        predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_pb2.Input()}),
        INVALID,
        "input 'image': set either tensor or images",
    ),
    "unknown output": (
        predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_input(GOOD)}, output_filter=["logits"]),
        INVALID,
        "output_filter: unknown output 'logits'; model 'digits' returns 'probabilities'",
    ),
    "too many rows": (
        predict_pb2.PredictRequest(
            model="digits", inputs={"image": tensor_input(np.zeros((513, 8, 8, 1), np.float32))}
        ),
        INVALID,
        "inputs: 513 rows exceed max_batch_size 512 of model 'digits'; split the request",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_gets_code_and_message(channel, case):
    request, code, message = CASES[case]
    stub = predict_pb2_grpc.PredictServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.code() == code
    assert info.value.details().startswith(message), info.value.details()
    # and the server still answers
    assert stub.Predict(predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_input(GOOD)}), timeout=10)


def test_get_model_unknown(channel):
    with pytest.raises(grpc.RpcError) as info:
        predict_pb2_grpc.PredictServiceStub(channel).GetModel(predict_pb2.GetModelRequest(model="x"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_bad_message_gets_an_error_and_the_stream_goes_on(channel, digits_reference):
    from serving.v1 import stream_pb2

    good = digits_rows(1, seed=4)
    messages = [
        stream_pb2.StreamPredictRequest(
            request=predict_pb2.PredictRequest(model="digits", request_id="a", inputs={"image": tensor_input(good)})
        ),
        stream_pb2.StreamPredictRequest(
            request=predict_pb2.PredictRequest(
                model="digits", request_id="bad", inputs={"image": tensor_input(good.astype(np.float64))}
            )
        ),
        stream_pb2.StreamPredictRequest(
            request=predict_pb2.PredictRequest(model="nope", request_id="missing", inputs={"image": tensor_input(good)})
        ),
        stream_pb2.StreamPredictRequest(
            request=predict_pb2.PredictRequest(model="digits", request_id="b", inputs={"image": tensor_input(good)})
        ),
    ]
    replies = {
        r.request_id: r
        for r in stream_pb2_grpc.StreamPredictServiceStub(channel).StreamPredict(iter(messages), timeout=20)
    }
    assert sorted(replies) == ["a", "b", "bad", "missing"]
    assert replies["bad"].WhichOneof("result") == "error"
    assert replies["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert replies["bad"].error.message.startswith("input 'image': dtype FLOAT64")
    assert replies["missing"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    for ok in ("a", "b"):
        assert replies[ok].WhichOneof("result") == "response"


@pytest.mark.parametrize(
    "method", ["/serving.v1.StreamPredictService/StreamPredict", "/inference.GRPCInferenceService/ModelStreamInfer"]
)
def test_a_stream_message_that_is_not_protobuf_fails_the_stream_as_invalid(channel, method):
    """Bytes that do not parse as the request message end the stream with INVALID_ARGUMENT (not OK with
    nothing answered, nor a traceback in the log); the server keeps serving."""
    stream = channel.stream_stream(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as raised:
        list(stream(iter([b"\x0a\xff\xff\xff"]), timeout=20))
    assert raised.value.code() == INVALID
    assert raised.value.details().startswith("request stream: a message is not valid protobuf"), raised.value.details()
    reply = predict_pb2_grpc.PredictServiceStub(channel).Predict(
        predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_input(GOOD)}), timeout=20
    )
    assert list(reply.outputs["probabilities"].shape) == [2, 10]


GARBAGE = b"\x0a\xff\xff\xff"  # a length-delimited field longer than the message


@pytest.mark.parametrize(
    "method",
    [
        "/serving.v1.PredictService/Predict",
        "/serving.v1.PredictService/GetModel",
        "/serving.v1.TaskService/GetTask",
        "/serving.v1.TaskService/WatchTask",
        "/tensorflow.serving.PredictionService/Predict",
        "/inference.GRPCInferenceService/ModelInfer",
        "/grpc.health.v1.Health/Check",
    ],
)
def test_unary_bytes_that_are_no_message_are_invalid_and_logged(server, channel, method):
    """grpc's own parsing would answer INTERNAL before any interceptor runs, unlogged and uncounted."""
    call = channel.unary_stream if method.endswith("WatchTask") else channel.unary_unary
    stub = call(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as raised:
        reply = stub(GARBAGE, timeout=20, metadata=[("x-request-id", f"garbage-{method}")])
        if method.endswith("WatchTask"):
            list(reply)
    assert raised.value.code() == INVALID, raised.value.details()
    assert raised.value.details().startswith("request: the bytes are not a valid message of this method ("), (
        raised.value.details()
    )

    def logged() -> dict | None:
        lines = [
            json.loads(line) for line in Path(server.log_path.with_name("server-access.log")).read_text().splitlines()
        ]
        return next((line for line in lines if line["request_id"] == f"garbage-{method}"), None)

    line = wait_for(logged, 10, "the access log line")
    assert (line["method"], line["status"], line["request_bytes"]) == (method, "INVALID_ARGUMENT", len(GARBAGE))


def test_a_request_stream_that_broke_is_cancelled_not_a_bug(caplog):
    """A servicer reading a request stream whose caller went away gets a grpc.RpcError: the error table
    answers it with its own code (CANCELLED when it has none worth keeping), without an error log."""
    from server.errors import status_of
    from server.threaded import StreamBroken

    class Unknown(grpc.RpcError):
        pass

    assert status_of(StreamBroken()) == (grpc.StatusCode.CANCELLED, "the call is over")
    assert status_of(Unknown()) == (grpc.StatusCode.CANCELLED, "the call was cancelled")
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
