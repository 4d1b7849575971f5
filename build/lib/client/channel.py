"""Opening channels and building per-call metadata, shared by `Client` and the bench."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

Metadata = tuple[tuple[str, str], ...]


def open_channel(
    target: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    tls: bool = False,
    root_certificates: bytes | None = None,
    certificate_chain: bytes | None = None,
    private_key: bytes | None = None,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.Channel:
    """A channel to `target`: TLS when `tls` or any certificate is given, else plaintext.

    `certificate_chain` and `private_key` (PEM) are the client's own, for servers
    that require client certificates (mutual TLS).
    """
    credentials, all_options = _channel_settings(
        max_message_bytes=max_message_bytes,
        tls=tls,
        root_certificates=root_certificates,
        certificate_chain=certificate_chain,
        private_key=private_key,
        options=options,
    )
    if credentials is None:
        return grpc.insecure_channel(target, options=all_options)
    return grpc.secure_channel(target, credentials, options=all_options)


def open_aio_channel(target: str, **settings: Any) -> grpc.aio.Channel:
    """A `grpc.aio` channel with `open_channel`'s keyword settings.

    Open it inside the event loop that will use it.
    """
    credentials, all_options = _channel_settings(**settings)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=all_options)
    return grpc.aio.secure_channel(target, credentials, options=all_options)


def _channel_settings(
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    tls: bool = False,
    root_certificates: bytes | None = None,
    certificate_chain: bytes | None = None,
    private_key: bytes | None = None,
    options: Sequence[tuple[str, object]] = (),
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, object]]]:
    """A channel's credentials (None: plaintext) and options; see `open_channel`."""
    all_options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *options,
    ]
    credentials = None
    if tls or root_certificates is not None or certificate_chain is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain
        )
    return credentials, all_options


def call_metadata(
    *,
    api_key: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    request_id: str | None = None,
) -> Metadata:
    """Metadata for one call: `authorization`, extra pairs, then `x-request-id`."""
    pairs: list[tuple[str, str]] = []
    if api_key:
        pairs.append(("authorization", f"Bearer {api_key}"))
    pairs.extend((key.lower(), value) for key, value in metadata)
    if request_id:
        pairs.append(("x-request-id", request_id))
    return tuple(pairs)
