"""API-key auth on every RPC over gRPC and over the HTTP shim, exemptions, rate limit."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.config import Settings
from server.security.auth import MISSING_KEY, PROBE_METHODS, WRONG_KEY, load_api_keys
from server.security.ratelimit import RateLimiter
from serving.v1 import predict_pb2, predict_pb2_grpc
from tests.support.rpcs import Rpc, api_rpcs, grpc_rpcs

pytestmark = pytest.mark.integration

KEY = "s3cret-key-1"
AUTH_CASES = [
    pytest.param((), MISSING_KEY, id="missing"),
    pytest.param((("authorization", "Bearer not-the-key"),), WRONG_KEY, id="wrong"),
    pytest.param((("authorization", "not-the-key"),), WRONG_KEY, id="wrong-bare"),
    pytest.param((("authorization", "Bearer "),), MISSING_KEY, id="empty-bearer"),
]


def http_call(app: Any, rpc: Rpc, metadata: tuple[tuple[str, str], ...]) -> tuple[int, dict[str, str], dict]:
    """Call `rpc` over the HTTP shim at its annotated route; (status, headers, JSON body)."""
    verb, path, has_body = rpc.http_route()
    headers = {"Content-Type": "application/json", **dict(metadata)}
    request = urllib.request.Request(
        f"http://{app.http_address}{path}", method=verb, data=b"{}" if has_body else None, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), {}
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


@pytest.fixture
def keyed_app(telemetry_app):
    return telemetry_app(listen_only=True, api_keys=f"ci:{KEY}", http_server_address="127.0.0.1:0")


def test_the_api_has_every_registered_service(keyed_app):
    names = {rpc.name for rpc in grpc_rpcs()}
    registered = {
        f"/{service}/{method}" for service, methods in keyed_app.registry.methods.items() for method in methods
    }
    probes = {n for n in registered if n.startswith("/grpc.health.v1.") or n in PROBE_METHODS}
    assert registered - probes == {n for n in names if not n.startswith("/tensorflow.serving.")}
    assert len(names) >= 16
    # TensorFlow Serving's services come as generic handlers (older generated code): named, not enumerated
    services = set(keyed_app.registry.services) - {"grpc.health.v1.Health"}
    assert services == {name.split("/")[1] for name in names}


@pytest.mark.parametrize("metadata, message", AUTH_CASES)
def test_every_rpc_rejects_a_missing_or_wrong_key_over_grpc(keyed_app, metadata, message):
    with grpc.insecure_channel(keyed_app.address) as channel:
        for rpc in grpc_rpcs():
            with pytest.raises(grpc.RpcError) as info:
                rpc.call(channel, metadata)
            assert (rpc.name, info.value.code(), info.value.details()) == (
                rpc.name,
                grpc.StatusCode.UNAUTHENTICATED,
                message,
            )


@pytest.mark.parametrize("metadata, message", AUTH_CASES)
def test_every_rpc_rejects_a_missing_or_wrong_key_over_http(keyed_app, metadata, message):
    for rpc in api_rpcs():
        status, headers, body = http_call(keyed_app, rpc, metadata)
        assert (rpc.name, status, headers.get("WWW-Authenticate"), body.get("code"), body.get("message")) == (
            rpc.name,
            401,
            "Bearer",
            grpc.StatusCode.UNAUTHENTICATED.value[0],
            message,
        )


def test_every_rpc_admits_the_right_key(keyed_app):
    """With the key, no call is refused by auth (each fails, if at all, for its empty request)."""
    with grpc.insecure_channel(keyed_app.address) as channel:
        for rpc in api_rpcs():
            for metadata in ((("authorization", f"Bearer {KEY}"),), (("authorization", KEY),)):
                try:
                    rpc.call(channel, metadata)
                except grpc.RpcError as exc:
                    assert exc.code() != grpc.StatusCode.UNAUTHENTICATED, rpc.name
            status, _, body = http_call(keyed_app, rpc, (("Authorization", f"Bearer {KEY}"),))
            assert status != 401, (rpc.name, body)


def test_health_is_open_and_reflection_is_open_by_default(keyed_app):
    with grpc.insecure_channel(keyed_app.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=10)  # type: ignore[attr-defined]  # the stubs' HealthStub declares no methods
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)  # type: ignore[operator]  # types-grpcio-reflection types this method as binascii.Incomplete
        )
        assert "serving.v1.PredictService" in {s.name for s in replies[0].list_services_response.service}


def test_reflection_needs_a_key_when_not_exempt(telemetry_app):
    app = telemetry_app(listen_only=True, api_keys=f"ci:{KEY}", auth_exempt_reflection=False)
    with grpc.insecure_channel(app.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(
                stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)  # type: ignore[operator]  # types-grpcio-reflection types this method as binascii.Incomplete
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_keys_file_with_hashes_and_rotation(telemetry_app, tmp_path, read_access_log):
    keys_file = tmp_path / "keys.txt"
    digest = hashlib.sha256(b"hashed-key").hexdigest()
    keys_file.write_text(f"# API keys\nbilling:sha256:{digest}\n\nbilling:next-key  # rotation\n")
    app = telemetry_app(listen_only=True, api_keys_file=str(keys_file), api_keys="ops:ops-key")
    with grpc.insecure_channel(app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        for key in ("hashed-key", "next-key", "ops-key"):
            stub.ListModels(predict_pb2.ListModelsRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10)
        with pytest.raises(grpc.RpcError) as info:  # the digest itself is not a key
            stub.ListModels(predict_pb2.ListModelsRequest(), metadata=(("authorization", digest),), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    entries = read_access_log(4, "/serving.v1.PredictService/ListModels")
    assert [(e["key"], e["status"]) for e in entries] == [
        ("billing", "OK"),
        ("billing", "OK"),
        ("ops", "OK"),
        (None, "UNAUTHENTICATED"),
    ]


def test_bad_key_configuration_is_refused_with_its_place(tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("good:key\nno-key-here\n")
    with pytest.raises(SystemExit, match=r"API_KEYS_FILE .*keys.txt line 2: expected name:key"):
        load_api_keys(Settings(_env_file=None, api_keys_file=str(keys_file)))
    with pytest.raises(SystemExit, match="API_KEYS: expected name:key"):
        load_api_keys(Settings(_env_file=None, api_keys="a:1,:2"))
    with pytest.raises(SystemExit, match="API_KEYS_FILE: cannot read"):
        load_api_keys(Settings(_env_file=None, api_keys_file=str(tmp_path / "missing.txt")))


def test_rate_limit_answers_resource_exhausted_with_a_retry_hint(telemetry_app):
    app = telemetry_app(
        listen_only=True, api_keys=f"ci:{KEY},other:other-key", rate_limit_per_second=0.5, rate_limit_burst=2
    )
    with grpc.insecure_channel(app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)

        def call(key: str = KEY) -> None:
            stub.ListModels(predict_pb2.ListModelsRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10)

        call()
        call()
        with pytest.raises(grpc.RpcError) as info:
            call()
        call("other-key")  # buckets are per key
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details().startswith("rate limit of 0.5 requests/s for API key 'ci' exceeded; retry after ")
    assert dict(info.value.trailing_metadata())["retry-after"] == "2"  # type: ignore[arg-type, index]  # (key, value) pairs


def test_token_bucket_refills_at_the_rate():
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(0.5)
    now[0] += 0.5  # one token back
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") == pytest.approx(0.5)
    now[0] += 60  # never more than the burst
    assert [limiter.acquire("k") for _ in range(4)][-1] == pytest.approx(0.5)
    assert RateLimiter(rate=0.5).burst == 1


def test_without_a_key_the_http_listeners_never_read_the_body(telemetry_app, read_access_log):
    """A body over the limit gives 401 without a key (it was not read) and 413 with one (it was)."""
    import requests

    app = telemetry_app(
        listen_only=True,
        api_keys=f"ci:{KEY}",
        http_server_address="127.0.0.1:0",
        tfserving_rest_address="127.0.0.1:0",
        max_http_body_bytes=1024,
    )
    big = b"x" * 64 * 1024
    targets = [
        (f"http://{app.http_address}/v1/models/digits:predict", {"Content-Type": "application/json"}),
        (f"http://{app.http_address}/v1/uploads", {"Content-Type": "application/x-ndjson"}),
        (f"http://{app.tfserving.address}/v1/models/digits:predict", {"Content-Type": "application/json"}),
    ]
    for url, headers in targets:
        refused = requests.post(url, data=big, headers=headers, timeout=10)
        assert (url, refused.status_code, refused.headers.get("WWW-Authenticate")) == (url, 401, "Bearer")
    for url, headers in targets[::2]:  # the unary ones: with the key the body is read, and is too large
        read = requests.post(url, data=big, headers={**headers, "Authorization": f"Bearer {KEY}"}, timeout=10)
        assert (url, read.status_code) == (url, 413)
    lines = read_access_log(3)
    assert [line["status"] for line in lines[:3]] == ["UNAUTHENTICATED"] * 3
