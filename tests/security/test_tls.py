"""TLS and mutual TLS on the gRPC port, with throwaway certificates; the health-only plaintext port."""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request

import grpc
import pytest

from client import Client
from client.errors import ClientError
from server.config import Settings
from server.security.tls import server_ssl_context
from serving.v1 import predict_pb2, predict_pb2_grpc
from tests.support.certs import CertificateAuthority
from tests.support.servers import health_status

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path)
    return ca, ca.issue("localhost", server=True)


def list_models(channel: grpc.Channel) -> int:
    stub = predict_pb2_grpc.PredictServiceStub(channel)
    return len(stub.ListModels(predict_pb2.ListModelsRequest(), timeout=10).models)


def test_tls_serves_trusting_clients_and_refuses_plaintext(telemetry_app, pki):
    ca, server = pki
    app = telemetry_app(tls_cert_file=str(server.cert), tls_key_file=str(server.key))
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.pem.read_bytes())
    with grpc.secure_channel(f"localhost:{app.port}", credentials) as channel:
        assert list_models(channel) == len(app.repository.models())
    with Client(f"localhost:{app.port}", root_certificates=ca.pem.read_bytes(), timeout=10) as client:
        assert client.health() == "SERVING"
    with grpc.insecure_channel(f"localhost:{app.port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            list_models(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_ca_is_refused(telemetry_app, pki, tmp_path):
    _, server = pki
    app = telemetry_app(listen_only=True, tls_cert_file=str(server.cert), tls_key_file=str(server.key))
    other_ca = CertificateAuthority(tmp_path, name="other CA")
    credentials = grpc.ssl_channel_credentials(root_certificates=other_ca.pem.read_bytes())
    with grpc.secure_channel(f"localhost:{app.port}", credentials) as channel:
        with pytest.raises(grpc.RpcError) as info:
            list_models(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(telemetry_app, pki, tmp_path):
    ca, server = pki
    app = telemetry_app(
        listen_only=True,
        tls_cert_file=str(server.cert),
        tls_key_file=str(server.key),
        tls_client_ca_file=str(ca.pem),
    )
    target = f"localhost:{app.port}"
    roots = ca.pem.read_bytes()
    client_cert = ca.issue("client one", server=False)
    stranger = CertificateAuthority(tmp_path, name="stranger CA").issue("stranger", server=False)

    with Client(
        target,
        root_certificates=roots,
        certificate_chain=client_cert.cert_pem,
        private_key=client_cert.key_pem,
        timeout=10,
    ) as client:
        assert client.list_models() == []
    with Client(target, root_certificates=roots, timeout=10) as client:
        with pytest.raises(ClientError) as info:
            client.list_models()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    with Client(
        target, root_certificates=roots, certificate_chain=stranger.cert_pem, private_key=stranger.key_pem, timeout=10
    ) as client:
        with pytest.raises(ClientError) as info:
            client.list_models()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_http_shim_uses_the_same_certificates(telemetry_app, pki):
    ca, server = pki
    app = telemetry_app(
        listen_only=True,
        tls_cert_file=str(server.cert),
        tls_key_file=str(server.key),
        tls_client_ca_file=str(ca.pem),
        http_server_address="127.0.0.1:0",
    )
    port = app.http_address.rpartition(":")[2]
    client_cert = ca.issue("http client", server=False)
    trusting = ssl.create_default_context(cafile=str(ca.pem))
    trusting.load_cert_chain(client_cert.cert, client_cert.key)
    with urllib.request.urlopen(f"https://localhost:{port}/healthz", context=trusting, timeout=10) as response:
        assert response.status == 200
    without_cert = ssl.create_default_context(cafile=str(ca.pem))
    with (
        pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)),
        urllib.request.urlopen(f"https://localhost:{port}/healthz", context=without_cert, timeout=10) as response,
    ):
        response.read()
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        urllib.request.urlopen(f"http://localhost:{port}/healthz", timeout=10)


def test_health_only_port_answers_probes_in_plaintext(telemetry_app, pki):
    _, server = pki
    app = telemetry_app(
        listen_only=True,
        tls_cert_file=str(server.cert),
        tls_key_file=str(server.key),
        health_server_address="127.0.0.1:0",
    )
    probe = f"127.0.0.1:{app.health_port}"
    assert health_status(probe, "liveness") == "SERVING"
    assert health_status(probe, "readiness") == "NOT_SERVING"
    app.load_models()
    assert health_status(probe, "readiness") == "SERVING"
    with grpc.insecure_channel(probe) as channel:  # nothing but health on that port
        with pytest.raises(grpc.RpcError) as info:
            list_models(channel)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_ssl_context_for_the_http_shim(pki):
    ca, server = pki
    settings = Settings(
        _env_file=None, tls_cert_file=str(server.cert), tls_key_file=str(server.key), tls_client_ca_file=str(ca.pem)
    )
    context = server_ssl_context(settings)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_ssl_context(Settings(_env_file=None)) is None


def test_tls_settings_must_come_in_pairs(pki):
    _, server = pki
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file must be set together"):
        Settings(_env_file=None, tls_cert_file=str(server.cert))
