"""TLS for the gRPC server and the HTTP shim, from TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE.

With a client CA, clients must present a certificate it signed (mutual TLS).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.config import Settings


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes of the server's certificate chain and key, and of the client CA."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None


def load_tls(settings: Settings) -> TlsFiles | None:
    """The configured TLS files, or None for plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ca = settings.tls_client_ca_file
    return TlsFiles(
        certificate_chain=_read("TLS_CERT_FILE", settings.tls_cert_file),
        private_key=_read("TLS_KEY_FILE", settings.tls_key_file),
        client_ca=_read("TLS_CLIENT_CA_FILE", ca) if ca is not None else None,
    )


def grpc_server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Credentials for `grpc.Server.add_secure_port`; client certificates required with a client CA."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.mutual,
    )


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """An `ssl.SSLContext` for an HTTP server with the same files (None: plaintext)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if settings.tls_client_ca_file is not None:
            context.load_verify_locations(cafile=settings.tls_client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"TLS files: cannot load {settings.tls_cert_file}, {settings.tls_key_file}: {exc}") from None
    return context


def _read(variable: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SystemExit(f"{variable}: cannot read {path}: {exc.strerror}") from None
