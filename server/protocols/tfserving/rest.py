"""TensorFlow Serving's REST API, so its clients work unchanged (TFSERVING_REST_ADDRESS).

    POST /v1/models/{model}[/versions/{v}|/labels/{l}]:predict     {"instances": ...} or {"inputs": ...}
    GET  /v1/models/{model}[/versions/{v}|/labels/{l}]             model version status
    GET  /v1/models/{model}[/versions/{v}|/labels/{l}]/metadata    signature metadata

Bodies follow TensorFlow Serving's documented JSON: the row format
(`instances`: one value per row, or one object per row keyed by input name)
answers `{"predictions": ...}`; the columnar format (`inputs`: the whole
batch, or an object keyed by input name) answers `{"outputs": ...}`. String
inputs take `{"b64": ...}` for bytes. Errors are `{"error": message}` with the
HTTP status of the gRPC code (`server.errors`).

Every request on a known path is one call through the dispatcher, so auth
(and the rate limit), the access log, metrics, tracing, deadlines and batching
are the same as over gRPC (an unknown path, verb or method is answered 404,
405 or 501 before that, and not logged): status and metadata are `GetModel` calls; a predict is the
in-process method `REST_PREDICT_RPC`, which parses the JSON body only after the
interceptors admitted the call (without a valid key the body is not even
read), converts it with the model's own input dtypes, and runs it through the
Predictor. `:classify` and `:regress` are not served. `/labels/<label>`
names the version a label of the model's serving.json "version_labels"
points to.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, cast

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message
from tensorflow.core.framework import types_pb2

from server.dispatch import Dispatcher
from server.errors import InvalidArgument, NotFound, Unimplemented
from server.http.bodies import json_object, read_body
from server.http.calls import CallFailed, RpcCall
from server.http.listener import LoopServer
from server.http.responses import error_body, with_error_body
from server.http.rpc import GET_MODEL_RPC, Admits, admit_all, context_for, in_pool
from server.models.backend import TensorInfo
from server.models.model import SIGNATURE, LoadedModel
from server.predictor import Predictor
from server.protocols.deadlines import deadline_of
from server.protocols.tfserving.tensor_proto import tf_dtype_of
from serving.v1 import model_pb2, predict_pb2
from wire import codec

# Dispatched in process only (never served over gRPC): the JSON body in, the JSON answer out.
REST_PREDICT_RPC = "/serving.v1.TFServingRest/Predict"
_PATH = re.compile(
    r"/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>[1-9]\d{0,17})|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>:[A-Za-z]+|/metadata)?"
)
# Which JSON values (numpy kinds after np.asarray) an input of each kind accepts.
_ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}
_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "non-negative integers", "b": "true/false values"}


class TFServingRest(LoopServer):
    """TensorFlow Serving's REST API over the dispatcher; `start()` then `stop()`."""

    def __init__(
        self,
        address: str,
        dispatcher: Dispatcher,
        *,
        max_body_bytes: int,
        max_workers: int,
        ssl_context: ssl.SSLContext | None = None,
        admits: Admits | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(address, "TFSERVING_REST_ADDRESS", "tfserving-rest", ssl_context, loop)
        self.dispatcher = dispatcher
        self.max_body_bytes = max_body_bytes
        self.admits = admits or admit_all
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tfserving")

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)
        return app

    def stopped(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _handle(self, request: web.Request) -> web.Response:
        return await with_error_body(self._route(request))

    async def _route(self, request: web.Request) -> web.Response:
        match = _PATH.fullmatch(request.path)
        if match is None:
            raise NotFound(f"no such path: {request.path}; the TensorFlow Serving API is under /v1/models/")
        model, verb = match["model"], match["verb"] or ""
        version, label = int(match["version"] or 0), match["label"] or ""  # a label is resolved in the call
        expected = "POST" if verb.startswith(":") else "GET"
        if request.method != expected:
            reply = _json({"error": f"method {request.method} is not allowed for {request.path}; use {expected}"}, 405)
            reply.headers["Allow"] = expected
            return reply
        if verb in (":classify", ":regress"):
            raise Unimplemented(f"{verb[1:]} is not supported; use :predict")
        if verb.startswith(":") and verb != ":predict":
            raise NotFound(f"no such method '{verb[1:]}'; TensorFlow Serving's are predict, classify and regress")
        where = "/labels/{label}" if label else "/versions/{version}" if version else ""
        route = f"{request.method} /v1/models/{{model}}{where}{verb} (TF Serving)"
        context = context_for(request, route)
        build: Callable[[], Any]
        if verb == ":predict":
            # No valid key: the body is not read; the interceptors answer 401 (and log it).
            admitted = self.admits(REST_PREDICT_RPC, context.invocation_metadata())
            body = await read_body(request, self.max_body_bytes) if admitted else b""
            context.model_target = (model, version, label)  # the model named by the path, for rest_predict
            call = RpcCall(self.dispatcher, REST_PREDICT_RPC, context)
            build = partial(wrappers_pb2.BytesValue, value=body)
        else:
            call = RpcCall(self.dispatcher, GET_MODEL_RPC, context)
            build = partial(predict_pb2.GetModelRequest, model=model, version=version, version_label=label)
        try:
            answered: Message = await in_pool(self.executor, call, call.invoke, build)
        except CallFailed as failed:
            return error_body(failed.code, failed.message, failed.http_status, context.response_headers())
        if verb == ":predict":
            answer = cast(wrappers_pb2.BytesValue, answered).value
        else:
            model_reply = cast(predict_pb2.GetModelResponse, answered).model
            named = version or (model_reply.version if label else 0)
            answer = _dumps(metadata_json(model_reply) if verb == "/metadata" else status_json(model_reply, named))
        return web.Response(body=answer, content_type="application/json", headers=context.response_headers())


def rest_predict_handler(predictor: Predictor) -> grpc.RpcMethodHandler:
    """The in-process method behind POST ...:predict: TF Serving JSON in and out, through the Predictor."""

    async def rest_predict(request: wrappers_pb2.BytesValue, context: grpc.ServicerContext) -> wrappers_pb2.BytesValue:
        target = getattr(context, "model_target", None)
        if target is None:
            raise Unimplemented(f"{REST_PREDICT_RPC} is served by the TensorFlow Serving REST listener only")
        payload = json_object(request.value, 'expected a JSON object with "instances" or "inputs"')
        model = predictor.repository.get(*target)
        arrays, columnar = input_arrays(model, payload)
        outputs = await predictor.infer_arrays(model, arrays, deadline_of(context))
        return wrappers_pb2.BytesValue(value=_dumps(predict_json(model, outputs, columnar)))

    return grpc.unary_unary_rpc_method_handler(rest_predict)


def input_arrays(model: LoadedModel, payload: dict[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
    """The input arrays of a TF Serving predict body, and whether it is columnar."""
    unknown = sorted(set(payload) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise InvalidArgument(
            f"request body: unknown field '{unknown[0]}'; expected signature_name, instances or inputs"
        )
    signature = payload.get("signature_name")
    if signature not in (None, "", SIGNATURE):
        raise InvalidArgument(f"signature_name: model '{model.name}' serves signature '{SIGNATURE}', not {signature!r}")
    if ("instances" in payload) == ("inputs" in payload):
        raise InvalidArgument('request body: give exactly one of "instances" (rows) and "inputs" (columns)')
    specs = model.inputs
    columnar = "inputs" in payload
    values = _columns(payload["inputs"], specs) if columnar else _rows(payload["instances"], specs)
    arrays = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            raise InvalidArgument(f"input '{name}': model '{model.name}' has no such input; it takes {_names(specs)}")
        arrays[name] = input_array(name, value, spec)
    return arrays, columnar


def _rows(instances: Any, specs: dict[str, TensorInfo]) -> dict[str, Any]:
    """Row format: a list with one value (or one {input: value} object) per row."""
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument("instances: expected a non-empty list with one entry per row")
    if not _named(instances[0]):
        return {_only_input(specs, "instances"): instances}
    names = list(instances[0])
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        if not _named(instance) or sorted(instance) != sorted(names):
            raise InvalidArgument(
                f"instances[{index}]: expected an object with the same inputs as instances[0] ({', '.join(names)})"
            )
        for name in names:
            columns[name].append(instance[name])
    return columns


def _columns(inputs: Any, specs: dict[str, TensorInfo]) -> dict[str, Any]:
    """Columnar format: the whole batch, or an object with the whole batch of each input."""
    if _named(inputs):
        return dict(inputs)
    return {_only_input(specs, "inputs"): inputs}


def _named(value: Any) -> bool:
    """An object keyed by input names (not a {"b64": ...} value)."""
    return isinstance(value, dict) and set(value) != {"b64"}


def _only_input(specs: dict[str, TensorInfo], field: str) -> str:
    if len(specs) != 1:
        raise InvalidArgument(
            f"{field}: the model takes several inputs ({_names(specs)}); key each value by input name"
        )
    return next(iter(specs))


def input_array(name: str, value: Any, spec: TensorInfo) -> np.ndarray:
    """A JSON value as an array of the input's dtype, or InvalidArgument naming the input."""
    expected = spec.describe()
    if spec.dtype.kind == "O":  # strings
        try:
            array = np.array(_strings(name, value), dtype=object)
        except (ValueError, RecursionError):
            array = np.array([None], dtype=object)  # ragged or too deep: reported below
        if any(not isinstance(v, bytes) for v in array.flat):
            raise InvalidArgument(f"input '{name}': the values do not form a regular array; expected {expected}")
        return array
    kinds = _ACCEPTED_KINDS.get(spec.dtype.kind)
    if kinds is None:
        raise InvalidArgument(f"input '{name}': {expected} inputs cannot be given in JSON")
    try:
        array = np.asarray(value)
    except (ValueError, RecursionError):
        raise InvalidArgument(
            f"input '{name}': the values do not form a regular array (rows of different lengths, or nested "
            f"too deeply); expected {expected}"
        ) from None
    out_of_range = InvalidArgument(f"input '{name}': a value is outside the range of {expected}")
    if (
        array.size
        and array.dtype.kind == "O"
        and spec.dtype.kind in "iu"
        and all(isinstance(v, int) and not isinstance(v, bool) for v in array.flat)
    ):
        raise out_of_range  # integers too large for any numpy integer type
    if array.size and array.dtype.kind not in kinds:
        raise InvalidArgument(f"input '{name}': expected {_KIND_WORDS[spec.dtype.kind]} for {expected}")
    converted = codec.narrowed(array, spec.dtype)
    if converted is None:
        raise out_of_range
    return converted


def _strings(name: str, value: Any) -> Any:
    """Nested lists with every string as UTF-8 bytes and every {"b64": ...} decoded."""
    if isinstance(value, list):
        return [_strings(name, item) for item in value]
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error:
            raise InvalidArgument(f"input '{name}': a b64 value is not valid base64") from None
    raise InvalidArgument(f"input '{name}': expected strings or {{\"b64\": ...}} values, got {json.dumps(value)[:40]}")


def predict_json(model: LoadedModel, outputs: dict[str, np.ndarray], columnar: bool) -> dict[str, Any]:
    """{"predictions": [...]} (rows) or {"outputs": ...} (columns), as TF Serving answers."""
    names = [name for name in model.outputs if name in outputs] + [n for n in outputs if n not in model.outputs]
    values = {name: _json_values(name, outputs[name]) for name in names}
    if columnar:
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    batch = {name: outputs[name].shape[0] if outputs[name].ndim else None for name in names}
    if len(set(batch.values())) != 1 or None in batch.values():
        raise InvalidArgument(
            f'outputs {batch} do not share a batch dimension, so they cannot be rows; send "inputs" '
            "(the columnar format) instead"
        )
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    rows = cast(int, batch[names[0]])  # None was refused above
    return {"predictions": [{name: values[name][row] for name in names} for row in range(rows)]}


def _json_values(name: str, array: np.ndarray) -> Any:
    if array.dtype != object:
        return codec.float_list(array)
    binary = name.endswith("_bytes")
    return _nested(array.tolist(), lambda b: _bytes_json(b, binary))


def _nested(value: Any, leaf: Callable[[Any], Any]) -> Any:
    return [_nested(v, leaf) for v in value] if isinstance(value, list) else leaf(value)


def _bytes_json(value: bytes, binary: bool) -> Any:
    """Text as a string; bytes (and outputs named *_bytes) as {"b64": ...}, as TF Serving does."""
    if not binary:
        try:
            return value.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode()}


def status_json(metadata: model_pb2.ModelMetadata, version: int = 0) -> dict[str, Any]:
    """GetModelStatus: the served versions (or the one asked for), AVAILABLE."""
    versions = [version] if version else list(metadata.served_versions) or [metadata.version]
    ok = {"error_code": "OK", "error_message": ""}
    return {"model_version_status": [{"version": str(v), "state": "AVAILABLE", "status": ok} for v in versions]}


def metadata_json(metadata: model_pb2.ModelMetadata) -> dict[str, Any]:
    """GetModelMetadata: the serving signature's inputs and outputs in TF's SignatureDef JSON."""

    def tensors(specs: Any) -> dict[str, Any]:
        return {
            spec.name: {
                "dtype": _tf_dtype_name(spec.dtype),
                "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in spec.shape], "unknown_rank": False},
            }
            for spec in specs
        }

    signature = metadata.signature_name or SIGNATURE
    return {
        "model_spec": {"name": metadata.name, "signature_name": "", "version": str(metadata.version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    signature: {
                        "inputs": tensors(metadata.inputs),
                        "outputs": tensors(metadata.outputs),
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


def _dumps(body: Any) -> bytes:
    # NaN and Infinity are written as TensorFlow Serving writes them (JSON extensions).
    return json.dumps(body, separators=(",", ":")).encode()


def _json(body: Any, status: int) -> web.Response:
    return web.Response(status=status, body=_dumps(body), content_type="application/json")


def _tf_dtype_name(dtype: int) -> str:
    """ "DT_FLOAT" for DATA_TYPE_FLOAT32, and so on."""
    numpy_dtype = codec.NUMPY_DTYPES.get(dtype)
    return "DT_INVALID" if numpy_dtype is None else types_pb2.DataType.Name(tf_dtype_of(numpy_dtype))


def _names(specs: dict[str, Any]) -> str:
    return ", ".join(f"'{n}'" for n in specs)
