"""The Open Inference Protocol's gRPC service (KServe V2, Triton), so its clients work unchanged.

`inference.GRPCInferenceService` on the gRPC port: ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata and ModelInfer. A ModelInfer runs
through the same interceptors, Predictor and Batcher as
`serving.v1.PredictService/Predict`, with the same error table. Outputs are
answered as raw contents, as Triton does. A requested output may carry the
"classification" parameter (N): its values are replaced by the top N classes
of each row as "score:index:label" strings, as Triton's classification
extension answers.

`infer` is the core the REST form (server/gateway/inference_v2.py) shares.
"""

from __future__ import annotations

from importlib import metadata as package_metadata
from typing import Callable, Iterable, Sequence

import grpc
import numpy as np

from inference import open_inference_pb2 as pb
from inference import open_inference_pb2_grpc
from server.errors import InvalidArgument, NotFound, Unavailable
from server.models import inference_tensors as tensors
from server.models.model import LoadedModel
from server.models.repository import ModelRepository
from server.predictor import Predictor
from server.services.predict import deadline_of

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "tf-grpc-serving"
PLATFORM = "tensorflow_savedmodel"
EXTENSIONS = ("classification", "binary_tensor_data")

Output = tuple[str, np.ndarray]  # (name, values)


def server_version() -> str:
    try:
        return package_metadata.version(SERVER_NAME)
    except package_metadata.PackageNotFoundError:
        return "0"


def version_of(field: str, version: str) -> int:
    """A V2 version string as a number (0: the newest served)."""
    if not version:
        return 0
    if not version.isdigit() or len(version) > 18 or int(version) == 0:
        raise InvalidArgument(f"{field}: expected a version number such as '1', got {version!r}"[:200])
    return int(version)


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
        platform=PLATFORM,
        inputs=specs(model.inputs.values()),
        outputs=specs(model.outputs.values()),
    )


def model_ready(repository: ModelRepository, name: str, version: str) -> bool:
    """Whether that model (and version) is served; an unknown model is simply not ready."""
    number = version_of("version", version)
    try:
        repository.get(name, number)
    except (NotFound, Unavailable):
        return False
    return True


def requested_outputs(model: LoadedModel, outputs: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """(name, classification count) of each requested output (all of them when none are named)."""
    if not outputs:
        return [(name, 0) for name in model.outputs]
    for name, classes in outputs:
        if name not in model.outputs:
            returns = ", ".join(f"'{n}'" for n in model.outputs)
            raise InvalidArgument(f"outputs: unknown output '{name}'; model '{model.name}' returns {returns}")
        if classes < 0:
            raise InvalidArgument(f"output '{name}': classification must be a positive count, got {classes}")
        if classes and (model.outputs[name].dtype.kind != "f" or len(model.outputs[name].shape) != 2):
            raise InvalidArgument(f"output '{name}': classification needs a [batch, classes] score output")
    return list(outputs)


def infer(
    predictor: Predictor,
    model: LoadedModel,
    arrays: dict[str, np.ndarray],
    outputs: Sequence[tuple[str, int]],
    deadline: float | None,
) -> list[Output]:
    """Run decoded inputs through the model's Batcher; the requested outputs, in order."""
    wanted = requested_outputs(model, outputs)
    if not arrays:
        raise InvalidArgument(f"inputs: none given; model '{model.name}' takes " + ", ".join(
            f"'{n}' ({tensors.datatype_of(s.dtype)} {list(s.shape)})" for n, s in model.inputs.items()
        ))
    results = predictor.predict_arrays(model, arrays, deadline, sorted({name for name, _ in wanted}))
    return [(name, _classified(results[name], classes, model.labels) if classes else results[name])
            for name, classes in wanted]


def _classified(scores: np.ndarray, classes: int, labels: list[str]) -> np.ndarray:
    """The top `classes` of each row as "score:index[:label]" strings, best first."""
    classes = min(classes, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :classes]
    rows = [
        [f"{row[i]:g}:{i}" + (f":{labels[i]}" if i < len(labels) else "") for i in indices]
        for row, indices in zip(scores.tolist(), best.tolist())
    ]
    array = np.empty((len(rows), classes), dtype=object)
    for r, row in enumerate(rows):
        array[r, :] = [value.encode() for value in row]
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
        label = f"input '{tensor.name}'"
        spec = model.inputs.get(tensor.name)
        if spec is None:
            takes = ", ".join(f"'{n}'" for n in model.inputs)
            raise InvalidArgument(f"inputs: unknown input '{tensor.name}'; model '{model.name}' takes {takes}")
        if tensor.name in arrays:
            raise InvalidArgument(f"{label}: given twice")
        tensors.check_datatype(label, tensor.datatype, spec.dtype, model.name)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(f"{label}: set raw_input_contents or contents, not both")
            arrays[tensor.name] = tensors.from_raw(label, tensor.datatype, list(tensor.shape), raw[index])
        else:
            arrays[tensor.name] = tensors.from_contents(label, tensor.datatype, list(tensor.shape), tensor.contents)
    return arrays


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


class InferenceV2Servicer(open_inference_pb2_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol over the Predictor; `ready()` is the server's readiness."""

    def __init__(self, predictor: Predictor, repository: ModelRepository, ready: Callable[[], bool]) -> None:
        self.predictor = predictor
        self.repository = repository
        self.ready = ready

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready())

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        if not request.name:
            raise InvalidArgument("name: required")
        return pb.ModelReadyResponse(ready=model_ready(self.repository, request.name, request.version))

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext) -> pb.ModelMetadataResponse:
        if not request.name:
            raise InvalidArgument("name: required")
        model = self.repository.get(request.name, version_of("version", request.version))
        return metadata_of(self.repository, model)

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        if not request.model_name:
            raise InvalidArgument("model_name: required")
        model = self.repository.get(request.model_name, version_of("model_version", request.model_version))
        outputs = infer(self.predictor, model, decode_inputs(model, request), requested_of(request),
                        deadline_of(context))
        response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
        for name, array in outputs:
            response.outputs.add(name=name, datatype=tensors.datatype_of(array.dtype), shape=array.shape)
            response.raw_output_contents.append(tensors.to_raw(array))
        return response

