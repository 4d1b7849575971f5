"""Triton's statistics extension: ModelStatistics over gRPC and GET /v2/models[/...]/stats, counted by
each version's Batcher, and read by Triton's own clients (in a subprocess, as in test_config.py)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import requests

from client.messages import predict_request, tensor_inputs
from inference import open_inference_pb2 as pb
from inference import open_inference_pb2_grpc as pb_grpc
from serving.v1 import predict_pb2_grpc
from tests.conftest import digits_rows
from tests.support import triton

pytestmark = pytest.mark.integration


def test_requests_and_batches_are_counted_per_version(make_app) -> None:
    app = make_app()
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(app.address))
    before = time.time()
    predict = predict_pb2_grpc.PredictServiceStub(grpc.insecure_channel(app.address)).Predict
    for rows in (1, 3, 3):
        predict(predict_request("digits", tensor_inputs({"image": digits_rows(rows)})), timeout=30)
    with pytest.raises(grpc.RpcError):  # refused before the Batcher: not counted here
        predict(predict_request("digits", tensor_inputs({"image": np.zeros((1, 4), np.float32)})), timeout=30)

    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits"), timeout=30).model_stats
    assert (stats.name, stats.version, stats.inference_count, stats.execution_count) == ("digits", "1", 7, 3)
    assert before * 1000 <= stats.last_inference <= time.time() * 1000
    infer = stats.inference_stats
    assert (infer.success.count, infer.fail.count, infer.queue.count, infer.compute_infer.count) == (3, 0, 3, 3)
    assert infer.success.ns >= infer.compute_infer.ns > 0 and infer.success.ns >= infer.queue.ns
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(1, 1), (3, 2)]

    everything = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=30).model_stats
    assert [s.name for s in everything] == ["digits", "digits_decoder", "digits_keras"]
    one = stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits", version="1"), timeout=30).model_stats
    assert [s.inference_count for s in one] == [7]
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelStatistics(pb.ModelStatisticsRequest(version="1"), timeout=30)
    assert (raised.value.code(), raised.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "version: give a model name with it",
    )

    rest = requests.get(f"http://{app.http_address}/v2/models/digits/stats", timeout=30).json()
    (entry,) = rest["model_stats"]
    assert (entry["inference_count"], entry["execution_count"]) == (7, 3)
    assert entry["inference_stats"]["fail"] == {"count": 0, "ns": 0}
    assert [b["batch_size"] for b in entry["batch_stats"]] == [1, 3]
    every = requests.get(f"http://{app.http_address}/v2/models/stats", timeout=30).json()
    assert [s["name"] for s in every["model_stats"]] == ["digits", "digits_decoder", "digits_keras"]

    seen = triton.run("stats", app.address, app.http_address, "digits")
    assert seen["http"]["model_stats"][0]["inference_count"] == 7
    assert seen["grpc"]["model_stats"][0]["inference_count"] == "7"  # protobuf JSON: 64-bit as strings
