"""Fake Predict, StreamPredict and health services for client tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.v1 import (
    model_pb2,
    predict_pb2,
    predict_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
    tensor_pb2,
)
from wire.codec import from_numpy, to_numpy

LABELS = ["zero", "one", "two"]
FLOAT32 = tensor_pb2.DATA_TYPE_FLOAT32

DIGITS = model_pb2.ModelMetadata(
    name="digits",
    version=1,
    available_versions=[1],
    inputs=[tensor_pb2.TensorSpec(name="image", dtype=FLOAT32, shape=[-1, 4])],
    outputs=[tensor_pb2.TensorSpec(name="scores", dtype=FLOAT32, shape=[-1, 3])],
    labels=LABELS,
    classification_output="scores",
    image_inputs=["image"],
    state=model_pb2.MODEL_STATE_READY,
)


def fake_scores(rows: int) -> np.ndarray:
    """Row i scores class i % 3 highest."""
    scores = np.full((rows, 3), 0.1, dtype=np.float32)
    scores[np.arange(rows), np.arange(rows) % 3] = 0.8
    return scores


def fake_response(request: predict_pb2.PredictRequest, request_id: str) -> predict_pb2.PredictResponse:
    """What the fake model answers: `scores` per row, plus classifications."""
    source = request.inputs["image"]
    if source.WhichOneof("kind") == "images":
        rows = len(source.images.images)
    else:
        rows = to_numpy(source.tensor, "image").shape[0]
    scores = fake_scores(rows)
    classifications = [
        predict_pb2.Classification(
            classes=[
                predict_pb2.ClassScore(label=LABELS[int(i)], index=int(i), score=float(row[i]))
                for i in np.argsort(-row, kind="stable")[: request.top_k or 2]
            ]
        )
        for row in scores
    ]
    return predict_pb2.PredictResponse(
        request_id=request_id,
        model=model_pb2.ModelRef(name=request.model, version=1),
        outputs={"scores": from_numpy(scores, raw=True)},
        classifications=classifications,
    )


class FakePredict(predict_pb2_grpc.PredictServiceServicer):
    """Records requests and metadata; model `bad` is rejected, `slow` takes a second."""

    def __init__(self) -> None:
        self.requests: list[predict_pb2.PredictRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.get_model_calls = 0

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        metadata: dict[str, Any] = dict(context.invocation_metadata())
        self.requests.append(request)
        self.metadata.append(metadata)
        if request.model == "bad":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input 'image': expected FLOAT32")
        if request.model == "slow":
            time.sleep(1.0)
        return fake_response(request, request.request_id or metadata.get("x-request-id", "made"))

    def GetModel(
        self, request: predict_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> predict_pb2.GetModelResponse:
        self.get_model_calls += 1
        if request.model != "digits":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model '{request.model}'")
        return predict_pb2.GetModelResponse(model=DIGITS)

    def ListModels(
        self, request: predict_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> predict_pb2.ListModelsResponse:
        return predict_pb2.ListModelsResponse(models=[DIGITS])


class FakeStream(stream_pb2_grpc.StreamPredictServiceServicer):
    """Answers each message in order; model `bad` gets an error answer."""

    def StreamPredict(
        self, requests: Iterator[stream_pb2.StreamPredictRequest], context: grpc.ServicerContext
    ) -> Iterator[stream_pb2.StreamPredictResponse]:
        for message in requests:
            request = message.request
            if request.model == "bad":
                code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                error = status_pb2.Status(code=code, message="input 'image': bad")
                yield stream_pb2.StreamPredictResponse(request_id=request.request_id, error=error)
            else:
                yield stream_pb2.StreamPredictResponse(
                    request_id=request.request_id,
                    response=fake_response(request, request.request_id),
                )


@dataclass
class FakeServer:
    """Where the fake server listens, and its recording Predict service."""

    target: str
    predict: FakePredict


def start_fake_server() -> tuple[grpc.Server, FakeServer]:
    """Start a real gRPC server with the fakes on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    predict = FakePredict()
    predict_pb2_grpc.add_PredictServiceServicer_to_server(predict, server)
    stream_pb2_grpc.add_StreamPredictServiceServicer_to_server(FakeStream(), server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("draining", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, FakeServer(target=f"127.0.0.1:{port}", predict=predict)
