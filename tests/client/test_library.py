"""`Client` against a real in-process gRPC server with fake services."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from client import Client, ClientError
from tests.support.fake_serving import FakeServer, fake_scores
from wire.codec import to_numpy

pytestmark = pytest.mark.integration


def test_predict_sends_raw_tensor_and_metadata(fake_server: FakeServer) -> None:
    image = np.arange(8, dtype=np.float32).reshape(2, 4)
    with Client(fake_server.target, api_key="secret", metadata=[("X-Tenant", "t1")]) as client:
        result = client.predict("digits", {"image": image}, version=1, top_k=2, request_id="r-7")

    request = fake_server.predict.requests[-1]
    assert request.model == "digits" and request.version == 1 and request.top_k == 2
    assert request.request_id == "r-7"
    tensor = request.inputs["image"].tensor
    assert tensor.raw and not tensor.float_val
    np.testing.assert_array_equal(to_numpy(tensor), image)
    metadata = fake_server.predict.metadata[-1]
    assert metadata["authorization"] == "Bearer secret"
    assert metadata["x-request-id"] == "r-7"
    assert metadata["x-tenant"] == "t1"

    assert result.request_id == "r-7" and result.model == "digits" and result.version == 1
    np.testing.assert_array_equal(result.outputs["scores"], fake_scores(2))
    assert [row[0].label for row in result.classifications] == ["zero", "one"]
    assert len(result.classifications[0]) == 2


def test_no_authorization_without_api_key(fake_server: FakeServer) -> None:
    with Client(fake_server.target) as client:
        client.predict("digits", {"image": np.zeros((1, 4), np.float32)})
    metadata = fake_server.predict.metadata[-1]
    assert "authorization" not in metadata and "x-request-id" not in metadata


def test_invalid_argument_becomes_client_error(fake_server: FakeServer) -> None:
    with Client(fake_server.target) as client, pytest.raises(ClientError) as caught:
        client.predict("bad", {"image": np.zeros((1, 4), np.float32)})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == "input 'image': expected FLOAT32"
    assert str(caught.value) == "INVALID_ARGUMENT: input 'image': expected FLOAT32"


def test_deadline(fake_server: FakeServer) -> None:
    with Client(fake_server.target, timeout=0.05) as client, pytest.raises(ClientError) as caught:
        client.predict("slow", {"image": np.zeros((1, 4), np.float32)})
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_predict_image_uses_metadata_once(fake_server: FakeServer, tmp_path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"png-bytes")
    with Client(fake_server.target) as client:
        first = client.predict_image("digits", [path, b"raw-bytes"])
        client.predict_image("digits", str(path))
    assert fake_server.predict.get_model_calls == 1
    images = fake_server.predict.requests[0].inputs["image"].images.images
    assert list(images) == [b"png-bytes", b"raw-bytes"]
    assert len(first.classifications) == 2


def test_stream_predict(fake_server: FakeServer) -> None:
    batches = [{"image": np.ones((n, 4), np.float32)} for n in (1, 2, 3)]
    with Client(fake_server.target) as client:
        results = list(client.stream_predict("digits", batches, request_ids=["a"]))
        failed = list(client.stream_predict("bad", batches[:1]))
    assert [r.request_id for r in results] == ["a", "1", "2"]
    assert all(r.ok for r in results)
    assert [r.result.outputs["scores"].shape[0] for r in results if r.result] == [1, 2, 3]
    assert failed[0].error is not None
    assert failed[0].error.code == grpc.StatusCode.INVALID_ARGUMENT


def test_models_and_health(fake_server: FakeServer) -> None:
    with Client(fake_server.target) as client:
        assert [m.name for m in client.list_models()] == ["digits"]
        assert client.get_model("digits").labels == ["zero", "one", "two"]
        with pytest.raises(ClientError) as caught:
            client.get_model("nope")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert client.health() == "SERVING"
        assert client.health("draining") == "NOT_SERVING"
        assert client.health("serving.v1.Unknown") == "SERVICE_UNKNOWN"


def test_predict_async_unimplemented(fake_server: FakeServer) -> None:
    with Client(fake_server.target) as client, pytest.raises(ClientError) as caught:
        client.predict_async("digits", {"image": np.zeros((1, 4), np.float32)})
    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED


def test_injected_channel_stays_open(fake_server: FakeServer) -> None:
    channel = grpc.insecure_channel(fake_server.target)
    with Client(channel=channel) as client:
        client.list_models()
    with Client(channel=channel) as client:
        assert client.health() == "SERVING"
    channel.close()
