"""REDIS_ADDRESS with a password (`redis://:pw@...`) and with TLS (`rediss://` + REDIS_TLS_CA_FILE), against real
redis-servers started with `--requirepass` and with `--tls-port` (a throwaway CA and server certificate)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.tasks.redis_client import connect
from server.tasks.redis_store import RedisTaskStore
from serving.v1 import task_pb2
from tests.support.certs import CertificateAuthority
from tests.support.redis_servers import RedisServer, redis_tls_supported
from tests.support.task_helpers import Served, async_request, digits_request, rpc_error, task_settings

pytestmark = pytest.mark.integration

# Characters that must be percent-encoded in a URL are avoided on purpose: the address is the user's to encode.
PASSWORD = "pw-" + secrets.token_hex(12)


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    yield server
    server.stop()


@pytest.fixture
def tls_ca(tmp_path: Path) -> CertificateAuthority:
    folder = tmp_path / "certs"
    folder.mkdir()
    return CertificateAuthority(folder, "redis test CA")


@pytest.fixture
def tls_redis(tmp_path: Path, tls_ca: CertificateAuthority) -> Iterator[RedisServer]:
    if not redis_tls_supported():
        pytest.skip("the installed redis-server is built without TLS (no OpenSSL linked): rediss:// not tested")
    issued = tls_ca.issue("redis server", server=True)
    server = RedisServer(tmp_path / "redis-tls", password=PASSWORD, tls=(issued.cert, issued.key, tls_ca.pem))
    yield server
    server.stop()


def create(served: Served, **fields) -> task_pb2.Task:
    return served.tasks.CreateTask(task_pb2.CreateTaskRequest(task=task_pb2.Task(**fields)), timeout=10).task


def check_tasks_work(served: Served) -> None:
    """CreateTask, GetTask, ListTasks and a PredictAsync that a queue worker runs to the end."""
    task = create(served, model="external", metadata={"owner": "auth-test"})
    assert served.get(task.id).metadata["owner"] == "auth-test"
    listed = served.tasks.ListTasks(task_pb2.ListTasksRequest(), timeout=10).tasks
    assert task.id in [t.id for t in listed]
    queued = served.predict.PredictAsync(async_request(), timeout=10).task
    done = served.wait_status(queued.id, task_pb2.TASK_STATUS_SUCCEEDED)
    assert done.id == queued.id


def test_password_store_and_app(password_redis: RedisServer, tmp_path: Path) -> None:
    address = f"redis://:{PASSWORD}@127.0.0.1:{password_redis.port}/0"

    store = RedisTaskStore(connect(address, False), address, 3600.0, cluster=False)
    try:
        store.ping()
        assert store.address == f"redis://127.0.0.1:{password_redis.port}/0"  # shown without the password
    finally:
        store.close()

    served = Served.start(task_settings(tmp_path / "uploads", redis_address=address))
    try:
        check_tasks_work(served)
    finally:
        served.stop()
    with password_redis.client() as client:
        assert any(key.startswith("{task:") for key in client.scan_iter())  # the records really went there


def test_wrong_or_missing_password_is_unavailable_without_leaking_it(
    password_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    shown = f"redis://127.0.0.1:{password_redis.port}/0"
    for address, reason in [
        (f"redis://:{wrong}@127.0.0.1:{password_redis.port}/0", "invalid username-password pair"),
        (f"redis://127.0.0.1:{password_redis.port}/0", "must be called with the client already authenticated"),
    ]:
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            served = Served.start(task_settings(tmp_path / "uploads", redis_address=address, task_workers=1))
            try:
                assert served.predict.Predict(digits_request(), timeout=10).outputs["probabilities"]
                for call, request in [
                    (served.tasks.CreateTask, task_pb2.CreateTaskRequest(task=task_pb2.Task(model="external"))),
                    (served.tasks.GetTask, task_pb2.GetTaskRequest(id="0" * 32)),
                    (served.tasks.ListTasks, task_pb2.ListTasksRequest()),
                    (served.predict.PredictAsync, async_request()),
                ]:
                    error = rpc_error(call, request)
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                    details = error.details()
                    assert details.startswith(f"task store unavailable: {shown}: "), details
                    assert "authentication failed, check the password in REDIS_ADDRESS" in details, details
                    assert reason.lower() in details.lower(), details
                    assert wrong not in details and PASSWORD not in details, details
                recorded = served.predict.Predict(digits_request(record_task=True), timeout=10)
                assert recorded.task_id == "" and recorded.outputs["probabilities"]  # answered, just not recorded
            finally:
                served.stop()
        assert wrong not in caplog.text and PASSWORD not in caplog.text


def test_tls_with_ca_file(tls_redis: RedisServer, tls_ca: CertificateAuthority, tmp_path: Path) -> None:
    address = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}"

    store = RedisTaskStore(connect(address, False, tls_ca.pem), address, 3600.0, cluster=False)
    try:
        store.ping()
        assert store.address == f"rediss://127.0.0.1:{tls_redis.port}"
    finally:
        store.close()

    served = Served.start(task_settings(tmp_path / "uploads", redis_address=address, redis_tls_ca_file=tls_ca.pem))
    try:
        check_tasks_work(served)
    finally:
        served.stop()
    with tls_redis.client() as client:
        assert any(key.startswith("{task:") for key in client.scan_iter())


def test_tls_server_not_trusted_without_the_ca(tls_redis: RedisServer, tmp_path: Path) -> None:
    address = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}"
    served = Served.start(task_settings(tmp_path / "uploads", redis_address=address, task_workers=0))
    try:
        error = rpc_error(served.tasks.ListTasks, task_pb2.ListTasksRequest())
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert error.details().startswith(f"task store unavailable: rediss://127.0.0.1:{tls_redis.port}: ")
        assert "certificate verify failed" in error.details(), error.details()
        assert PASSWORD not in error.details()
        assert served.predict.Predict(digits_request(), timeout=10).outputs["probabilities"]
    finally:
        served.stop()


def test_plaintext_client_is_refused_by_a_tls_port(tls_redis: RedisServer, tmp_path: Path) -> None:
    served = Served.start(
        task_settings(tmp_path / "uploads", redis_address=f"redis://:{PASSWORD}@{tls_redis.address}", task_workers=0)
    )
    try:
        error = rpc_error(served.tasks.ListTasks, task_pb2.ListTasksRequest())
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert PASSWORD not in error.details()
    finally:
        served.stop()


def test_ca_file_needs_a_rediss_address(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    for address in ["127.0.0.1:6390", "redis://127.0.0.1:6390/0"]:
        with pytest.raises(ValueError, match="REDIS_TLS_CA_FILE needs a rediss:// REDIS_ADDRESS"):
            connect(address, False, ca)
