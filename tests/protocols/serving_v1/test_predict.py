"""Predict, GetModel and ListModels through a real server subprocess and the real demo model."""

from __future__ import annotations

import random
import threading

import grpc
import numpy as np
import pytest

from serving.v1 import model_pb2, predict_pb2, predict_pb2_grpc, tensor_pb2
from tests.conftest import digits_rows
from tests.support.servers import MODEL_DIR
from wire.codec import from_numpy, to_numpy

pytestmark = pytest.mark.integration

SAMPLES = MODEL_DIR / "digits" / "samples"


def tensor_request(x: np.ndarray, **fields) -> predict_pb2.PredictRequest:
    return predict_pb2.PredictRequest(
        model="digits", inputs={"image": tensor_pb2.Input(tensor=from_numpy(x))}, **fields
    )


def assert_same_rows(got: np.ndarray, want: np.ndarray) -> None:
    # Batched and unbatched calls may round differently in the last float bits
    # (oneDNN picks kernels by batch size), so equality is to float32 precision.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> predict_pb2_grpc.PredictServiceStub:
    return predict_pb2_grpc.PredictServiceStub(channel)


def test_predict_matches_the_model(stub, digits_reference):
    x = digits_rows(5)
    reply = stub.Predict(tensor_request(x, request_id="req-1"), timeout=10)
    assert reply.request_id == "req-1"
    assert (reply.model.name, reply.model.version) == ("digits", 1)
    assert list(reply.outputs) == ["probabilities"]
    got = to_numpy(reply.outputs["probabilities"])
    assert got.shape == (5, 10) and got.dtype == np.float32
    assert_same_rows(got, digits_reference(x))


def test_top_k_classifications_follow_the_scores(stub):
    x = digits_rows(4, seed=3)
    reply = stub.Predict(tensor_request(x, top_k=2), timeout=10)
    scores = to_numpy(reply.outputs["probabilities"])
    assert len(reply.classifications) == 4
    for row, classification in zip(scores, reply.classifications, strict=True):
        best = np.argsort(-row)[:2]
        assert [c.index for c in classification.classes] == list(best)
        assert [c.label for c in classification.classes] == [str(i) for i in best]
        assert [c.score for c in classification.classes] == pytest.approx(row[best].tolist())


def test_negative_top_k_turns_classifications_off(stub):
    reply = stub.Predict(tensor_request(digits_rows(1), top_k=-1), timeout=10)
    assert len(reply.classifications) == 0


def test_request_id_from_metadata_else_generated(stub):
    reply = stub.Predict(tensor_request(digits_rows(1)), metadata=[("x-request-id", "from-header")], timeout=10)
    assert reply.request_id == "from-header"
    first = stub.Predict(tensor_request(digits_rows(1)), timeout=10).request_id
    second = stub.Predict(tensor_request(digits_rows(1)), timeout=10).request_id
    assert len(first) == 32 and first != second


def test_typed_output_encoding(stub, digits_reference):
    x = digits_rows(2, seed=7)
    reply = stub.Predict(tensor_request(x, output_encoding=predict_pb2.TENSOR_ENCODING_TYPED), timeout=10)
    out = reply.outputs["probabilities"]
    assert out.raw == b"" and len(out.float_val) == 20
    assert_same_rows(to_numpy(out), digits_reference(x))


def test_typed_input_values(stub, digits_reference):
    x = digits_rows(2, seed=8)
    tensor = from_numpy(x, raw=False)
    assert tensor.raw == b"" and len(tensor.float_val) == 128
    reply = stub.Predict(
        predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_pb2.Input(tensor=tensor)}), timeout=10
    )
    assert_same_rows(to_numpy(reply.outputs["probabilities"]), digits_reference(x))


@pytest.mark.parametrize("digit", range(10))
def test_sample_images_are_classified(stub, digit):
    for name in (f"digit_{digit}.png", f"digit_{digit}_64.png"):
        data = (SAMPLES / name).read_bytes()
        reply = stub.Predict(
            predict_pb2.PredictRequest(
                model="digits", inputs={"image": tensor_pb2.Input(images=tensor_pb2.ImageBatch(images=[data]))}
            ),
            timeout=10,
        )
        assert reply.classifications[0].classes[0].label == str(digit), name


def test_concurrent_interleaved_callers_get_their_own_rows(stub, digits_reference):
    """Many threads, random request sizes: every caller gets exactly the model's output for its rows."""
    x = digits_rows(600, seed=11)
    want = digits_reference(x)
    rng = random.Random(5)
    chunks, start = [], 0
    while start < len(x):
        size = rng.randint(1, 9)
        chunks.append((start, min(start + size, len(x))))
        start += size
    errors: list[BaseException] = []
    results: dict[tuple[int, int], np.ndarray] = {}
    lock = threading.Lock()

    def worker(mine: list[tuple[int, int]]) -> None:
        try:
            for lo, hi in mine:
                reply = stub.Predict(tensor_request(x[lo:hi], request_id=f"{lo}"), timeout=30)
                assert reply.request_id == f"{lo}"
                with lock:
                    results[(lo, hi)] = to_numpy(reply.outputs["probabilities"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(chunks[i::16],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert len(results) == len(chunks)
    for (lo, hi), got in results.items():
        assert_same_rows(got, want[lo:hi])


def test_get_model_reports_the_signature(stub):
    model = stub.GetModel(predict_pb2.GetModelRequest(model="digits"), timeout=10).model
    assert (model.name, model.version, list(model.available_versions)) == ("digits", 1, [1])
    assert [(i.name, i.dtype, list(i.shape)) for i in model.inputs] == [
        ("image", tensor_pb2.DATA_TYPE_FLOAT32, [-1, 8, 8, 1])
    ]
    assert [(o.name, o.dtype, list(o.shape)) for o in model.outputs] == [
        ("probabilities", tensor_pb2.DATA_TYPE_FLOAT32, [-1, 10])
    ]
    assert list(model.labels) == [str(i) for i in range(10)]
    assert model.classification_output == "probabilities"
    assert list(model.image_inputs) == ["image"]
    assert model.state == model_pb2.MODEL_STATE_READY
    assert model.device == "/device:CPU:0"
    assert model.batching.max_batch_size == 512


def test_list_models(stub):
    models = stub.ListModels(predict_pb2.ListModelsRequest(), timeout=10).models
    assert [m.name for m in models] == ["digits", "digits_decoder", "digits_keras"]
    decoder = models[1]
    assert [(s.name, list(s.shape)) for s in decoder.inputs] == [("digit", [-1])]
    assert [(s.name, list(s.shape)) for s in decoder.outputs] == [("image", [-1, 32, 32, 1])]


def test_large_messages_are_accepted(stub):
    """64 MiB default limit: a 5 MB request reaches validation instead of being cut at 4 MB."""
    x = np.zeros((20000, 8, 8, 1), np.float32)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(tensor_request(x), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "20000 rows exceed max_batch_size 512" in info.value.details()
