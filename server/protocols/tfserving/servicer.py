"""TensorFlow Serving's gRPC API on the server's own port, so its clients work unchanged.

`tensorflow.serving.PredictionService`: Predict and GetModelMetadata
(`signature_def`); `tensorflow.serving.ModelService`: GetModelStatus. The
messages are the `tensorflow-serving-api` package's; tensors are TensorFlow's
`TensorProto`, read with `tf.make_ndarray` and written with
`tf.make_tensor_proto` (`tensor_content` bytes for numbers). A Predict runs
through the same Predictor and Batcher as `serving.v1.PredictService/Predict`,
with the same interceptors and error table. A `version_label` is resolved
through the model's serving.json "version_labels". HandleReloadConfigRequest
replaces the set of served models (`ModelRepository.reconfigure`; needs
MODEL_CONTROL_MODE explicit or poll). Classify, Regress and MultiInference
answer UNIMPLEMENTED.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

from server.errors import InvalidArgument, Unimplemented
from server.models.backend import TensorInfo
from server.models.model import SIGNATURE, LoadedModel
from server.models.repository import ModelRepository
from server.predictor import Predictor
from server.protocols.deadlines import deadline_of
from server.protocols.tfserving.tensor_proto import tensor_array, tf_dtype_of

PREDICT_METHOD = "tensorflow/serving/predict"
# The package's *_pb2_grpc modules do not import the files that define the services; reflection
# finds a service only once its file is in the descriptor pool.
SERVICE_FILES = (prediction_service_pb2.DESCRIPTOR, model_service_pb2.DESCRIPTOR)


class TFServingPredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata of TensorFlow Serving's PredictionService."""

    def __init__(self, predictor: Predictor, repository: ModelRepository, max_tensor_bytes: int) -> None:
        self.predictor = predictor
        self.repository = repository
        self.max_tensor_bytes = max_tensor_bytes  # a TensorProto may not expand past this (MAX_MESSAGE_BYTES)

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        model = self.repository.get(*model_of(request.model_spec, self.repository))
        unknown = sorted(set(request.inputs) - set(model.inputs))
        if unknown:  # before anything is decoded
            takes = ", ".join(f"'{n}'" for n in model.inputs)
            raise InvalidArgument(f"inputs: unknown input '{unknown[0]}'; model '{model.name}' takes {takes}")
        arrays, budget = {}, self.max_tensor_bytes  # one budget for all the inputs of a request
        for key, tensor in request.inputs.items():
            arrays[key] = tensor_array(key, tensor, budget)
            budget -= arrays[key].nbytes
        outputs = await self.predictor.infer_arrays(model, arrays, deadline_of(context), list(request.output_filter))
        response = predict_pb2.PredictResponse(model_spec=spec_of(model))
        for key, array in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(array))
        return response

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        name, version = model_of(request.model_spec, self.repository)
        model = self.repository.get(name, version)
        fields = list(request.metadata_field)
        if set(fields) != {"signature_def"}:
            raise InvalidArgument(f"metadata_field: only 'signature_def' is served; got {fields or 'none'}")
        signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for key, spec in model.inputs.items():
            signature.inputs[key].CopyFrom(tensor_info(spec))
        for key, spec in model.outputs.items():
            signature.outputs[key].CopyFrom(tensor_info(spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=spec_of(model))
        response.metadata["signature_def"].Pack(
            get_model_metadata_pb2.SignatureDefMap(signature_def={SIGNATURE: signature})
        )
        return response

    def Classify(self, request: object, context: grpc.ServicerContext) -> None:
        raise Unimplemented("Classify is not supported; use Predict")

    def Regress(self, request: object, context: grpc.ServicerContext) -> None:
        raise Unimplemented("Regress is not supported; use Predict")

    def MultiInference(self, request: object, context: grpc.ServicerContext) -> None:
        raise Unimplemented("MultiInference is not supported; use Predict")


class TFServingModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus of TensorFlow Serving's ModelService: the served versions, AVAILABLE."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        self.repository.check_control("reconfigure")
        self.repository.reconfigure(reload_config(request.config, self.repository.model_dir))
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto(error_code=0))

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        name, version = model_of(request.model_spec, self.repository)
        models = [self.repository.get(name, version)] if version else self.repository.served(name)
        response = get_model_status_pb2.GetModelStatusResponse()
        for model in models:
            response.model_version_status.add(
                version=model.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
            )
        return response


def reload_config(
    config: model_server_config_pb2.ModelServerConfig, model_dir: Path
) -> dict[str, tuple[object, object]]:
    """name -> (version policy, labels) in serving.json's forms, from a ModelServerConfig's model_config_list.

    Models load from MODEL_DIR: a base_path must be MODEL_DIR/<name> (or empty), as TF Serving's
    layout has it; the platform "tensorflow" (or empty)."""
    if config.WhichOneof("config") != "model_config_list":
        raise InvalidArgument("config: only model_config_list is supported (not custom_model_config)")
    wanted: dict[str, tuple[object, object]] = {}
    for index, entry in enumerate(config.model_config_list.config):
        where = f"config.model_config_list.config[{index}]"
        if not entry.name:
            raise InvalidArgument(f"{where}.name: required")
        if entry.name in wanted:
            raise InvalidArgument(f"{where}.name: model '{entry.name}' is listed twice")
        if entry.base_path and Path(entry.base_path).resolve() != (model_dir / entry.name).resolve():
            raise InvalidArgument(
                f"{where}.base_path: models load from MODEL_DIR: expected {model_dir / entry.name} or empty, "
                f"not {entry.base_path!r}"
            )
        if entry.model_platform not in ("", "tensorflow"):
            raise InvalidArgument(f"{where}.model_platform: expected 'tensorflow', not {entry.model_platform!r}")
        wanted[entry.name] = (_policy_of(entry.model_version_policy), dict(entry.version_labels))
    return wanted


def _policy_of(
    policy: file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy,
) -> object:
    """TF Serving's ServableVersionPolicy as serving.json's "version_policy" (unset: the newest one)."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return "all"
    if kind == "specific":
        return {"specific": list(policy.specific.versions)}
    if kind == "latest" and policy.latest.num_versions > 1:
        return {"latest": policy.latest.num_versions}
    return None


def model_of(spec: model_pb2.ModelSpec, repository: ModelRepository) -> tuple[str, int]:
    """(name, version or 0 for the newest served) of a ModelSpec, a version label resolved through the
    model's serving.json "version_labels"; only the serving signature is served."""
    if spec.signature_name not in ("", SIGNATURE):
        raise InvalidArgument(f"model_spec.signature_name: only '{SIGNATURE}' is served, not '{spec.signature_name}'")
    if not spec.name:
        raise InvalidArgument("model_spec.name: required")
    if spec.HasField("version_label"):
        return spec.name, repository.version_of_label(spec.name, spec.version_label)
    return spec.name, spec.version.value if spec.HasField("version") else 0


def spec_of(model: LoadedModel) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=model.name, signature_name=SIGNATURE)
    spec.version.value = model.version
    return spec


def tensor_info(spec: TensorInfo) -> meta_graph_pb2.TensorInfo:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in spec.shape])
    return meta_graph_pb2.TensorInfo(name=spec.name, dtype=tf_dtype_of(spec.dtype), tensor_shape=shape)
