"""GetModelStatistics over gRPC and GET /v1/models/{model}/statistics on the shim: the Batcher's counts,
the same as Triton's ModelStatistics reports."""

from __future__ import annotations

import time

import grpc
import pytest
import requests

from client.messages import predict_request, tensor_inputs
from inference import open_inference_pb2 as v2_pb2
from inference import open_inference_pb2_grpc as v2_grpc
from serving.v1 import predict_pb2, predict_pb2_grpc
from tests.conftest import digits_rows

pytestmark = pytest.mark.integration


def test_statistics_count_requests_rows_and_batches(make_app) -> None:
    app = make_app()
    stub = predict_pb2_grpc.PredictServiceStub(grpc.insecure_channel(app.address))
    empty = stub.GetModelStatistics(predict_pb2.GetModelStatisticsRequest(model="digits"), timeout=30).models[0]
    assert (empty.inference_count, empty.HasField("last_inference_time")) == (0, False)
    before = time.time()
    for rows in (2, 2, 5):
        stub.Predict(predict_request("digits", tensor_inputs({"image": digits_rows(rows)})), timeout=30)

    (stats,) = stub.GetModelStatistics(predict_pb2.GetModelStatisticsRequest(model="digits"), timeout=30).models
    assert (stats.name, stats.version, stats.inference_count, stats.execution_count) == ("digits", 1, 9, 3)
    assert before <= stats.last_inference_time.ToNanoseconds() / 1e9 <= time.time()
    assert (stats.success.count, stats.fail.count, stats.compute_infer.count) == (3, 0, 3)
    assert stats.success.total_ns >= stats.compute_infer.total_ns > 0
    assert [(b.batch_size, b.count) for b in stats.batches] == [(2, 2), (5, 1)]

    triton = (
        v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(app.address))
        .ModelStatistics(v2_pb2.ModelStatisticsRequest(name="digits"), timeout=30)
        .model_stats[0]
    )
    assert (triton.inference_count, triton.inference_stats.compute_infer.ns) == (9, stats.compute_infer.total_ns)

    every = stub.GetModelStatistics(predict_pb2.GetModelStatisticsRequest(), timeout=30).models
    assert [(s.name, s.version) for s in every] == [("digits", 1), ("digits_decoder", 1), ("digits_keras", 1)]
    reply = requests.get(f"http://{app.http_address}/v1/models/digits/statistics", timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()["models"][0]
    assert (body["inferenceCount"], body["executionCount"]) == ("9", "3")  # protobuf JSON: int64 as strings
    assert [(b["batchSize"], b["count"]) for b in body["batches"]] == [("2", "2"), ("5", "1")]
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModelStatistics(predict_pb2.GetModelStatisticsRequest(model="nope"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
