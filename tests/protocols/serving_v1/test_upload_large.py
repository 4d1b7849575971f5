"""A 256 MiB upload through the real server process, with the server's peak memory growth measured."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client
from tests.support.s3_servers import MiB, MotoServer, new_bucket
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.integration

SIZE = 256 * MiB
PART = 8 * MiB  # the default UPLOAD_PART_SIZE
MAX_GROWTH = 64 * MiB


def proc_status(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` memory field (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakRss:
    """Samples a process's RSS every few milliseconds; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = proc_status(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.mark.slow
def test_256_mib_round_trip_with_bounded_server_memory(moto: MotoServer, tmp_path: Path) -> None:
    bucket = new_bucket(moto)
    server = ServerProcess(
        tmp_path / "server.log",
        env={
            "AWS_BUCKET": bucket,
            "AWS_REGION": "us-east-1",
            "S3_ENDPOINT_URL": moto.endpoint_url,
            "ACCESS_LOG_PATH": "",
        },
    )
    try:
        server.wait_serving()
        pid = server.process.pid
        with Client(server.target, timeout=300) as client:
            client.upload(iter([b"warm-up"]), file_name="warm.bin")  # first-call allocations are not growth
            baseline = proc_status(pid, "VmRSS")
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
            sampler = PeakRss(pid)
            sent = hashlib.sha256()

            def chunks() -> Iterator[bytes]:
                block = os.urandom(MiB)
                for index in range(SIZE // MiB):
                    chunk = index.to_bytes(8, "little") + block[8:]  # every MiB differs
                    sent.update(chunk)
                    yield chunk

            reply = client.upload(chunks(), file_name="big.bin")
            sampled_peak = sampler.stop()
            hwm_peak = proc_status(pid, "VmHWM")
        growth = max(sampled_peak, hwm_peak) - baseline
        print(
            f"server RSS {baseline / MiB:.0f} MiB before, peak growth {growth / MiB:.1f} MiB "
            f"(sampled {(sampled_peak - baseline) / MiB:.1f}, VmHWM {(hwm_peak - baseline) / MiB:.1f})"
        )
        assert growth < MAX_GROWTH
        assert reply.size == SIZE and reply.sha256 == sent.hexdigest()
        head = moto.client.head_object(Bucket=bucket, Key=reply.key)
        assert head["ContentLength"] == SIZE and head["ETag"].endswith(f'-{SIZE // PART}"')
        stored = hashlib.sha256()
        body = moto.client.get_object(Bucket=bucket, Key=reply.key)["Body"]
        for piece in body.iter_chunks(MiB):
            stored.update(piece)
        assert stored.hexdigest() == sent.hexdigest()  # byte for byte
    finally:
        server.stop()
