"""The error tree and the one table that maps it to gRPC and HTTP.

    ServingError                 base; carries a gRPC status code
    ├── InvalidArgument          the request is malformed (INVALID_ARGUMENT, 400)
    ├── NotFound                 no such model, version or task (NOT_FOUND, 404)
    ├── AlreadyExists            the id is taken (ALREADY_EXISTS, 409)
    ├── FailedPrecondition       not allowed in the current state (FAILED_PRECONDITION, 400)
    ├── ResourceExhausted        a queue or limit is full (RESOURCE_EXHAUSTED, 429)
    ├── DeadlineExceeded         the caller's deadline passed (DEADLINE_EXCEEDED, 504)
    ├── Cancelled                the caller went away (CANCELLED, 499)
    ├── Unauthenticated          missing or wrong credentials (UNAUTHENTICATED, 401)
    ├── PermissionDenied         credentials lack the right (PERMISSION_DENIED, 403)
    ├── Unimplemented            the RPC is not served here (UNIMPLEMENTED, 501)
    ├── Unavailable              try again later: loading, draining, backend down (UNAVAILABLE, 503)
    ├── DataLoss                 stored or received data is corrupt, e.g. a checksum mismatch (DATA_LOSS, 500)
    └── Internal                 a bug or a model failure (INTERNAL, 500)

The gRPC code is the single source of truth; the HTTP status is derived from it
by `HTTP_STATUS` (grpc-gateway's table). Any other exception is a bug: it is
logged with its stack trace and answered as INTERNAL without details.

Messages quote what the caller sent ('model-name'), and a caller may send
anything: every quoted value longer than `QUOTED_LIMIT` characters is cut and
marked with its length, and a whole message past `MESSAGE_LIMIT` is cut too, so
an answer's status (an HTTP/2 header) never outgrows what clients accept.
"""

from __future__ import annotations

import logging
import re
from typing import Final

import grpc

log = logging.getLogger(__name__)

QUOTED_LIMIT: Final = 64
MESSAGE_LIMIT: Final = 1024
# A quoted value: an opening quote after no word character, a closing one before none (so the quotes
# of two values, or an apostrophe, do not pair up).
_LONG_QUOTED = re.compile(r"(?<![\w'])'([^'\n]{%d,})'(?![\w'])" % (QUOTED_LIMIT + 1))  # noqa: UP031 (the regex's braces)


def cut(message: str) -> str:
    """`message` with long quoted values, then the message itself, cut and marked (module docstring).
    What it returns is left as it is by a second cut."""
    if len(message) <= QUOTED_LIMIT:
        return message
    message = _LONG_QUOTED.sub(
        lambda m: f"'{m.group(1)[: QUOTED_LIMIT - 3]}...' ({len(m.group(1)):,} characters)", message
    )
    if len(message) > MESSAGE_LIMIT:
        suffix = f"... ({len(message):,} characters)"
        message = message[: MESSAGE_LIMIT - len(suffix)] + suffix
    return message


class ServingError(Exception):
    """Base of every error the server answers deliberately."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        message = cut(message)
        super().__init__(message)
        self.message = message


class InvalidArgument(ServingError):
    """The request is malformed: wrong dtype, shape, missing input, bad image."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    """No such model, version or task."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServingError):
    """A record with that id exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServingError):
    """The operation is not allowed in the current state."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServingError):
    """A bounded queue or a limit is full; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before the work was done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServingError):
    """The caller cancelled the call."""

    code = grpc.StatusCode.CANCELLED


class Unauthenticated(ServingError):
    """Missing or wrong credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServingError):
    """The credentials do not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unimplemented(ServingError):
    """The RPC is defined but not served by this server."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(ServingError):
    """Temporarily unable to serve: loading, shutting down, a backend is down."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ServingError):
    """Data arrived or was found corrupt: a checksum does not match."""

    code = grpc.StatusCode.DATA_LOSS


class Internal(ServingError):
    """A bug or a model failure; the message says what failed, not how."""

    code = grpc.StatusCode.INTERNAL


# grpc-gateway's runtime/errors.go HTTPStatusFromCode.
HTTP_STATUS: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and message to answer for an exception."""
    if isinstance(exc, ServingError):
        return exc.code, exc.message
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, str(exc) or "not implemented"
    if isinstance(exc, grpc.RpcError):  # reading the request stream failed: the caller went away
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        if not isinstance(code, grpc.StatusCode) or code in (
            grpc.StatusCode.OK,
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.INTERNAL,
        ):
            code = grpc.StatusCode.CANCELLED
        details = exc.details() if callable(getattr(exc, "details", None)) else None
        return code, cut(str(details or "the call was cancelled"))
    log.error("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def http_status_of(code: grpc.StatusCode) -> int:
    """HTTP status for a gRPC code."""
    return HTTP_STATUS.get(code, 500)
