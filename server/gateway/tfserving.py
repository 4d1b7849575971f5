"""TensorFlow Serving's REST API, so its clients work unchanged (TFSERVING_REST_ADDRESS).

    POST /v1/models/{model}[/versions/{v}]:predict     {"instances": ...} or {"inputs": ...}
    GET  /v1/models/{model}[/versions/{v}]             model version status
    GET  /v1/models/{model}[/versions/{v}]/metadata    signature metadata

Bodies follow TensorFlow Serving's documented JSON: the row format
(`instances`: one value per row, or one object per row keyed by input name)
answers `{"predictions": ...}`; the columnar format (`inputs`: the whole
batch, or an object keyed by input name) answers `{"outputs": ...}`. String
inputs take `{"b64": ...}` for bytes. Errors are `{"error": message}` with the
HTTP status of the gRPC code (`server.errors`).

Nothing here runs a model: a request becomes a `PredictRequest` (its input
dtypes read with `GetModel`) and both calls go through the dispatcher, so auth,
the access log, metrics, tracing and batching are the same as over gRPC.
Version labels, `:classify` and `:regress` are not served.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import ssl
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

import grpc
import numpy as np
from aiohttp import web

from server.dispatch import Dispatcher
from server.errors import InvalidArgument, NotFound, ServingError, Unimplemented, http_status_of, status_of
from server.gateway.bodies import read_body
from server.gateway.calls import RpcCall
from server.gateway.context import HttpServicerContext
from server.gateway.listener import LoopServer
from server.gateway.rpc import context_for
from server.models import codec
from serving.v1 import model_pb2, predict_pb2, tensor_pb2

PREDICT_RPC = "/serving.v1.PredictService/Predict"
GET_MODEL_RPC = "/serving.v1.PredictService/GetModel"
_PATH = re.compile(
    r"/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>\d{1,18})|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>:[A-Za-z]+|/metadata)?"
)
TF_DTYPES = {
    tensor_pb2.DATA_TYPE_FLOAT32: "DT_FLOAT",
    tensor_pb2.DATA_TYPE_FLOAT64: "DT_DOUBLE",
    tensor_pb2.DATA_TYPE_FLOAT16: "DT_HALF",
    tensor_pb2.DATA_TYPE_INT8: "DT_INT8",
    tensor_pb2.DATA_TYPE_INT16: "DT_INT16",
    tensor_pb2.DATA_TYPE_INT32: "DT_INT32",
    tensor_pb2.DATA_TYPE_INT64: "DT_INT64",
    tensor_pb2.DATA_TYPE_UINT8: "DT_UINT8",
    tensor_pb2.DATA_TYPE_UINT16: "DT_UINT16",
    tensor_pb2.DATA_TYPE_UINT32: "DT_UINT32",
    tensor_pb2.DATA_TYPE_UINT64: "DT_UINT64",
    tensor_pb2.DATA_TYPE_BOOL: "DT_BOOL",
    tensor_pb2.DATA_TYPE_STRING: "DT_STRING",
}
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
    ) -> None:
        super().__init__(address, "TFSERVING_REST_ADDRESS", "tfserving-rest", ssl_context)
        self.dispatcher = dispatcher
        self.max_body_bytes = max_body_bytes
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tfserving")

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)
        return app

    def stopped(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            return await self._route(request)
        except ServingError as exc:
            return error_body(exc.code, exc.message, getattr(exc, "http_status", None))
        except Exception as exc:
            return error_body(*status_of(exc))

    async def _route(self, request: web.Request) -> web.Response:
        match = _PATH.fullmatch(request.path)
        if match is None:
            raise NotFound(f"no such path: {request.path}; the TensorFlow Serving API is under /v1/models/")
        if match["label"] is not None:
            raise Unimplemented("version labels are not supported; name the version: /versions/<n>")
        model, verb = match["model"], match["verb"] or ""
        version = int(match["version"] or 0)
        expected = "POST" if verb.startswith(":") else "GET"
        if request.method != expected:
            return _json({"error": f"method {request.method} is not allowed for {request.path}; use {expected}"}, 405)
        if verb in (":classify", ":regress"):
            raise Unimplemented(f"{verb[1:]} is not supported; use :predict")
        if verb.startswith(":") and verb != ":predict":
            raise NotFound(f"no such method '{verb[1:]}'; TensorFlow Serving's are predict, classify and regress")
        route = f"{request.method} /v1/models/{{model}}{'/versions/{version}' if version else ''}{verb} (TF Serving)"
        # One context per dispatched call, each with the caller's headers (API key, deadline, request id).
        contexts = [context_for(request, route) for _ in range(2)]
        work: Callable[[], dict[str, Any]]
        if verb == ":predict":
            body = await read_body(request, self.max_body_bytes)
            work = partial(self._predict, model, version, body, *contexts)
        elif verb == "/metadata":
            work = lambda: metadata_json(self._model(model, version, contexts[0]))  # noqa: E731
        else:
            work = lambda: status_json(self._model(model, version, contexts[0]))  # noqa: E731
        result = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        return _json(result, 200)

    def _model(self, model: str, version: int, context: HttpServicerContext) -> model_pb2.ModelMetadata:
        call = RpcCall(self.dispatcher, GET_MODEL_RPC, context)
        return call.invoke(partial(predict_pb2.GetModelRequest, model=model, version=version)).model

    def _predict(
        self, model: str, version: int, body: bytes, lookup: HttpServicerContext, context: HttpServicerContext
    ) -> dict[str, Any]:
        payload = _parse(body)
        metadata = self._model(model, version, lookup)
        request, columnar = predict_request(metadata, payload)
        call = RpcCall(self.dispatcher, PREDICT_RPC, context)
        response = call.invoke(lambda: request)
        return predict_json(metadata, response, columnar)


def _parse(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body: not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidArgument('request body: expected a JSON object with "instances" or "inputs"')
    return payload


def predict_request(metadata: model_pb2.ModelMetadata, payload: dict[str, Any]) -> tuple[predict_pb2.PredictRequest, bool]:
    """The PredictRequest of a TF Serving predict body, and whether it is columnar."""
    unknown = sorted(set(payload) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise InvalidArgument(f"request body: unknown field '{unknown[0]}'; expected signature_name, instances or inputs")
    signature = payload.get("signature_name")
    if signature not in (None, "", metadata.signature_name):
        raise InvalidArgument(
            f"signature_name: model '{metadata.name}' serves signature '{metadata.signature_name}', not {signature!r}"
        )
    if ("instances" in payload) == ("inputs" in payload):
        raise InvalidArgument('request body: give exactly one of "instances" (rows) and "inputs" (columns)')
    specs = {spec.name: spec for spec in metadata.inputs}
    columnar = "inputs" in payload
    values = _columns(payload["inputs"], specs) if columnar else _rows(payload["instances"], specs)
    request = predict_pb2.PredictRequest(model=metadata.name, version=metadata.version, top_k=-1, inline_files=True)
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            raise InvalidArgument(f"input '{name}': model '{metadata.name}' has no such input; it takes {_names(specs)}")
        request.inputs[name].tensor.CopyFrom(codec.from_numpy(input_array(name, value, spec), raw=True))
    return request, columnar


def _rows(instances: Any, specs: dict[str, tensor_pb2.TensorSpec]) -> dict[str, Any]:
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


def _columns(inputs: Any, specs: dict[str, tensor_pb2.TensorSpec]) -> dict[str, Any]:
    """Columnar format: the whole batch, or an object with the whole batch of each input."""
    if _named(inputs):
        return dict(inputs)
    return {_only_input(specs, "inputs"): inputs}


def _named(value: Any) -> bool:
    """An object keyed by input names (not a {"b64": ...} value)."""
    return isinstance(value, dict) and set(value) != {"b64"}


def _only_input(specs: dict[str, tensor_pb2.TensorSpec], field: str) -> str:
    if len(specs) != 1:
        raise InvalidArgument(f"{field}: the model takes several inputs ({_names(specs)}); key each value by input name")
    return next(iter(specs))


def input_array(name: str, value: Any, spec: tensor_pb2.TensorSpec) -> np.ndarray:
    """A JSON value as an array of the input's dtype, or InvalidArgument naming the input."""
    expected = f"{codec.dtype_name(spec.dtype)} {list(spec.shape)}"
    if spec.dtype == tensor_pb2.DATA_TYPE_STRING:
        try:
            array = np.array(_strings(name, value), dtype=object)
        except ValueError:
            array = np.array([None], dtype=object)  # ragged: reported below
        if any(not isinstance(v, bytes) for v in array.flat):
            raise InvalidArgument(f"input '{name}': the values do not form a regular array; expected {expected}")
        return array
    dtype = codec.NUMPY_DTYPES.get(spec.dtype)
    if dtype is None:
        raise InvalidArgument(f"input '{name}': dtype {codec.dtype_name(spec.dtype)} is not supported in JSON")
    try:
        array = np.asarray(value)
    except ValueError:
        raise InvalidArgument(
            f"input '{name}': the values do not form a regular array (rows of different lengths); expected {expected}"
        ) from None
    if array.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise InvalidArgument(f"input '{name}': expected {_KIND_WORDS[dtype.kind]} for {expected}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidArgument(f"input '{name}': a value is outside the range of {codec.dtype_name(spec.dtype)}")
    return array.astype(dtype)


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
    raise InvalidArgument(f'input \'{name}\': expected strings or {{"b64": ...}} values, got {json.dumps(value)[:40]}')


def predict_json(metadata: model_pb2.ModelMetadata, response: predict_pb2.PredictResponse, columnar: bool) -> dict[str, Any]:
    """{"predictions": [...]} (rows) or {"outputs": ...} (columns), as TF Serving answers."""
    names = [spec.name for spec in metadata.outputs if spec.name in response.outputs]
    names += [name for name in response.outputs if name not in names]
    outputs = {name: _json_values(name, codec.to_numpy(response.outputs[name], f"output '{name}'")) for name in names}
    if columnar:
        return {"outputs": outputs[names[0]] if len(names) == 1 else outputs}
    if len(names) == 1:
        return {"predictions": outputs[names[0]]}
    rows = len(outputs[names[0]])
    return {"predictions": [{name: outputs[name][row] for name in names} for row in range(rows)]}


def _json_values(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        # The shortest decimal that reads back as the same float32 (0.99999994, not 0.9999999403953552).
        return array.astype(str).astype(np.float64).tolist()
    if array.dtype != object:
        return array.tolist()
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


def status_json(metadata: model_pb2.ModelMetadata) -> dict[str, Any]:
    """GetModelStatus: the served version, AVAILABLE."""
    return {
        "model_version_status": [
            {"version": str(metadata.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


def metadata_json(metadata: model_pb2.ModelMetadata) -> dict[str, Any]:
    """GetModelMetadata: the serving signature's inputs and outputs in TF's SignatureDef JSON."""

    def tensors(specs: Any) -> dict[str, Any]:
        return {
            spec.name: {
                "dtype": TF_DTYPES.get(spec.dtype, "DT_INVALID"),
                "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in spec.shape], "unknown_rank": False},
            }
            for spec in specs
        }

    signature = metadata.signature_name or "serving_default"
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


def error_body(code: grpc.StatusCode, message: str, http_status: int | None = None) -> web.Response:
    """TF Serving's error shape, with the HTTP status of the gRPC code (or the one given)."""
    response = _json({"error": message}, http_status or http_status_of(code))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _json(body: Any, status: int) -> web.Response:
    # NaN and Infinity are written as TensorFlow Serving writes them (JSON extensions).
    return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(), content_type="application/json")


def _names(specs: dict[str, Any]) -> str:
    return ", ".join(f"'{n}'" for n in specs)
