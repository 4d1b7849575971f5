"""The Open Inference Protocol's REST API (KServe V2, Triton) on the HTTP shim, under /v2.

    GET  /v2                                          server metadata
    GET  /v2/health/live | /v2/health/ready           200 {"live"|"ready": true}, else 400
    GET  /v2/models/{model}[/versions/{v}]            model metadata
    GET  /v2/models/{model}[/versions/{v}]/ready      200 {"name", "ready": true}, else 400
    GET  /v2/models/{model}[/versions/{v}]/config     Triton's model configuration
    GET  /v2/models[/{model}[/versions/{v}]]/stats    Triton's model statistics
    POST /v2/models/{model}[/versions/{v}]/infer      {"inputs": [...], "outputs": [...]}
    POST /v2/repository/index                         [{"name", "version", "state", "reason"}, ...]
    POST /v2/repository/models/{model}/load | /unload 200, empty (MODEL_CONTROL_MODE explicit or poll)

Each request is one call through the dispatcher, so auth, the access log,
metrics, tracing, deadlines and batching are the same as over gRPC: the probes
and metadata are the gRPC service's own methods (server/protocols/inference_v2/servicer.py);
an infer is the in-process method `REST_INFER_RPC`, which reads the body only
after the interceptors admitted the call (without a valid key it is not even
read) and shares `infer` with gRPC ModelInfer.

Binary tensor data (Triton's extension, which tritonclient uses by default):
with an `Inference-Header-Content-Length: N` header the first N bytes of the
body are the JSON and the rest the inputs whose `parameters.binary_data_size`
is set, in order, encoded as raw contents. Outputs asked for with
`parameters.binary_data: true` (or all of them with the request parameter
`binary_data_output: true`) are answered the same way. Errors are
`{"error": message}` with the HTTP status of the gRPC code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import Any, cast

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format, wrappers_pb2
from google.protobuf.message import Message

from inference import open_inference_pb2 as pb
from server.dispatch import Dispatcher
from server.errors import InvalidArgument, NotFound, Unimplemented
from server.http.bodies import json_object, read_body
from server.http.calls import CallFailed, RpcCall
from server.http.context import HttpServicerContext, metadata_from_headers
from server.http.responses import MethodNotAllowed, error_body, with_error_body
from server.http.rpc import Admits, admit_all, context_for, in_pool
from server.predictor import Predictor
from server.protocols.deadlines import deadline_of
from server.protocols.inference_v2 import tensors
from server.protocols.inference_v2.servicer import SERVICE, check_input, infer, version_of

# Dispatched in process only (never served over gRPC): the request body in, the answer's body out.
REST_INFER_RPC = "/serving.v1.InferenceV2Rest/Infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH_VALUE = re.compile(r"[0-9]{1,15}")
_MODEL_PATH = re.compile(
    r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<verb>/ready|/infer|/config|/stats)?"
)
_CONTROL_PATH = re.compile(r"/v2/repository/models/(?P<model>[^/]+)/(?P<verb>load|unload)")
_PROBES = {
    "/v2/health/live": ("ServerLive", pb.ServerLiveRequest, "live"),
    "/v2/health/ready": ("ServerReady", pb.ServerReadyRequest, "ready"),
}


class InferenceV2Rest:
    """Answers the /v2 paths of the HTTP shim."""

    def __init__(self, dispatcher: Dispatcher, executor: Executor, max_body_bytes: int, admits: Admits | None = None):
        self.dispatcher = dispatcher
        self.executor = executor
        self.max_body_bytes = max_body_bytes
        self.admits = admits or admit_all

    async def handle(self, request: web.Request) -> web.Response:
        return await with_error_body(self._route(request))

    async def _route(self, request: web.Request) -> web.Response:
        path = request.path.rstrip("/") or "/"
        if path == "/v2":
            self._expect(request, "GET")
            reply = await self._call(request, "ServerMetadata", pb.ServerMetadataRequest, "GET /v2")
            if isinstance(reply, web.Response):
                return reply
            return _json({"name": reply.name, "version": reply.version, "extensions": list(reply.extensions)})
        probe = _PROBES.get(path)
        if probe is not None:
            self._expect(request, "GET")
            method, message, field = probe
            reply = await self._call(request, method, message, f"GET {path}")
            if isinstance(reply, web.Response):
                return reply
            ready = getattr(reply, field)
            return _json({field: ready}, 200 if ready else 400)
        if path == "/v2/repository/index":
            self._expect(request, "POST")
            return await self._index(request)
        if path == "/v2/models/stats":
            self._expect(request, "GET")
            return await self._stats(request, "", "", "GET /v2/models/stats")
        control = _CONTROL_PATH.fullmatch(path)
        if control is not None:
            self._expect(request, "POST")
            return await self._control(request, control["model"], control["verb"])
        match = _MODEL_PATH.fullmatch(path)
        if match is None:
            raise NotFound(
                f"no such path: {request.path}; the Open Inference Protocol's paths are /v2, "
                "/v2/health/{live,ready}, /v2/models/{model}[/versions/{version}][/ready|/infer|/config|/stats], "
                "/v2/models/stats, "
                "/v2/repository/index and /v2/repository/models/{model}/{load,unload}"
            )
        model, verb = match["model"], match["verb"] or ""
        version = match["version"] or ""
        number, label = version_of("version", version)  # checked before any call
        route = f"{request.method} /v2/models/{{model}}{'/versions/{version}' if version else ''}{verb}"
        if verb == "/infer":
            self._expect(request, "POST")
            return await self._infer(request, (model, number, label), route)
        self._expect(request, "GET")
        if verb == "/ready":
            reply = await self._call(
                request, "ModelReady", partial(pb.ModelReadyRequest, name=model, version=version), route
            )
            if isinstance(reply, web.Response):
                return reply
            return _json({"name": model, "ready": reply.ready}, 200 if reply.ready else 400)
        if verb == "/stats":
            return await self._stats(request, model, version, route)
        if verb == "/config":
            reply = await self._call(
                request, "ModelConfig", partial(pb.ModelConfigRequest, name=model, version=version), route
            )
            if isinstance(reply, web.Response):
                return reply
            return _json(config_json(reply.config))
        reply = await self._call(
            request, "ModelMetadata", partial(pb.ModelMetadataRequest, name=model, version=version), route
        )
        if isinstance(reply, web.Response):
            return reply
        return _json(metadata_json(reply))

    @staticmethod
    def _expect(request: web.Request, method: str) -> None:
        if request.method != method:
            raise MethodNotAllowed(request.method, request.path, (method,))

    async def _call(self, request: web.Request, method: str, build: Callable[[], Message], route: str) -> Any:
        return await self._invoke(context_for(request, route), f"/{SERVICE}/{method}", build)

    async def _invoke(self, context: HttpServicerContext, rpc: str, build: Callable[[], Message]) -> Any:
        """The call's reply, or its failure as a `{"error": ...}` response."""
        call = RpcCall(self.dispatcher, rpc, context)
        try:
            return await in_pool(self.executor, call, call.invoke, build)
        except CallFailed as failed:
            return error_body(failed.code, failed.message, failed.http_status, context.response_headers())

    async def _body(self, request: web.Request, method: str) -> bytes:
        """The request's body, read only once the interceptors will admit `method` (else empty: they
        answer 401 without it being read)."""
        admitted = self.admits(f"/{SERVICE}/{method}", metadata_from_headers(request.headers))
        return await read_body(request, self.max_body_bytes) if admitted else b""

    async def _index(self, request: web.Request) -> web.Response:
        body = await self._body(request, "RepositoryIndex")
        reply = await self._call(request, "RepositoryIndex", partial(_index_request, body), "POST /v2/repository/index")
        if isinstance(reply, web.Response):
            return reply
        return _json(
            [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in reply.models]
        )

    async def _stats(self, request: web.Request, model: str, version: str, route: str) -> web.Response:
        build = partial(pb.ModelStatisticsRequest, name=model, version=version)
        reply = await self._call(request, "ModelStatistics", build, route)
        if isinstance(reply, web.Response):
            return reply
        return _json(
            _numbers(
                json_format.MessageToDict(
                    reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
            )
        )

    async def _control(self, request: web.Request, model: str, verb: str) -> web.Response:
        method = "RepositoryModelLoad" if verb == "load" else "RepositoryModelUnload"
        message = pb.RepositoryModelLoadRequest if verb == "load" else pb.RepositoryModelUnloadRequest
        body = await self._body(request, method)
        reply = await self._call(
            request,
            method,
            partial(_control_request, message, model, body),
            f"POST /v2/repository/models/{{model}}/{verb}",
        )
        if isinstance(reply, web.Response):
            return reply
        return web.Response(status=200)

    async def _infer(self, request: web.Request, target: tuple[str, int, str], route: str) -> web.Response:
        context = context_for(request, route)
        json_length = request.headers.get(HEADER_LENGTH)
        if json_length is not None:
            if not _LENGTH_VALUE.fullmatch(json_length):
                raise InvalidArgument(f"header {HEADER_LENGTH}: expected the JSON part's length in bytes")
            context.json_length_in = int(json_length)
        # No valid key: the body is not read; the interceptors answer 401 (and log it).
        admitted = self.admits(REST_INFER_RPC, context.invocation_metadata())
        body = await read_body(request, self.max_body_bytes) if admitted else b""
        context.model_target = target  # (model, version, label) as the path gives them
        reply = await self._invoke(context, REST_INFER_RPC, partial(wrappers_pb2.BytesValue, value=body))
        if isinstance(reply, web.Response):
            return reply
        headers = context.response_headers()
        if context.json_length_out is None:
            return web.Response(body=reply.value, content_type="application/json", headers=headers)
        headers[HEADER_LENGTH] = str(context.json_length_out)
        return web.Response(body=reply.value, content_type="application/octet-stream", headers=headers)


def metadata_json(reply: pb.ModelMetadataResponse) -> dict[str, Any]:
    def specs(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": reply.name,
        "versions": list(reply.versions),
        "platform": reply.platform,
        "inputs": specs(reply.inputs),
        "outputs": specs(reply.outputs),
    }


# The 64-bit integer fields of the configuration and statistics, which protobuf's JSON writes as strings.
_INT64_FIELDS = {
    "count",
    "ns",
    "last_inference",
    "inference_count",
    "execution_count",
    "batch_size",
    "dims",
    "versions",
    "max_queue_delay_microseconds",
}


def _numbers(value: Any) -> Any:
    """A message's JSON with its 64-bit integers as numbers, as Triton's REST API writes them."""
    if isinstance(value, dict):
        return {k: _int64(v) if k in _INT64_FIELDS else _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _int64(value: Any) -> Any:
    return [int(v) for v in value] if isinstance(value, list) else int(value)


def config_json(config: pb.ModelConfig) -> dict[str, Any]:
    """The configuration as Triton's REST API answers it: proto field names, 64-bit integers as numbers."""
    return cast(dict[str, Any], _numbers(json_format.MessageToDict(config, preserving_proto_field_name=True)))


def rest_infer_handler(predictor: Predictor) -> grpc.RpcMethodHandler:
    """The in-process method behind POST /v2/models/.../infer: V2 JSON (and binary data) in and out."""

    async def rest_infer(request: wrappers_pb2.BytesValue, context: grpc.ServicerContext) -> wrappers_pb2.BytesValue:
        target = getattr(context, "model_target", None)
        if target is None:
            raise Unimplemented(f"{REST_INFER_RPC} is served by the HTTP shim's /v2 paths only")
        body = request.value
        json_length = getattr(context, "json_length_in", None)
        binary: bytes | memoryview
        if json_length is None:
            header, binary = body, b""
        elif json_length > len(body):
            raise InvalidArgument(f"header {HEADER_LENGTH}: {json_length} is longer than the {len(body)}-byte body")
        else:
            header, binary = body[:json_length], memoryview(body)[json_length:]
        payload = _parse(header)
        model = predictor.repository.get(*_target(payload, *target))
        arrays = _inputs(model, payload, binary)
        wanted, binary_outputs = _outputs(payload)
        outputs = await infer(predictor, model, arrays, wanted, deadline_of(context))
        answer: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
        if isinstance(payload.get("id"), str):
            answer["id"] = payload["id"]
        blobs: list[bytes] = []
        entries = []
        for name, array in outputs:
            entry: dict[str, Any] = {
                "name": name,
                "datatype": tensors.datatype_of(array.dtype),
                "shape": list(array.shape),
            }
            if binary_outputs(name):
                blob = tensors.to_raw(array)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = tensors.to_json(array)
            entries.append(entry)
        answer["outputs"] = entries
        text = json.dumps(answer, separators=(",", ":")).encode()
        if not blobs:
            return wrappers_pb2.BytesValue(value=text)
        cast(Any, context).json_length_out = len(text)  # the shim's context: only the shim calls this method
        return wrappers_pb2.BytesValue(value=b"".join([text, *blobs]))

    return grpc.unary_unary_rpc_method_handler(rest_infer)


def _index_request(body: bytes) -> pb.RepositoryIndexRequest:
    """The optional body of POST /v2/repository/index: {"repository_name": ..., "ready": ...}."""
    if not body.strip():
        return pb.RepositoryIndexRequest()
    expected = 'expected an object with "repository_name" and "ready" (both optional)'
    payload = json_object(body, expected)
    if set(payload) - {"repository_name", "ready"}:
        raise InvalidArgument(f"request body: {expected}")
    payload = {key: value for key, value in payload.items() if value is not None}  # null: not given
    name, ready = payload.get("repository_name", ""), payload.get("ready", False)
    if not isinstance(name, str) or not isinstance(ready, bool):
        raise InvalidArgument('request body: "repository_name" is a string and "ready" true or false')
    return pb.RepositoryIndexRequest(repository_name=name, ready=ready)


ControlRequest = pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest


def _control_request(message: type[ControlRequest], model: str, body: bytes) -> ControlRequest:
    """A repository load or unload request from the path's model and the optional body {"parameters": {...}}."""
    request = message(model_name=model)
    if not body.strip():
        return request
    expected = 'expected an object with "parameters" (optional)'
    payload = json_object(body, expected)
    if set(payload) - {"parameters"} or not isinstance(payload.get("parameters") or {}, dict):
        raise InvalidArgument(f"request body: {expected}")
    for key, value in (payload.get("parameters") or {}).items():
        parameter = request.parameters[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise InvalidArgument(f"parameters.{key}: expected a boolean, an integer or a string")
    return request


def _parse(header: bytes | memoryview) -> dict[str, Any]:
    payload = json_object(header, 'expected a JSON object with "inputs"')
    payload = {key: value for key, value in payload.items() if value is not None}  # null: not given
    unknown = sorted(set(payload) - {"id", "parameters", "inputs", "outputs", "model_name", "model_version"})
    if unknown:
        raise InvalidArgument(
            f"request body: unknown field '{unknown[0]}'; expected id, parameters, inputs, outputs "
            "(and model_name, model_version)"
        )
    for field in ("id", "model_name", "model_version"):
        if field in payload and not isinstance(payload[field], str):
            raise InvalidArgument(f"{field}: expected a string")
    if not isinstance(payload.get("parameters", {}), dict):
        raise InvalidArgument("parameters: expected an object")
    return payload


def _target(payload: dict[str, Any], model: str, version: int, label: str) -> tuple[str, int, str]:
    """The model, version and label to run: the path's; a body's own model_name and model_version
    (KServe's client sends them) must agree with it, and the body's version applies when the path names
    none."""
    if payload.get("model_name", model) != model:
        raise InvalidArgument(f"model_name: the body names model '{payload['model_name']}' but the path '{model}'")
    named = payload.get("model_version", "")
    if not named:
        return model, version, label
    if version or label:
        if version_of("model_version", named) != (version, label):
            raise InvalidArgument(f"model_version: the body names version {named} but the path {version or label}")
        return model, version, label
    return model, *version_of("model_version", named)


def _inputs(model: Any, payload: dict[str, Any], binary: bytes | memoryview) -> dict[str, np.ndarray]:
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("inputs: expected a non-empty list of {name, shape, datatype, data} objects")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"inputs[{index}]: expected an object with a name")
        name: str = item["name"]
        datatype: Any = item.get("datatype")  # a str once check_input has passed
        if name in model.inputs and name not in arrays and not isinstance(datatype, str):
            raise InvalidArgument(f"input '{name}': datatype is required (e.g. \"FP32\")")
        label = check_input(model, name, datatype, arrays)
        if "shape" not in item:
            raise InvalidArgument(f"{label}: shape is required")
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidArgument(f"{label}: parameters must be an object")
        size = parameters.get("binary_data_size")
        if item.get("data") is None:
            item = {k: v for k, v in item.items() if k != "data"}
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgument(f"{label}: binary_data_size must be a byte count")
            if "data" in item:
                raise InvalidArgument(f"{label}: give data or binary_data_size, not both")
            if offset + size > len(binary):
                raise InvalidArgument(f"{label}: binary_data_size {size} runs past the end of the body's binary part")
            arrays[name] = tensors.from_raw(label, datatype, item["shape"], binary[offset : offset + size])
            offset += size
        else:
            if "data" not in item:
                raise InvalidArgument(f"{label}: data is required (or binary data with binary_data_size)")
            arrays[name] = tensors.from_json(label, datatype, item["shape"], item["data"])
    if offset != len(binary):
        raise InvalidArgument(f"request body: {len(binary) - offset} bytes of binary data belong to no input")
    return arrays


def _outputs(payload: dict[str, Any]) -> tuple[list[tuple[str, int]], Callable[[str], bool]]:
    """The requested (name, classification count) pairs, and which outputs are answered as binary data."""
    default = (payload.get("parameters") or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidArgument("parameters.binary_data_output: expected true or false")
    outputs = payload.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidArgument("outputs: expected a list of {name, parameters} objects")
    wanted: list[tuple[str, int]] = []
    binary: dict[str, bool] = {}
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"outputs[{index}]: expected an object with a name")
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidArgument(f"output '{item['name']}': parameters must be an object")
        classes = parameters.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool):
            raise InvalidArgument(f"output '{item['name']}': classification must be an integer")
        as_binary = parameters.get("binary_data", default)
        if not isinstance(as_binary, bool):
            raise InvalidArgument(f"output '{item['name']}': binary_data must be true or false")
        wanted.append((item["name"], classes))
        binary[item["name"]] = as_binary
    return wanted, lambda name: binary.get(name, default)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body, separators=(",", ":")).encode(), content_type="application/json"
    )
