"""PredictService: thin gRPC adapter over the Predictor core."""

from __future__ import annotations

import uuid

import grpc

from server.errors import InvalidArgument
from server.models.repository import ModelRepository
from server.predictor import Predictor
from server.protocols.deadlines import deadline_of
from server.protocols.serving_v1.statistics import statistics_of
from server.tasks.predictions import PredictionTasks
from serving.v1 import predict_pb2, predict_pb2_grpc


def request_id_for(request_id: str, context: grpc.ServicerContext) -> str:
    """The request's own id, else `x-request-id` metadata, else a new one."""
    if request_id:
        return request_id
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return value.decode() if isinstance(value, bytes) else value
    return uuid.uuid4().hex


class PredictServicer(predict_pb2_grpc.PredictServiceServicer):
    """Predict (optionally recorded as a task), PredictAsync (a queued task), GetModel and ListModels."""

    def __init__(self, predictor: Predictor, repository: ModelRepository, tasks: PredictionTasks) -> None:
        self.predictor = predictor
        self.repository = repository
        self.tasks = tasks

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        request.request_id = request_id_for(request.request_id, context)
        if self.tasks.wants_record(request):
            return await self.tasks.infer_recorded(request, deadline_of(context))
        return await self.predictor.infer(request, deadline_of(context))

    def PredictAsync(
        self, request: predict_pb2.PredictAsyncRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictAsyncResponse:
        request.request.request_id = request_id_for(request.request.request_id, context)
        return predict_pb2.PredictAsyncResponse(task=self.tasks.submit(request))

    def GetModel(
        self, request: predict_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> predict_pb2.GetModelResponse:
        model = self.repository.get(request.model, request.version, request.version_label)
        served = [m.version for m in self.repository.served(model.name)]
        return predict_pb2.GetModelResponse(model=model.metadata(self.repository.versions_of(model), served))

    def ListModels(
        self, request: predict_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> predict_pb2.ListModelsResponse:
        models = self.repository.models()
        served: dict[str, list[int]] = {}
        for model in models:  # newest first per model
            served.setdefault(model.name, []).append(model.version)
        return predict_pb2.ListModelsResponse(
            models=[m.metadata(self.repository.versions_of(m), served[m.name]) for m in models]
        )

    def LoadModel(
        self, request: predict_pb2.LoadModelRequest, context: grpc.ServicerContext
    ) -> predict_pb2.LoadModelResponse:
        loaded = self.repository.load(request.model)
        served = [m.version for m in loaded]
        return predict_pb2.LoadModelResponse(
            models=[m.metadata(self.repository.versions_of(m), served) for m in loaded]
        )

    def GetModelStatistics(
        self, request: predict_pb2.GetModelStatisticsRequest, context: grpc.ServicerContext
    ) -> predict_pb2.GetModelStatisticsResponse:
        if request.model:
            models = [self.repository.get(request.model, request.version)] if request.version else None
            models = models or self.repository.served(request.model)
        elif request.version:
            raise InvalidArgument("version: give a model with it")
        else:
            models = self.repository.models()
        return predict_pb2.GetModelStatisticsResponse(models=[statistics_of(m) for m in models])

    def UnloadModel(
        self, request: predict_pb2.UnloadModelRequest, context: grpc.ServicerContext
    ) -> predict_pb2.UnloadModelResponse:
        return predict_pb2.UnloadModelResponse(unloaded_versions=self.repository.unload(request.model))
