"""An S3-compatible server for tests: moto's server mode over real HTTP on loopback.

`MotoServer` runs `moto_server` in a subprocess on a free port (stopped or
killed by pid); `TcpRelay` is a loopback TCP relay in front of it that can
be cut and restored, so a test can take the S3 endpoint away mid-upload and
still inspect what the S3 server kept.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from server.config import Settings
from tests.support.servers import MODEL_DIR, free_port, wait_for

MiB = 1024 * 1024
PART = 5 * MiB  # the smallest part S3 (and moto) accepts

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
# Dummy credentials; no machine-wide AWS configuration is read.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
REGION = "us-east-1"


def app_settings(**overrides: object) -> Settings:
    """Server settings for tests: free loopback ports (gRPC, HTTP shim), no access log."""
    values: dict[str, Any] = {
        "model_dir": MODEL_DIR,
        "grpc_server_address": "127.0.0.1:0",
        "http_server_address": "127.0.0.1:0",
        "access_log_path": "",
        "grpc_max_workers": 8,
    }
    return Settings(_env_file=None, **(values | overrides))


def s3_settings(endpoint_url: str, bucket: str, **overrides: object) -> Settings:
    """Server settings for `bucket` at `endpoint_url`, with 5 MiB parts."""
    values: dict[str, Any] = {
        "aws_bucket": bucket,
        "aws_region": REGION,
        "s3_endpoint_url": endpoint_url,
        "upload_part_size": PART,
    }
    return app_settings(**(values | overrides))


def new_bucket(moto: MotoServer) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    moto.client.create_bucket(Bucket=name)
    return name


def chunks_of(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def in_progress_uploads(moto: MotoServer, bucket: str) -> list[dict]:
    return moto.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def object_keys(moto: MotoServer, bucket: str) -> list[str]:
    return [o["Key"] for o in moto.client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def local_files(root: Path) -> list[str]:
    """Every file under `root`, relative, including temporary ones."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def s3_client(endpoint_url: str) -> Any:
    """A boto3 client of the test's own, for setting up and inspecting buckets."""
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 2},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class MotoServer:
    """`moto_server` on a free loopback port."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 (the server's stdout while it runs, closed by stop())
        self.process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_ENV},
        )
        wait_for(self._ready, 30, f"moto_server on port {self.port}")
        self.client = s3_client(self.endpoint_url)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {self.process.returncode}")
        return _listening(self.port)

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crashed S3 endpoint would."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


class TcpRelay:
    """Forwards a loopback port to `target_port`; `cut()` drops every connection, `restore()` relays again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and reset every relayed connection."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
