"""Opening channels and building per-call metadata, shared by `Client` and the bench."""

from __future__ import annotations

from collections.abc import Sequence

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
    all_options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *options,
    ]
    if tls or root_certificates is not None or certificate_chain is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain
        )
        return grpc.secure_channel(target, credentials, options=all_options)
    return grpc.insecure_channel(target, options=all_options)


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
