"""`Connection`: a channel with default deadline, metadata and error handling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from client.channel import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TARGET, call_metadata, open_channel
from client.errors import ClientError

C = TypeVar("C", bound="Connection")
T = TypeVar("T")


class Connection:
    """A channel to the server, and how every call over it is made.

    `timeout` is the default deadline of each call in seconds (None: no deadline).
    `api_key` is sent as `authorization: Bearer <api_key>`, `metadata` with every
    call. A `channel` passed in is used as is and left open by `close()`. With
    `tls` (implied by any certificate) the channel is encrypted; `root_certificates`
    replaces the system's trusted roots, and `certificate_chain` with `private_key`
    (PEM) identify the client to servers that require client certificates. With
    an OpenTelemetry `tracer_provider` every call gets a CLIENT span whose trace
    continues on the server.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel: grpc.Channel | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._api_key = api_key
        self._metadata = tuple(metadata)
        self._owns_channel = channel is None
        self._raw_channel = channel or open_channel(
            target,
            max_message_bytes=max_message_bytes,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
        )
        self._channel = self._raw_channel
        if tracer_provider is not None:
            # A CLIENT span per call; its W3C traceparent goes in the metadata.
            from opentelemetry.instrumentation.grpc import client_interceptor, intercept_channel

            self._channel = intercept_channel(self._raw_channel, client_interceptor(tracer_provider=tracer_provider))

    def __enter__(self: C) -> C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, unless it was passed in."""
        if self._owns_channel:
            self._raw_channel.close()

    def _call(
        self,
        method: Callable[..., T],
        request: object,
        timeout: float | None,
        request_id: str | None = None,
    ) -> T:
        """Call a unary method with the deadline and metadata; errors become `ClientError`."""
        try:
            return method(
                request,
                timeout=self._deadline(timeout),
                metadata=self._call_metadata(request_id),
            )
        except grpc.RpcError as error:
            raise ClientError.from_rpc_error(error) from None

    def _deadline(self, timeout: float | None) -> float | None:
        """The call's own timeout, else the client's default."""
        return self.timeout if timeout is None else timeout

    def _call_metadata(self, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
        """Authorization and extra metadata, plus `x-request-id` when given."""
        return call_metadata(api_key=self._api_key, metadata=self._metadata, request_id=request_id)
