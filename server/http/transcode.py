"""Protobuf JSON mapping for the routes: HTTP request parts into a message, messages out.

A request message is built from, in order: the body (`body: "*"` fills the
whole message, `body: "field"` one field), the query string (every field not
taken by the body; `a.b=1`, repeated fields by repeating the key, enums by name
or number, both lowerCamelCase and original names), then the path variables,
which win. Unknown fields and malformed values are INVALID_ARGUMENT naming the
field. Responses use lowerCamelCase names, enums as names, 64-bit integers as
strings and bytes as base64 (`json_format.MessageToDict`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from server.errors import InvalidArgument
from server.http.responses import dumps, status_json
from server.http.routes import Route

if TYPE_CHECKING:
    from google._upb._message import Descriptor as UpbDescriptor
    from google._upb._message import FieldDescriptor as UpbFieldDescriptor

# A message's DESCRIPTOR, and its fields: protobuf's Python classes or upb's, which the stubs keep apart.
MessageDescriptor: TypeAlias = "Descriptor | UpbDescriptor"
AnyFieldDescriptor: TypeAlias = "FieldDescriptor | UpbFieldDescriptor"

# Well-known message types whose JSON form is one string (so a query value can carry it).
STRING_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
    }
)
# "TENSOR_ENCODING_UNSPECIFIED: RAW over gRPC, TYPED over the HTTP shim" (predict.proto).
TENSOR_ENCODING = "serving.v1.TensorEncoding"
TYPED_ENCODING = "TENSOR_ENCODING_TYPED"
_TRUE = frozenset({"true", "1", "t", "yes"})
_FALSE = frozenset({"false", "0", "f", "no"})


def parse_json(data: bytes, what: str = "request body") -> Any:
    """The JSON value of `data`; malformed JSON is INVALID_ARGUMENT."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what}: malformed JSON: {exc}") from None


def merge_json(value: Any, message: Message, what: str) -> None:
    """Merge a JSON object into `message` (unknown fields rejected)."""
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"{what}: expected a JSON object for {message.DESCRIPTOR.full_name}, got {type(value).__name__}"
        )
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"{what}: {str(exc).splitlines()[0]}") from None


def _field(descriptor: MessageDescriptor, name: str) -> AnyFieldDescriptor | None:
    field = descriptor.fields_by_name.get(name)
    if field is not None:
        return field
    return next((f for f in descriptor.fields if f.json_name == name), None)


def _is_map(field: AnyFieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _leaf_value(field: AnyFieldDescriptor, text: str, what: str, key: str) -> Any:
    """A JSON value json_format accepts for `field`, from a query or path string."""
    if field.type == FieldDescriptor.TYPE_BOOL or (
        field.message_type is not None and field.message_type.full_name == "google.protobuf.BoolValue"
    ):
        lowered = text.lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise InvalidArgument(f"{what}: expected true or false, got {text!r}")
    if field.message_type is not None and field.message_type.full_name not in STRING_MESSAGES:
        raise InvalidArgument(
            f"{what}: is a message ({field.message_type.full_name}); set its fields as '{key}.<field>'"
        )
    return text


def strings_to_json(descriptor: MessageDescriptor, items: Iterable[tuple[str, str]], kind: str) -> dict[str, Any]:
    """A nested JSON object for `a.b=value` pairs (query parameters, form fields, path variables)."""
    tree: dict[str, Any] = {}
    for key, text in items:
        what = f"{kind} '{key}'"
        current, node = descriptor, tree
        parts = key.split(".")
        for depth, part in enumerate(parts):
            field = _field(current, part) if current is not None else None
            if field is None:
                owner = current.full_name if current is not None else ".".join(parts[:depth])
                raise InvalidArgument(f"{what}: {owner} has no field '{part}'")
            if _is_map(field):
                raise InvalidArgument(f"{what}: map fields cannot be set this way; send them in the JSON body")
            if depth < len(parts) - 1:
                if field.message_type is None or field.is_repeated:
                    raise InvalidArgument(f"{what}: '{part}' is not a singular message field")
                node = node.setdefault(field.name, {})
                current = field.message_type
                continue
            value = _leaf_value(field, text, what, key)
            if field.is_repeated:
                node.setdefault(field.name, []).append(value)
            elif field.name in node:
                raise InvalidArgument(f"{what}: given more than once, but the field is not repeated")
            else:
                node[field.name] = value
    return tree


def apply_http_defaults(message: Message) -> None:
    """Unspecified tensor encodings become TYPED (readable numbers in JSON), recursively."""
    for field in message.DESCRIPTOR.fields:
        if field.is_repeated:
            continue
        if field.enum_type is not None and field.enum_type.full_name == TENSOR_ENCODING:
            if getattr(message, field.name) == 0:
                setattr(message, field.name, field.enum_type.values_by_name[TYPED_ENCODING].number)
        elif field.message_type is not None and message.HasField(field.name):
            apply_http_defaults(getattr(message, field.name))


def build_request(route: Route, body: bytes, query: Iterable[tuple[str, str]], variables: dict[str, str]) -> Message:
    """The route's request message from the body, the query string and the path variables."""
    message = route.new_request()
    descriptor = message.DESCRIPTOR
    if route.body == "*":
        if body.strip():
            merge_json(parse_json(body), message, "request body")
    else:
        if route.body and body.strip():
            merge_json({route.body: parse_json(body)}, message, "request body")
        taken = {route.body} if route.body else set()
        params = [(k, v) for k, v in query if k.split(".")[0] not in taken]
        merge_json(strings_to_json(descriptor, params, "query parameter"), message, "query string")
    apply_path(message, variables)
    return message


def apply_path(message: Message, variables: dict[str, str]) -> None:
    """Set the path variables (they win over the body) and the HTTP defaults."""
    if variables:
        merge_json(strings_to_json(message.DESCRIPTOR, variables.items(), "path variable"), message, "path")
    apply_http_defaults(message)


def wrapper_field(descriptor: MessageDescriptor) -> AnyFieldDescriptor | None:
    """The only field of a message that just wraps another (StreamPredictRequest.request)."""
    if len(descriptor.fields) != 1:
        return None
    field = descriptor.fields[0]
    if field.message_type is None or field.is_repeated:
        return None
    return field


def parse_stream_line(route: Route, line: bytes, number: int, variables: dict[str, str]) -> Message:
    """One NDJSON line of a streamed request body.

    A line may also carry the wrapped message alone (a PredictRequest for
    StreamPredict), when the request message only wraps one.
    """
    what = f"request line {number}"
    value = parse_json(line, what)
    message = route.new_request()
    wrapper = wrapper_field(message.DESCRIPTOR)
    if (
        wrapper is not None
        and isinstance(value, dict)
        and value
        and not value.keys() <= {wrapper.name, wrapper.json_name}
    ):
        merge_json(value, getattr(message, wrapper.name), what)
    else:
        merge_json(value, message, what)
    apply_path(message, variables)
    return message


def message_json(message: Message, response_body: str = "") -> Any:
    """The JSON value of a response (or of its `response_body` field)."""
    value = json_format.MessageToDict(message, preserving_proto_field_name=False)
    if not response_body:
        return value
    field = message.DESCRIPTOR.fields_by_name[response_body]
    if field.is_repeated:
        return value.get(field.json_name, {} if _is_map(field) else [])
    return value.get(field.json_name, {} if field.message_type is not None else None)


def result_line(message: Message, response_body: str = "") -> bytes:
    """One NDJSON line of a streamed response."""
    return dumps({"result": message_json(message, response_body)}) + b"\n"


def error_line(code: Any, message: str) -> bytes:
    """The last NDJSON line of a streamed response that failed."""
    return dumps({"error": status_json(code, message)}) + b"\n"
