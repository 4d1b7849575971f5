"""Real servers for integration tests: started on free loopback ports, stopped by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health_status(target: str, service: str = "", timeout: float = 1.0) -> str:
    """SERVING / NOT_SERVING / SERVICE_UNKNOWN, or the gRPC code name when the call fails."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)  # type: ignore[attr-defined]  # the stubs' HealthStub declares no methods
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class ServerProcess:
    """`python -m server` in a subprocess, with its log in a file."""

    def __init__(self, log_path: Path, env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env.update({"GRPC_SERVER_ADDRESS": f"127.0.0.1:{self.port}", "MODEL_DIR": str(MODEL_DIR)})
        self.http_port = free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        full_env["HTTP_SERVER_ADDRESS"] = f"127.0.0.1:{self.http_port}"
        full_env["ACCESS_LOG_PATH"] = str(log_path.with_name(log_path.stem + "-access.log"))
        full_env["TFSERVING_REST_ADDRESS"] = ""  # not from the caller's environment: every server would take it
        full_env.update(env or {})
        self._log = open(log_path, "wb")  # noqa: SIM115 (the server's stdout while it runs, closed by stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", *(args or [])],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_serving(self, timeout: float = 60.0) -> None:
        def serving() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            return health_status(self.target) == "SERVING"

        wait_for(serving, timeout, f"server on {self.target} to be SERVING")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
