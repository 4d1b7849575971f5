"""`Client`: the Python API of the serving backend over gRPC."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.channel import DEFAULT_TARGET
from client.connection import Connection
from client.errors import ClientError
from client.messages import (
    ImageSource,
    Version,
    image_input,
    image_input_name,
    predict_request,
    stream_requests,
    tensor_inputs,
    version_fields,
)
from client.results import PredictResult, StreamResult
from client.uploads import DEFAULT_CHUNK_BYTES, UploadSource, upload_requests
from serving.v1 import (
    model_pb2,
    predict_pb2,
    predict_pb2_grpc,
    stream_pb2_grpc,
    task_pb2,
    upload_pb2,
    upload_pb2_grpc,
)


class Client(Connection):
    """A connection to the serving backend; see `Connection` for the options.

    Every call raises `ClientError` when the server answers with an error.
    """

    def __init__(self, target: str = DEFAULT_TARGET, **options: Any) -> None:
        super().__init__(target, **options)
        self._predict = predict_pb2_grpc.PredictServiceStub(self._channel)
        self._stream = stream_pb2_grpc.StreamPredictServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._upload = upload_pb2_grpc.UploadServiceStub(self._channel)
        self._models: dict[tuple[str, Version], model_pb2.ModelMetadata] = {}

    def predict(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: Version = 0,
        outputs: Iterable[str] | None = None,
        top_k: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
        record_task: bool = False,
    ) -> PredictResult:
        """Run `model` on arrays given by input name; the first dimension is the batch.

        `outputs` limits the outputs returned; `top_k` is the number of classes per
        row (0: the server's default, negative: none).
        """
        request = predict_request(
            model,
            tensor_inputs(inputs),
            version=version,
            outputs=outputs,
            top_k=top_k,
            request_id=request_id,
            record_task=record_task,
        )
        return self._send_predict(request, timeout)

    def predict_image(
        self,
        model: str,
        images: ImageSource | Sequence[ImageSource],
        *,
        input: str | None = None,
        version: Version = 0,
        outputs: Iterable[str] | None = None,
        top_k: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
        record_task: bool = False,
    ) -> PredictResult:
        """Run `model` on encoded images (bytes or file paths), one batch row each.

        The server decodes and resizes them. Without `input`, the model's first
        image input (or its only input) is used, from metadata fetched once.
        """
        name = input or image_input_name(self._cached_model(model, version))
        request = predict_request(
            model,
            {name: image_input(images)},
            version=version,
            outputs=outputs,
            top_k=top_k,
            request_id=request_id,
            record_task=record_task,
        )
        return self._send_predict(request, timeout)

    def stream_predict(
        self,
        model: str,
        batches: Iterable[Mapping[str, np.ndarray]],
        *,
        version: Version = 0,
        outputs: Iterable[str] | None = None,
        top_k: int = 0,
        request_ids: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[StreamResult]:
        """Send every batch over one bidirectional call and yield the answers.

        Message `i` gets the id `request_ids[i]`, or `str(i)` beyond that sequence.
        Answers may arrive out of order; match them by `request_id`. A message the
        server rejects yields a result with `error` set and the stream goes on; a
        failure of the whole call raises `ClientError`.
        """
        requests = stream_requests(
            model,
            batches,
            version=version,
            outputs=list(outputs or ()),
            top_k=top_k,
            request_ids=request_ids or (),
        )
        responses = self._stream.StreamPredict(
            requests, timeout=self._deadline(timeout), metadata=self._call_metadata()
        )
        try:
            for message in responses:
                yield StreamResult.from_message(message)
        except grpc.RpcError as error:
            raise ClientError.from_rpc_error(error) from None
        finally:
            responses.cancel()

    def predict_async(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: Version = 0,
        outputs: Iterable[str] | None = None,
        top_k: int = 0,
        request_id: str | None = None,
        webhook_url: str | None = None,
        task_metadata: Mapping[str, str] | None = None,
        task_id: str | None = None,
        timeout: float | None = None,
    ) -> task_pb2.Task:
        """Queue a prediction and return its task at once."""
        request = predict_pb2.PredictAsyncRequest(
            request=predict_request(
                model,
                tensor_inputs(inputs),
                version=version,
                outputs=outputs,
                top_k=top_k,
                request_id=request_id,
            ),
            webhook_url=webhook_url or "",
            metadata=dict(task_metadata or {}),
            task_id=task_id or "",
        )
        response: predict_pb2.PredictAsyncResponse = self._call(
            self._predict.PredictAsync, request, timeout, request_id
        )
        return response.task

    def get_model(self, model: str, version: Version = 0, *, timeout: float | None = None) -> model_pb2.ModelMetadata:
        """Metadata of one model version (0: the newest loaded one; a string: a version label)."""
        request = predict_pb2.GetModelRequest(model=model, **version_fields(version))
        metadata: model_pb2.ModelMetadata = self._call(self._predict.GetModel, request, timeout).model
        self._models[(model, version)] = metadata
        return metadata

    def list_models(self, *, timeout: float | None = None) -> list[model_pb2.ModelMetadata]:
        """Metadata of every loaded model."""
        response = self._call(self._predict.ListModels, predict_pb2.ListModelsRequest(), timeout)
        return list(response.models)

    def load_model(self, model: str, *, timeout: float | None = None) -> list[model_pb2.ModelMetadata]:
        """Load a model of the server's model directory (MODEL_CONTROL_MODE explicit or poll); the versions
        it now serves, newest first."""
        self._forget(model)
        response = self._call(self._predict.LoadModel, predict_pb2.LoadModelRequest(model=model), timeout)
        return list(response.models)

    def unload_model(self, model: str, *, timeout: float | None = None) -> list[int]:
        """Stop serving every version of a model; the versions unloaded."""
        self._forget(model)
        response = self._call(self._predict.UnloadModel, predict_pb2.UnloadModelRequest(model=model), timeout)
        return list(response.unloaded_versions)

    def _forget(self, model: str) -> None:
        """Drop the cached metadata of a model whose versions are about to change."""
        self._models = {key: value for key, value in self._models.items() if key[0] != model}

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The `grpc.health.v1` status of `service` ("" is the whole server).

        One of SERVING, NOT_SERVING, UNKNOWN, or SERVICE_UNKNOWN when the server
        does not know the service.
        """
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = self._call(self._health.Check, request, timeout)  # type: ignore[attr-defined]  # the stubs' HealthStub has no methods
        except ClientError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def upload(
        self,
        source: UploadSource,
        *,
        file_name: str | None = None,
        content_type: str = "",
        size: int = 0,
        sha256: str = "",
        key_prefix: str = "",
        task_id: str = "",
        chunk_size: int = DEFAULT_CHUNK_BYTES,
        timeout: float | None = None,
    ) -> upload_pb2.UploadResponse:
        """Stream a file (a path) or byte chunks to the server's object storage.

        Returns the stored object's key, `uri`, `url` (and `presigned_url` when the
        server signs URLs), size and SHA-256. A given `size` or `sha256` that does
        not match the data fails the call (INVALID_ARGUMENT, DATA_LOSS) and nothing
        is stored; `task_id` attaches the file to that task.
        """
        requests = upload_requests(
            source,
            file_name=file_name,
            content_type=content_type,
            size=size,
            sha256=sha256,
            key_prefix=key_prefix,
            task_id=task_id,
            chunk_size=chunk_size,
        )
        try:
            response: upload_pb2.UploadResponse = self._upload.Upload(
                requests, timeout=self._deadline(timeout), metadata=self._call_metadata()
            )
            return response
        except grpc.RpcError as error:
            raise ClientError.from_rpc_error(error) from None

    def _cached_model(self, model: str, version: Version) -> model_pb2.ModelMetadata:
        """Metadata from an earlier `get_model`, else fetched now."""
        cached = self._models.get((model, version))
        return cached if cached is not None else self.get_model(model, version)

    def _send_predict(self, request: predict_pb2.PredictRequest, timeout: float | None) -> PredictResult:
        """Call `Predict` (its request id also goes in `x-request-id`) and decode the answer."""
        response = self._call(self._predict.Predict, request, timeout, request.request_id)
        return PredictResult.from_response(response)
