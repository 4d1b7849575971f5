"""The client's error type: a gRPC status code and the server's message."""

from __future__ import annotations

from typing import Final

import grpc

_CODES_BY_VALUE: Final[dict[int, grpc.StatusCode]] = {code.value[0]: code for code in grpc.StatusCode}


class ClientError(Exception):
    """A call that failed, with its gRPC status code and message.

    `str(error)` reads like `INVALID_ARGUMENT: input 'image': ...`.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ClientError:
        """Wrap an error raised by a stub call (which is also a `grpc.Call`)."""
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")

    @classmethod
    def from_status(cls, code: int, message: str) -> ClientError:
        """Build from a numeric `google.rpc.Code`, as carried by `google.rpc.Status`."""
        return cls(status_code(code), message)


def status_code(value: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` of a numeric code; unknown numbers map to UNKNOWN."""
    return _CODES_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)
