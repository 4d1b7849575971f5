"""Reading HTTP request bodies within the limit: whole, or as NDJSON lines fed to a stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientPayloadError, web
from aiohttp.streams import StreamReader

from server.errors import Cancelled, InvalidArgument, ServingError
from server.http.calls import FromLoop
from server.http.responses import BodyTooLarge

READ_SIZE = 64 * 1024


def json_object(body: bytes | memoryview, expected: str) -> dict[str, Any]:
    """A body that must be one JSON object; InvalidArgument saying what is wrong, `expected` when it is
    JSON but not an object."""
    try:
        payload = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body: not JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("request body: nested too deeply") from None
    if not isinstance(payload, dict):
        raise InvalidArgument(f"request body: {expected}")
    return payload


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body; BodyTooLarge past `limit` bytes (checked before reading when announced)."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    try:
        async for chunk in request.content.iter_chunked(READ_SIZE):
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(limit)
    except (ClientPayloadError, ConnectionError) as exc:
        raise InvalidArgument(f"request body: could not be read: {exc}") from None
    return bytes(body)


async def _lines(content: StreamReader, limit: int) -> AsyncIterator[bytes]:
    """Non-empty lines of an NDJSON body, each at most `limit` bytes."""
    buffer = bytearray()
    searched = 0
    async for chunk in content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n", searched)) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            searched = 0
            if len(line) > limit:
                raise BodyTooLarge(limit, "a request line")
            if line.strip():
                yield line
        searched = len(buffer)
        if len(buffer) > limit:
            raise BodyTooLarge(limit, "a request line")
    if bytes(buffer).strip():
        yield bytes(buffer)


async def feed_lines(content: StreamReader, source: FromLoop[bytes], limit: int) -> None:
    """Feed every NDJSON line to `source`, then end it (with the error when the body broke)."""
    error: ServingError | None = None
    try:
        async for line in _lines(content, limit):
            await source.put(line)
    except ServingError as exc:
        error = exc
    except (ClientPayloadError, ConnectionError):
        error = Cancelled("the HTTP client went away while sending the request")
    except asyncio.CancelledError:
        error = Cancelled("the HTTP call was cancelled")
        raise
    finally:
        source.end(error)
