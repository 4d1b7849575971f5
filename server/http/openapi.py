"""OpenAPI 3 document of the shim, generated from the same routes and descriptors.

One operation per route: path variables and (for routes without `body: "*"`)
query parameters from the request message's fields, the request body from
`body`, the response from the output message. Streamed messages are
documented as NDJSON, one message per line. Every operation's `default`
response is the error shape, `google.rpc.Status`. Message schemas use the
JSON names the shim writes (lowerCamelCase; 64-bit integers as strings,
floats as numbers or "NaN"/"Infinity"/"-Infinity", bytes as base64).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.rpc import status_pb2

from server.http import multipart
from server.http.responses import JSON, NDJSON
from server.http.routes import Route
from server.http.transcode import AnyFieldDescriptor, MessageDescriptor

OPENAPI_VERSION = "3.0.3"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
_SPECIAL_FLOATS = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
_T = FieldDescriptor
SCALARS: dict[int, dict[str, Any]] = {
    _T.TYPE_DOUBLE: {"oneOf": [{"type": "number", "format": "double"}, _SPECIAL_FLOATS]},
    _T.TYPE_FLOAT: {"oneOf": [{"type": "number", "format": "float"}, _SPECIAL_FLOATS]},
    _T.TYPE_INT64: _INT64,
    _T.TYPE_SINT64: _INT64,
    _T.TYPE_SFIXED64: _INT64,
    _T.TYPE_UINT64: _UINT64,
    _T.TYPE_FIXED64: _UINT64,
    _T.TYPE_INT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _T.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    _T.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "format": "byte"},
}
WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}
WRAPPERS = frozenset(
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
HEALTH_SCHEMA = {"type": "object", "properties": {"status": {"type": "string"}}}


class Schemas:
    """Component schemas, added as messages and enums are referenced."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}

    @staticmethod
    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def message(self, descriptor: MessageDescriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name in WELL_KNOWN:
            return dict(WELL_KNOWN[name])
        if name in WRAPPERS:
            return self.field(descriptor.fields_by_name["value"])
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages refer to it
            self.components[name] = {
                "type": "object",
                "properties": {f.json_name: self.field(f) for f in descriptor.fields},
            }
        return self.ref(name)

    def enum(self, descriptor: EnumDescriptor) -> dict[str, Any]:
        name = descriptor.full_name
        self.components.setdefault(name, {"type": "string", "enum": [v.name for v in descriptor.values]})
        return self.ref(name)

    def singular(self, field: AnyFieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(cast(EnumDescriptor, field.enum_type))  # protobuf's Python class or upb's
        return dict(SCALARS[field.type])

    def field(self, field: AnyFieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.singular(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.singular(field)}
        return self.singular(field)


def _field_at(descriptor: Descriptor, path: str) -> FieldDescriptor:
    field = None
    for part in path.split("."):
        field = descriptor.fields_by_name[part]
        descriptor = cast(Descriptor, field.message_type)  # None only past the last part
    assert field is not None
    return field


def _query_parameters(
    schemas: Schemas,
    descriptor: Descriptor,
    skip: set[str],
    prefix: str = "",
    json_prefix: str = "",
    seen: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Query parameters (`a.b`, JSON names) for the fields not bound by the path or the body."""
    parameters = []
    for field in descriptor.fields:
        path, name = prefix + field.name, json_prefix + field.json_name
        message = field.message_type
        if path in skip or (message is not None and message.GetOptions().map_entry):
            continue
        if message is not None and message.full_name not in WELL_KNOWN and message.full_name not in WRAPPERS:
            if not field.is_repeated and message.full_name not in seen:
                parameters += _query_parameters(
                    schemas, message, skip, path + ".", name + ".", (*seen, descriptor.full_name)
                )
            continue
        parameters.append({"name": name, "in": "query", "required": False, "schema": schemas.field(field)})
    return parameters


def _request_body(schemas: Schemas, route: Route) -> dict[str, Any] | None:
    descriptor = route.method.input_type
    if route.client_streaming:
        content: dict[str, Any] = {NDJSON: {"schema": schemas.message(descriptor)}}
    elif route.body == "*":
        content = {JSON: {"schema": schemas.message(descriptor)}}
    elif route.body:
        content = {JSON: {"schema": schemas.field(descriptor.fields_by_name[route.body])}}
    else:
        return None
    form = _FORMS.get(route.rpc)
    if form is not None:
        content[multipart.MULTIPART] = {"schema": form}
    return {"required": route.client_streaming, "content": content}


def _responses(schemas: Schemas, route: Route) -> dict[str, Any]:
    output = route.method.output_type
    schema = (
        schemas.field(output.fields_by_name[route.response_body]) if route.response_body else schemas.message(output)
    )
    if route.server_streaming:
        line = {
            "type": "object",
            "properties": {"result": schema, "error": schemas.message(status_pb2.Status.DESCRIPTOR)},
        }
        ok = {"description": "one JSON object per line", "content": {NDJSON: {"schema": line}}}
    else:
        ok = {"description": "OK", "content": {JSON: {"schema": schema}}}
    error = {"description": "error", "content": {JSON: {"schema": schemas.message(status_pb2.Status.DESCRIPTOR)}}}
    return {"200": ok, "default": error}


def _path_schema(schemas: Schemas, field: FieldDescriptor) -> dict[str, Any]:
    """A path variable is one non-empty segment."""
    schema = schemas.field(field)
    return {**schema, "minLength": 1} if field.type == FieldDescriptor.TYPE_STRING else schema


def path_names(route: Route) -> dict[str, str]:
    """OpenAPI names of the path variables: the last part of each field path (`task.id` -> `id`).

    OpenAPI treats paths differing only in parameter names as one, and tools
    read dots in names as attribute access; the field path is in the description.
    """
    names = {var: var.rpartition(".")[2] for var in route.template.variables}
    if len(set(names.values())) < len(names):
        names = {var: var.replace(".", "_") for var in route.template.variables}
    return names


def openapi_path(route: Route) -> str:
    path = route.template.openapi_path
    for var, name in path_names(route).items():
        path = path.replace(f"{{{var}}}", f"{{{name}}}")
    return path


def operation(schemas: Schemas, route: Route) -> dict[str, Any]:
    """The OpenAPI operation of one route."""
    descriptor = route.method.input_type
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": f"sets `{var}`",
            "schema": _path_schema(schemas, _field_at(descriptor, var)),
        }
        for var, name in path_names(route).items()
    ]
    if route.body != "*" and not route.client_streaming:
        skip = set(route.template.variables) | ({route.body} if route.body else set())
        parameters += _query_parameters(schemas, descriptor, skip)
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "tags": [route.method.containing_service.name],
        "parameters": parameters,
        "responses": _responses(schemas, route),
    }
    body = _request_body(schemas, route)
    if body is not None:
        op["requestBody"] = body
    return op


_FORMS: dict[str, dict[str, Any]] = {
    multipart.PREDICT_RPC: {
        "type": "object",
        "required": [multipart.FILE_FIELD],
        "properties": {
            multipart.FILE_FIELD: {"type": "string", "format": "binary"},
            multipart.INPUT_FIELD: {"type": "string"},
            "topK": {"type": "integer", "format": "int32"},
        },
    },
    multipart.UPLOAD_RPC: {
        "type": "object",
        "required": [multipart.FILE_FIELD],
        "properties": {multipart.FILE_FIELD: {"type": "string", "format": "binary"}},
    },
}


def openapi_document(routes: Iterable[Route], title: str = "tf-grpc-serving HTTP/JSON API") -> dict[str, Any]:
    """The whole document: every route, /healthz and /readyz, and the component schemas."""
    schemas = Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        method = route.http_method.lower()
        if method in HTTP_METHODS:
            paths.setdefault(openapi_path(route), {})[method] = operation(schemas, route)
    schemas.message(status_pb2.Status.DESCRIPTOR)
    for path, ready in (("/healthz", False), ("/readyz", True)):
        responses = {"200": {"description": "serving", "content": {JSON: {"schema": HEALTH_SCHEMA}}}}
        if ready:
            responses["503"] = {
                "description": "not serving yet, or draining",
                "content": {JSON: {"schema": HEALTH_SCHEMA}},
            }
        paths[path] = {"get": {"operationId": path.strip("/"), "tags": ["probes"], "responses": responses}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": "v1"},
        "paths": paths,
        "components": {"schemas": schemas.components},
    }
