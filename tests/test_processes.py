"""SERVER_PROCESSES=2: two real server processes on one set of ports, with a real redis-server."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.config import Settings
from server.processes import _without_processes, check, child_access_log
from serving.v1 import predict_pb2_grpc
from tests.conftest import digits_rows
from tests.support.redis_servers import RedisServer
from tests.support.servers import ServerProcess, wait_for
from tests.test_lifecycle import request, sigterm_under_load

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-processes"))
    yield server
    server.stop()


def test_two_processes_serve_one_port_and_one_metrics_view(tmp_path: Path, redis_server: RedisServer) -> None:
    proc = ServerProcess(tmp_path / "server.log", env={"SERVER_PROCESSES": "2", "REDIS_ADDRESS": redis_server.address})
    calls = 40
    try:
        proc.wait_serving()
        wait_for(lambda: len(set(re.findall(r"\[([01])\] server: ready", proc.log()))) == 2, 60, "both processes ready")
        x = digits_rows(1)
        for _ in range(calls):  # a new connection each: the kernel spreads them over both processes
            with grpc.insecure_channel(proc.target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                reply = predict_pb2_grpc.PredictServiceStub(channel).Predict(request(x), timeout=10)
                assert list(reply.outputs["probabilities"].shape) == [1, 10]
        access = Path(proc.log_path.with_name(proc.log_path.stem + "-access.log"))
        logs = [access.with_name(f"{access.stem}.{i}{access.suffix}") for i in (0, 1)]

        def predicts(path: Path) -> int:
            return path.read_text().count("/serving.v1.PredictService/Predict") if path.exists() else 0

        wait_for(lambda: sum(predicts(p) for p in logs) == calls, 10, "every call in an access log")
        assert all(predicts(p) > 0 for p in logs), [predicts(p) for p in logs]  # both processes served
        for _ in range(4):  # whichever process answers the scrape counts the calls of both
            text = urllib.request.urlopen(proc.http_url + "/metrics", timeout=10).read().decode()
            found = re.search(
                r'^serving_requests_total\{code="OK",method="/serving.v1.PredictService/Predict",'
                r'transport="grpc"\} (\S+)$',
                text,
                re.M,
            )
            assert found is not None and float(found.group(1)) == calls
    finally:
        assert proc.stop() == 0


def test_sigterm_under_load_with_two_processes_fails_no_in_flight_call(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    sigterm_under_load(tmp_path, {"SERVER_PROCESSES": "2", "REDIS_ADDRESS": redis_server.address})


def test_settings_that_cannot_be_shared_are_refused_by_name() -> None:
    base: dict[str, Any] = {"_env_file": None, "server_processes": 2, "redis_address": "127.0.0.1:1"}
    with pytest.raises(SystemExit, match="GRPC_SERVER_ADDRESS: SERVER_PROCESSES=2 needs a fixed port"):
        check(Settings(**base, grpc_server_address="127.0.0.1:0"))
    with pytest.raises(SystemExit, match="HTTP_SERVER_ADDRESS"):
        check(Settings(**base, http_server_address="127.0.0.1:0"))
    with pytest.raises(SystemExit, match="needs REDIS_ADDRESS"):
        check(Settings(_env_file=None, server_processes=2))
    with pytest.raises(
        SystemExit, match="MODEL_CONTROL_MODE=explicit: SERVER_PROCESSES=2 would load a model in the one"
    ):
        check(Settings(**base, model_control_mode="explicit"))
    check(Settings(**base))  # fixed ports and Redis: accepted


def test_each_process_gets_its_own_access_log_and_one_process_each() -> None:
    assert child_access_log("logs/access.log", 1) == "logs/access.1.log"
    assert child_access_log("", 0) == ""
    assert _without_processes(["--processes", "4", "--port", "1", "--processes=2"]) == ["--port", "1"]
