"""HTTP answers of the shim: JSON bodies and the `google.rpc.Status` error shape.

Every error is answered with the body `{"code": <gRPC code>, "message": ...,
"details": []}` and the HTTP status derived from the code by
`server.errors.http_status_of`. Two conditions exist only in HTTP and keep
their own status beside their code, as grpc-gateway does: a known path under
the wrong method (405, UNIMPLEMENTED) and a body over the limit (413,
RESOURCE_EXHAUSTED, the code gRPC answers for a message over its limit).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

import grpc
from aiohttp import web

from server.errors import ResourceExhausted, ServingError, Unimplemented, http_status_of, status_of

JSON = "application/json"
NDJSON = "application/x-ndjson"
# Reason phrases for statuses the standard library does not name.
_REASONS = {499: "Client Closed Request"}


class MethodNotAllowed(Unimplemented):
    """The path exists, but not for this HTTP method (HTTP 405)."""

    http_status = 405

    def __init__(self, method: str, path: str, allowed: Iterable[str]) -> None:
        self.allowed = tuple(sorted(set(allowed)))
        self.http_headers = {"Allow": ", ".join(self.allowed)}  # RFC 9110: a 405 says what is allowed
        super().__init__(f"method {method} is not allowed for {path}; allowed: {', '.join(self.allowed)}")


class BodyTooLarge(ResourceExhausted):
    """The request body (or one NDJSON line of it) is over the limit (HTTP 413)."""

    http_status = 413

    def __init__(self, limit: int, what: str = "request body") -> None:
        super().__init__(f"{what} is larger than the limit of {limit} bytes (MAX_HTTP_BODY_BYTES)")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def status_json(code: grpc.StatusCode, message: str) -> dict[str, Any]:
    """A `google.rpc.Status` in its JSON form."""
    return {"code": code.value[0], "message": message, "details": []}


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, reason=_REASONS.get(status), body=dumps(body), content_type=JSON, headers=headers
    )


def error_response(
    code: grpc.StatusCode,
    message: str,
    *,
    http_status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The error shape for a gRPC code; UNAUTHENTICATED also asks for a bearer token."""
    all_headers = dict(headers or {})
    if code == grpc.StatusCode.UNAUTHENTICATED:
        all_headers["WWW-Authenticate"] = "Bearer"
    return json_response(status_json(code, message), http_status or http_status_of(code), all_headers)


async def with_error_body(answer: Awaitable[web.Response]) -> web.Response:
    """The awaited answer, or any error it raised in the `{"error": message}` shape."""
    try:
        return await answer
    except ServingError as exc:
        return error_body(exc.code, exc.message, getattr(exc, "http_status", None), getattr(exc, "http_headers", None))
    except Exception as exc:
        return error_body(*status_of(exc))


def error_body(
    code: grpc.StatusCode, message: str, http_status: int | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """The `{"error": message}` shape of TF Serving's and the Open Inference Protocol's REST APIs.

    With the HTTP status of the gRPC code (or the one given).
    """
    response = json_response({"error": message}, http_status or http_status_of(code), headers)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response
