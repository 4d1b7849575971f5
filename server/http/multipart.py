"""Multipart form uploads, which JSON cannot carry (the only hand-written request shapes).

- Predict (`curl -F file=@digit.png http://host/v1/models/digits:predict`):
  every file part is one image row. A part named `file` goes to the input
  named by the form field `input`, else to the model's only image input (from
  its metadata, fetched with GetModel through the same interceptors); a part
  with another name goes to the input of that name. Other fields set request
  fields as in a query string (`-F top_k=5`). The form counts against
  MAX_HTTP_BODY_BYTES.
- Upload (`curl -F file=@big.bin http://host/v1/uploads`): the file is
  streamed to UploadService.Upload as UploadRequest messages, first the
  metadata (file name and content type from the part, plus any fields sent
  before the file, such as `key_prefix`), then chunks of `UPLOAD_CHUNK` bytes,
  never holding more than a few chunks in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, ClientPayloadError, MultipartReader, web
from aiohttp.hdrs import CONTENT_TYPE
from aiohttp.http_exceptions import HttpProcessingError

from server.errors import Cancelled, InvalidArgument, ServingError
from server.http.calls import FromLoop
from server.http.responses import BodyTooLarge
from server.http.transcode import apply_path, merge_json, strings_to_json
from serving.v1 import model_pb2, predict_pb2, upload_pb2

MULTIPART = "multipart/form-data"
PREDICT_RPC = "/serving.v1.PredictService/Predict"
UPLOAD_RPC = "/serving.v1.UploadService/Upload"
FILE_FIELD = "file"
INPUT_FIELD = "input"
UPLOAD_CHUNK = 1024 * 1024
READ_SIZE = 64 * 1024


@dataclass
class Form:
    """A multipart form read whole: text fields and file parts (name, bytes)."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    files: list[tuple[str, bytes]] = field(default_factory=list)


# What aiohttp raises for a malformed form.
MALFORMED = (ValueError, AssertionError, KeyError, HttpProcessingError)


async def _reader(request: web.Request) -> MultipartReader:
    try:
        return await request.multipart()
    except MALFORMED as exc:
        raise InvalidArgument(f"multipart form: malformed: {exc}") from None


async def _next_part(reader: MultipartReader) -> BodyPartReader | None:
    try:
        part = await reader.next()
    except MALFORMED as exc:
        raise InvalidArgument(f"multipart form: malformed: {str(exc).strip()}") from None
    if part is not None and not isinstance(part, BodyPartReader):
        raise InvalidArgument("multipart form: nested multipart parts are not accepted")
    return part


async def _chunk(part: BodyPartReader) -> bytes:
    try:
        return await part.read_chunk(READ_SIZE)
    except MALFORMED as exc:
        raise InvalidArgument(f"multipart form: malformed part '{part.name}': {str(exc).strip()}") from None


async def _text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await _chunk(part):
        data += chunk
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"form field '{part.name}': not UTF-8 text") from None


async def read_form(request: web.Request, limit: int) -> Form:
    """Every part of a multipart form, at most `limit` bytes in all."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    reader = await _reader(request)
    form, total = Form(), 0
    while (part := await _next_part(reader)) is not None:
        data = bytearray()
        while chunk := await _chunk(part):
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge(limit)
            data += chunk
        if part.filename is not None:
            form.files.append((part.name or FILE_FIELD, bytes(data)))
        else:
            try:
                form.fields.append((part.name or "", data.decode("utf-8")))
            except UnicodeDecodeError:
                raise InvalidArgument(f"form field '{part.name}': not UTF-8 text") from None
    return form


def predict_request(
    form: Form,
    variables: dict[str, str],
    model_metadata: Callable[[str, int], model_pb2.ModelMetadata],
) -> predict_pb2.PredictRequest:
    """The PredictRequest of a form (worker thread: it may call GetModel)."""
    request = predict_pb2.PredictRequest()
    fields = [(k, v) for k, v in form.fields if k != INPUT_FIELD]
    named = [v for k, v in form.fields if k == INPUT_FIELD]
    merge_json(strings_to_json(request.DESCRIPTOR, fields, "form field"), request, "form")
    apply_path(request, variables)
    if not form.files:
        raise InvalidArgument("multipart form: no file part; send an image with -F file=@image.png")
    default_input = named[-1] if named else None
    for name, data in form.files:
        if name == FILE_FIELD:
            default_input = default_input or _only_image_input(model_metadata(request.model, request.version))
            name = default_input
        request.inputs[name].images.images.append(data)
    return request


def _only_image_input(metadata: model_pb2.ModelMetadata) -> str:
    names = list(metadata.image_inputs)
    if len(names) == 1:
        return names[0]
    listed = ", ".join(f"'{n}'" for n in names)
    if names:
        raise InvalidArgument(
            f"form field '{INPUT_FIELD}': model '{metadata.name}' has image inputs {listed}; "
            f"name one with -F {INPUT_FIELD}=NAME"
        )
    raise InvalidArgument(f"multipart form: model '{metadata.name}' has no input that accepts images")


async def _upload_messages(request: web.Request, source: FromLoop[upload_pb2.UploadRequest]) -> None:
    reader = await _reader(request)
    fields = []
    part = await _next_part(reader)
    while part is not None and part.filename is None:
        fields.append((part.name or "", await _text(part)))
        part = await _next_part(reader)
    if part is None:
        raise InvalidArgument("multipart form: no file part; send the file with -F file=@name")
    metadata = upload_pb2.UploadMetadata()
    merge_json(strings_to_json(metadata.DESCRIPTOR, fields, "form field"), metadata, "form")
    metadata.file_name = metadata.file_name or part.filename or ""
    metadata.content_type = metadata.content_type or part.headers.get(CONTENT_TYPE, "application/octet-stream")
    await source.put(upload_pb2.UploadRequest(metadata=metadata))
    buffer = bytearray()
    while chunk := await _chunk(part):
        buffer += chunk
        if len(buffer) >= UPLOAD_CHUNK:
            await source.put(upload_pb2.UploadRequest(chunk=bytes(buffer)))
            buffer = bytearray()
    if buffer:
        await source.put(upload_pb2.UploadRequest(chunk=bytes(buffer)))
    if await _next_part(reader) is not None:
        raise InvalidArgument("multipart form: one file per upload, with every other field before it")


async def feed_upload(request: web.Request, source: FromLoop[upload_pb2.UploadRequest]) -> None:
    """Stream a multipart upload into `source`, then end it (with the error when it broke)."""
    error: ServingError | None = None
    try:
        await _upload_messages(request, source)
    except ServingError as exc:
        error = exc
    except (ClientPayloadError, ConnectionError):
        error = Cancelled("the HTTP client went away while sending the file")
    except asyncio.CancelledError:
        error = Cancelled("the HTTP call was cancelled")
        raise
    finally:
        source.end(error)
