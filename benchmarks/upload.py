"""Upload benchmark: a file through the server's UploadService vs boto3's own upload_fileobj.

    .venv/bin/python -m benchmarks.upload [--mib 256] [--rounds 3]

Both go to the same moto S3 server (a subprocess on loopback): one through a
real `python -m server` process (gRPC client -> server -> S3 multipart,
8 MiB parts, SHA-256 computed on the way), the other straight from this
process with `upload_fileobj` (s3transfer: 8 MiB parts, 10 threads). Rounds
alternate between the two and medians are reported, so the ratio comes from
one run on one machine. The server's peak RSS growth during its uploads is
reported too. Prints a Markdown report for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from client import Client
from tests.support.s3_servers import AWS_ENV, MiB, MotoServer, new_bucket
from tests.support.servers import ServerProcess

CHUNK = MiB  # the client's default chunk


def server_upload(client: Client, data: bytes) -> float:
    """Seconds to upload `data` through the server in 1 MiB messages."""

    def chunks() -> Iterator[bytes]:
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):
            yield bytes(view[start : start + CHUNK])

    started = time.perf_counter()
    reply = client.upload(chunks(), file_name="bench.bin", size=len(data))
    elapsed = time.perf_counter() - started
    assert reply.size == len(data)
    return elapsed


def direct_upload(moto: MotoServer, bucket: str, data: bytes) -> float:
    """Seconds for boto3's upload_fileobj of `data` straight to the S3 server."""
    started = time.perf_counter()
    moto.client.upload_fileobj(io.BytesIO(data), bucket, "direct.bin")
    return time.perf_counter() - started


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the file (MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(AWS_ENV)
    data = os.urandom(args.mib * MiB)
    with tempfile.TemporaryDirectory() as scratch:
        moto = MotoServer(Path(scratch) / "moto.log")
        bucket = new_bucket(moto)
        server = ServerProcess(
            Path(scratch) / "server.log",
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
            through, direct = [], []
            with Client(server.target, timeout=600) as client:
                client.upload(iter([b"warm-up"]), file_name="warm.bin")
                baseline = vm_kib(pid, "VmRSS")
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                for _ in range(args.rounds):
                    through.append(server_upload(client, data))
                    direct.append(direct_upload(moto, bucket, data))
                growth = (vm_kib(pid, "VmHWM") - baseline) / 1024
        finally:
            server.stop()
            moto.stop()
    report(args.mib, through, direct, growth)


def report(mib: int, through: list[float], direct: list[float], growth_mib: float) -> None:
    server_rate = mib / statistics.median(through)
    direct_rate = mib / statistics.median(direct)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Upload throughput ({when})\n")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{mib} MiB of random bytes to moto's S3 server on loopback, {len(through)} alternating rounds, medians.\n"
    )
    print("| path | MiB/s (median) | seconds per round |")
    print("| --- | --- | --- |")
    print(
        f"| gRPC UploadService -> server -> S3 multipart (8 MiB parts) | {server_rate:.1f} | "
        f"{', '.join(f'{t:.2f}' for t in through)} |"
    )
    print(
        f"| boto3 `upload_fileobj` straight to S3 (8 MiB parts, 10 threads) | {direct_rate:.1f} | "
        f"{', '.join(f'{t:.2f}' for t in direct)} |"
    )
    print(
        f"\nRatio server / direct: **{server_rate / direct_rate:.2f}x** (target >= 0.8x). "
        f"Server peak RSS growth over all its uploads: {growth_mib:.1f} MiB."
    )


if __name__ == "__main__":
    main()
