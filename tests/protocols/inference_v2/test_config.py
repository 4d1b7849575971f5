"""Triton's model configuration extension: ModelConfig over gRPC and GET /v2/models/{model}/config, read by
Triton's own clients (in a subprocess: tritonclient's messages share the server's protobuf names)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest

from inference import open_inference_pb2 as pb
from inference import open_inference_pb2_grpc as pb_grpc
from tests.models.test_reload import add_version
from tests.support import triton
from tests.support.servers import MODEL_DIR

pytestmark = pytest.mark.integration

DIGITS = {
    "name": "digits",
    "platform": "tensorflow_savedmodel",
    "backend": "tensorflow",
    "version_policy": {"latest": {"num_versions": 1}},
    "max_batch_size": 512,
    "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": [8, 8, 1]}],
    "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10], "label_filename": "labels.txt"}],
    "dynamic_batching": {},
}


def triton_configs(app, model: str) -> dict:
    return triton.run("config", app.address, app.http_address, model)


def test_tritons_clients_read_the_configuration(make_app) -> None:
    app = make_app()
    seen = triton_configs(app, "digits")
    assert seen["http"] == DIGITS
    grpc_seen = seen["grpc"]  # protobuf JSON: 64-bit integers as strings
    assert grpc_seen["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": ["8", "8", "1"]}]
    assert (grpc_seen["platform"], grpc_seen["max_batch_size"]) == ("tensorflow_savedmodel", 512)
    keras = triton_configs(app, "digits_keras")["http"]
    assert {**keras, "name": "digits", "platform": "tensorflow_savedmodel"} == DIGITS


def test_serving_json_batching_and_policy_show_in_the_configuration(make_app, tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    for version in (1, 2, 3):
        add_version(root, "digits", version)
    shutil.copy(MODEL_DIR / "digits" / "1" / "labels.txt", root / "digits" / "labels.txt")
    (root / "digits" / "serving.json").write_text(
        json.dumps(
            {
                "version_policy": {"specific": [1, 3]},
                "max_batch_size": 8,
                "allowed_batch_sizes": [2, 8],
                "max_batch_delay_ms": 1.5,
            }
        )
    )
    app = make_app(model_dir=root)
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(app.address))
    config = stub.ModelConfig(pb.ModelConfigRequest(name="digits", version="1"), timeout=30).config
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert (config.max_batch_size, list(config.dynamic_batching.preferred_batch_size)) == (8, [2, 8])
    assert config.dynamic_batching.max_queue_delay_microseconds == 1500
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelConfig(pb.ModelConfigRequest(name="digits", version="2"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "version 2 of model 'digits' is not served; served versions: 3, 1"
