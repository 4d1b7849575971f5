"""The Open Inference Protocol's gRPC service (KServe V2, Triton), so its clients work unchanged.

`inference.GRPCInferenceService` on the gRPC port: ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelInfer, Triton's streaming
ModelStreamInfer (server/protocols/streaming.py: each message batched as it comes,
answered in completion order, a failed one with its `error_message`) and
Triton's extensions for the model repository (RepositoryIndex, and
RepositoryModelLoad/Unload with MODEL_CONTROL_MODE explicit or poll), model
configuration (ModelConfig) and statistics (ModelStatistics). A ModelInfer runs
through the same interceptors, Predictor and Batcher as
`serving.v1.PredictService/Predict`, with the same error table. Outputs are
answered as raw contents, as Triton does. A requested output may carry the
"classification" parameter (N): its values are replaced by the top N classes
of each row as "score:index:label" strings, as Triton's classification
extension answers.

`infer` is the core the REST form (server/protocols/inference_v2/rest.py) shares.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from importlib import metadata as package_metadata

import grpc
import numpy as np

from inference import open_inference_pb2 as pb
from inference import open_inference_pb2_grpc
from server.errors import InvalidArgument, NotFound, Unavailable, status_of
from server.models.model import LoadedModel
from server.models.repository import LABEL, ModelRepository
from server.predictor import Predictor, best_classes
from server.protocols.deadlines import deadline_of
from server.protocols.inference_v2 import tensors
from server.protocols.inference_v2.config import config_of
from server.protocols.inference_v2.statistics import statistics_of
from server.protocols.streaming import BatchedStream

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "tf-grpc-serving"
EXTENSIONS = ("classification", "binary_tensor_data", "model_repository", "model_configuration", "statistics")
REPOSITORY = "models"
_VERSION = re.compile(r"[1-9][0-9]{0,17}")

Output = tuple[str, np.ndarray]  # (name, values)


def server_version() -> str:
    try:
        return package_metadata.version(SERVER_NAME)
    except package_metadata.PackageNotFoundError:
        return "0"


def version_of(field: str, version: str) -> tuple[int, str]:
    """A V2 version string as (number, label) for `ModelRepository.get`: "3" is version 3, "canary" the
    version its label names (serving.json "version_labels"), "" the newest served."""
    if not version:
        return 0, ""
    if _VERSION.fullmatch(version):
        return int(version), ""
    if LABEL.fullmatch(version):
        return 0, version
    raise InvalidArgument(
        f"{field}: expected a version number such as '1' or a version label such as 'stable', got {version!r}"[:200]
    )


def metadata_of(repository: ModelRepository, model: LoadedModel) -> pb.ModelMetadataResponse:
    def specs(infos: Iterable) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=info.name, datatype=tensors.datatype_of(info.dtype), shape=info.shape
            )
            for info in infos
        ]

    return pb.ModelMetadataResponse(
        name=model.name,
        versions=[str(m.version) for m in repository.served(model.name)],
        platform=model.loaded.platform,
        inputs=specs(model.inputs.values()),
        outputs=specs(model.outputs.values()),
    )


def model_ready(repository: ModelRepository, name: str, version: str) -> bool:
    """Whether that model (and version) is served; an unknown model is simply not ready."""
    number, label = version_of("version", version)
    try:
        repository.get(name, number, label)
    except (NotFound, Unavailable):
        return False
    return True


def requested_outputs(model: LoadedModel, outputs: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """(name, classification count) of each requested output (all of them when none are named)."""
    if not outputs:
        return [(name, 0) for name in model.outputs]
    for index, (name, classes) in enumerate(outputs):
        if any(name == earlier for earlier, _ in outputs[:index]):
            raise InvalidArgument(f"output '{name}': requested twice")
        if name not in model.outputs:
            returns = ", ".join(f"'{n}'" for n in model.outputs)
            raise InvalidArgument(f"outputs: unknown output '{name}'; model '{model.name}' returns {returns}")
        if classes < 0:
            raise InvalidArgument(f"output '{name}': classification must be a positive count, got {classes}")
        if classes and (model.outputs[name].dtype.kind != "f" or len(model.outputs[name].shape) != 2):
            raise InvalidArgument(f"output '{name}': classification needs a [batch, classes] score output")
    return list(outputs)


async def infer(
    predictor: Predictor,
    model: LoadedModel,
    arrays: dict[str, np.ndarray],
    outputs: Sequence[tuple[str, int]],
    deadline: float | None,
) -> list[Output]:
    """Run decoded inputs through the model's Batcher; the requested outputs, in order."""
    wanted = checked(model, arrays, outputs)
    results = await predictor.infer_arrays(model, arrays, deadline, sorted({name for name, _ in wanted}))
    return shaped_outputs(model, results, wanted)


def checked(
    model: LoadedModel, arrays: dict[str, np.ndarray], outputs: Sequence[tuple[str, int]]
) -> list[tuple[str, int]]:
    """The outputs to answer, once the request's outputs and inputs are checked (with V2 datatype names;
    the Predictor checks shapes and dtypes next)."""
    wanted = requested_outputs(model, outputs)
    if not arrays:
        raise InvalidArgument(
            f"inputs: none given; model '{model.name}' takes "
            + ", ".join(f"'{n}' ({tensors.datatype_of(s.dtype)} {list(s.shape)})" for n, s in model.inputs.items())
        )
    return wanted


def shaped_outputs(
    model: LoadedModel, results: dict[str, np.ndarray], wanted: Sequence[tuple[str, int]]
) -> list[Output]:
    """The wanted outputs of a batch's rows, in order, classified where asked."""
    return [
        (name, _classified(results[name], classes, model.labels) if classes else results[name])
        for name, classes in wanted
    ]


def _classified(scores: np.ndarray, classes: int, labels: list[str]) -> np.ndarray:
    """The top `classes` of each row as "score:index[:label]" strings, best first, the score with six
    decimals (Triton's format: "0.998573:3:3")."""
    best = best_classes(scores, classes)
    array = np.empty(best.shape, dtype=object)
    for r, (row, indices) in enumerate(zip(scores.tolist(), best.tolist(), strict=True)):
        array[r, :] = [(f"{row[i]:f}:{i}" + (f":{labels[i]}" if i < len(labels) else "")).encode() for i in indices]
    return array


def decode_inputs(model: LoadedModel, request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's inputs as arrays: all from raw contents or all from typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs; give one per input, in order"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        label = check_input(model, tensor.name, tensor.datatype, arrays)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(f"{label}: set raw_input_contents or contents, not both")
            arrays[tensor.name] = tensors.from_raw(label, tensor.datatype, list(tensor.shape), raw[index])
        else:
            arrays[tensor.name] = tensors.from_contents(label, tensor.datatype, list(tensor.shape), tensor.contents)
    return arrays


def check_input(model: LoadedModel, name: str, datatype: str, decoded: dict[str, np.ndarray]) -> str:
    """Check an input's header against the model (a known name, not given twice, the model's own
    datatype) before its values are read; the input's label for messages."""
    if name not in model.inputs:
        takes = ", ".join(f"'{n}'" for n in model.inputs)
        raise InvalidArgument(f"inputs: unknown input '{name}'; model '{model.name}' takes {takes}")
    label = f"input '{name}'"
    if name in decoded:
        raise InvalidArgument(f"{label}: given twice")
    tensors.check_datatype(label, datatype, model.inputs[name].dtype, model.name)
    return label


def requested_of(request: pb.ModelInferRequest) -> list[tuple[str, int]]:
    found = []
    for output in request.outputs:
        parameter = output.parameters.get("classification")
        classes = 0
        if parameter is not None:
            kind = parameter.WhichOneof("parameter_choice")
            if kind not in ("int64_param", "uint64_param"):
                raise InvalidArgument(f"output '{output.name}': the classification parameter must be an integer")
            classes = getattr(parameter, kind)
        found.append((output.name, classes))
    return found


def check_repository(name: str) -> None:
    if name not in ("", REPOSITORY):
        raise NotFound(f"repository_name: no repository '{name}'; the one repository is '{REPOSITORY}' (MODEL_DIR)")


def check_parameters(parameters: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    """Refuse repository parameters the server does not act on (Triton's config and file overrides)."""
    unknown = sorted(k for k in parameters if k not in allowed)
    if unknown:
        takes = f"it takes {', '.join(repr(a) for a in allowed)}" if allowed else "it takes none"
        raise InvalidArgument(
            f"parameters: {', '.join(repr(k) for k in unknown)} not supported (models load from "
            f"MODEL_DIR as they are); {takes}"
        )


def required(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{field}: required")
    return value


class InferenceV2Servicer(open_inference_pb2_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol over the Predictor; `ready()` is the server's readiness."""

    def __init__(
        self, predictor: Predictor, repository: ModelRepository, ready: Callable[[], bool], max_in_flight: int = 256
    ) -> None:
        self.predictor = predictor
        self.repository = repository
        self.ready = ready
        self.max_in_flight = max_in_flight  # per ModelStreamInfer stream

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready())

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=model_ready(self.repository, required("name", request.name), request.version)
        )

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self.repository.get(required("name", request.name), *version_of("version", request.version))
        return metadata_of(self.repository, model)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        model = self._model_of(request)
        outputs = await infer(
            self.predictor, model, decode_inputs(model, request), requested_of(request), deadline_of(context)
        )
        return response_of(model, request.id, outputs)

    def ModelStreamInfer(
        self, request_iterator: Iterator[pb.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        deadline = deadline_of(context)

        def submit(request: pb.ModelInferRequest) -> _PendingInfer:
            model = self._model_of(request)
            arrays = decode_inputs(model, request)
            wanted = checked(model, arrays, requested_of(request))
            return _PendingInfer(request, model, wanted, self.predictor.submit_arrays(model, arrays, deadline))

        return BatchedStream(submit, _streamed, _stream_error, self.max_in_flight).run(request_iterator, context)

    def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        check_repository(request.repository_name)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(name=name, version=str(version), state=state, reason=reason)
                for name, version, state, reason in self.repository.index()
                if state == "READY" or not request.ready
            ]
        )

    def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.ServicerContext) -> pb.ModelConfigResponse:
        model = self.repository.get(required("name", request.name), *version_of("version", request.version))
        return pb.ModelConfigResponse(config=config_of(model, self.repository.policy_of(model.name)))

    def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            number, label = version_of("version", request.version)
            served = [self.repository.get(request.name, number, label)] if request.version else None
            models = served or self.repository.served(request.name)
        elif request.version:
            raise InvalidArgument("version: give a model name with it")
        else:
            models = self.repository.models()
        return pb.ModelStatisticsResponse(model_stats=[statistics_of(m) for m in models])

    def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        check_repository(request.repository_name)
        check_parameters(request.parameters, allowed=())
        self.repository.load(required("model_name", request.model_name))
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        check_repository(request.repository_name)
        check_parameters(request.parameters, allowed=("unload_dependents",))
        self.repository.unload(required("model_name", request.model_name))
        return pb.RepositoryModelUnloadResponse()

    def _model_of(self, request: pb.ModelInferRequest) -> LoadedModel:
        return self.repository.get(
            required("model_name", request.model_name), *version_of("model_version", request.model_version)
        )


def response_of(model: LoadedModel, request_id: str, outputs: list[Output]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request_id)
    for name, array in outputs:
        response.outputs.add(name=name, datatype=tensors.datatype_of(array.dtype), shape=array.shape)
        response.raw_output_contents.append(tensors.to_raw(array))
    return response


class _PendingInfer:
    """A streamed request queued in its model's Batcher."""

    def __init__(
        self, request: pb.ModelInferRequest, model: LoadedModel, wanted: list[tuple[str, int]], rows: Future
    ) -> None:
        self.request = request
        self.model = model
        self.wanted = wanted
        self.rows = rows

    def add_done_callback(self, callback: Callable[[_PendingInfer], None]) -> None:
        self.rows.add_done_callback(lambda _: callback(self))


def _streamed(pending: _PendingInfer) -> pb.ModelStreamInferResponse:
    try:
        outputs = shaped_outputs(pending.model, pending.rows.result(0), pending.wanted)
        return pb.ModelStreamInferResponse(infer_response=response_of(pending.model, pending.request.id, outputs))
    except Exception as exc:  # this message's error; the stream goes on
        return _stream_error(pending.request, exc)


def _stream_error(request: pb.ModelInferRequest, exc: Exception) -> pb.ModelStreamInferResponse:
    """A failed message's answer: the error's message, and the request's id to match it by."""
    _, message = status_of(exc)
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )
