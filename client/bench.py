"""A gRPC load generator for the Predict and StreamPredict calls.

`concurrency` threads each run a closed loop (send one request, wait for its
answer, repeat) over one of `channels` channels. Requests sent during the
warm-up are not counted. The run stops by itself once `duration` seconds have
passed or `count` requests were measured, whichever comes first; every request
has a deadline of `timeout` seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import grpc
import numpy as np

from client.bench_result import BenchResult, latency_summary
from client.bench_senders import Sender, StreamSender, UnarySender
from client.channel import DEFAULT_TARGET, Metadata, call_metadata, open_channel
from client.library import Client
from client.messages import predict_request, tensor_inputs
from serving.v1 import model_pb2, predict_pb2, predict_pb2_grpc, stream_pb2_grpc
from server.models.codec import NUMPY_DTYPES, dtype_name

DEFAULT_DURATION = 10.0
DEFAULT_TIMEOUT = 10.0
Mode = Literal["unary", "stream"]
Phase = Literal["warmup", "measure", "stop"]


def random_inputs(
    metadata: model_pb2.ModelMetadata, rows: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random data for every input of a model; each -1 dimension becomes `rows`."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in metadata.inputs:
        shape = [rows if d < 0 else int(d) for d in spec.shape] or [rows]
        dtype = NUMPY_DTYPES.get(spec.dtype, np.dtype(object))
        if dtype.kind == "f":
            arrays[spec.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        elif dtype.kind in "iu":
            arrays[spec.name] = rng.integers(0, 10, shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.random(shape) < 0.5
        else:
            raise ValueError(f"input '{spec.name}': no random data for {dtype_name(spec.dtype)}")
    return arrays


class _Schedule:
    """Warm-up, then measurement until the deadline or the request budget runs out."""

    def __init__(self, warmup: float, duration: float | None, count: int | None) -> None:
        self.measure_from = time.perf_counter() + warmup
        self._stop_at = self.measure_from + duration if duration is not None else math.inf
        self._left = count if count is not None else math.inf
        self._lock = threading.Lock()

    def next_phase(self) -> Phase:
        """Called before each request: whether to send it, and whether it counts."""
        now = time.perf_counter()
        if now >= self._stop_at:
            return "stop"
        if now < self.measure_from:
            return "warmup"
        with self._lock:
            if self._left <= 0:
                return "stop"
            self._left -= 1
        return "measure"

    def stop(self) -> None:
        """Make every worker stop before its next request."""
        self._stop_at = -math.inf


@dataclass
class _Tally:
    """One worker's measured requests."""

    latencies_ms: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    last_finish: float = 0.0


def _work(send: Sender, schedule: _Schedule, tally: _Tally) -> None:
    """A closed loop: send, wait, record, until the schedule says stop."""
    try:
        while (phase := schedule.next_phase()) != "stop":
            start = time.perf_counter()
            code = send()
            finish = time.perf_counter()
            if phase == "measure":
                tally.codes[code.name] += 1
                tally.last_finish = max(tally.last_finish, finish)
                if code == grpc.StatusCode.OK:
                    tally.latencies_ms.append((finish - start) * 1000.0)
    finally:
        send.close()


def run_bench(
    target: str = DEFAULT_TARGET,
    *,
    model: str = "digits",
    version: int = 0,
    mode: Mode = "unary",
    concurrency: int = 1,
    channels: int = 1,
    duration: float | None = None,
    count: int | None = None,
    rows: int = 1,
    warmup: float = 1.0,
    timeout: float = DEFAULT_TIMEOUT,
    api_key: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    inputs: Mapping[str, np.ndarray] | None = None,
    tls: bool = False,
    root_certificates: bytes | None = None,
) -> BenchResult:
    """Load `model` at `target` and measure it; see the module docstring.

    Without `inputs`, random data of `rows` rows is made once from the model's
    metadata and sent in every request. Without `duration` and `count`, the run
    lasts `DEFAULT_DURATION` seconds. Raises `ClientError` if the metadata
    cannot be fetched.
    """
    _check(
        mode=mode,
        concurrency=concurrency,
        channels=channels,
        duration=duration,
        count=count,
        rows=rows,
        warmup=warmup,
        timeout=timeout,
    )
    if duration is None and count is None:
        duration = DEFAULT_DURATION
    # Separate subchannel pools give each channel its own connection.
    pool = [("grpc.use_local_subchannel_pool", 1)] if channels > 1 else []
    opened = [
        open_channel(target, tls=tls, root_certificates=root_certificates, options=pool)
        for _ in range(min(channels, concurrency))
    ]
    try:
        if inputs is None:
            client = Client(
                target, api_key=api_key, timeout=timeout, metadata=metadata, channel=opened[0]
            )
            inputs = random_inputs(client.get_model(model, version), rows)
        rows = int(next(iter(inputs.values())).shape[0]) if inputs else rows
        request = predict_request(model, tensor_inputs(inputs), version=version)
        md = call_metadata(api_key=api_key, metadata=metadata)
        senders = [
            _sender(mode, opened[i % len(opened)], request, md, timeout)
            for i in range(concurrency)
        ]
        schedule = _Schedule(warmup, duration, count)
        tallies = _run_workers(senders, schedule)
    finally:
        for channel in opened:
            channel.close()
    codes = sum((t.codes for t in tallies), Counter())
    latencies = [ms for t in tallies for ms in t.latencies_ms]
    last_finish = max((t.last_finish for t in tallies), default=0.0)
    return BenchResult(
        target=target,
        model=model,
        mode=mode,
        concurrency=concurrency,
        channels=len(opened),
        rows=rows,
        elapsed_s=max(last_finish - schedule.measure_from, 0.0),
        requests=sum(codes.values()),
        ok=codes.get("OK", 0),
        errors={code: n for code, n in codes.items() if code != "OK"},
        **latency_summary(latencies),
    )


def _run_workers(senders: list[Sender], schedule: _Schedule) -> list[_Tally]:
    """Run one thread per sender until the schedule stops them; Ctrl-C stops them early."""
    tallies = [_Tally() for _ in senders]
    threads = [
        threading.Thread(target=_work, args=(send, schedule, tally), name=f"bench-{i}")
        for i, (send, tally) in enumerate(zip(senders, tallies))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        schedule.stop()
        for thread in threads:
            thread.join()
        raise
    return tallies


def _check(
    *,
    mode: str,
    concurrency: int,
    channels: int,
    duration: float | None,
    count: int | None,
    rows: int,
    warmup: float,
    timeout: float,
) -> None:
    """Reject settings that would make a run meaningless."""
    if mode not in ("unary", "stream"):
        raise ValueError(f"mode must be 'unary' or 'stream', not {mode!r}")
    if min(concurrency, channels, rows, 1 if count is None else count) < 1:
        raise ValueError("concurrency, channels, rows and count must be at least 1")
    if (duration is not None and duration <= 0) or timeout <= 0:
        raise ValueError("duration and timeout must be positive")
    if warmup < 0:
        raise ValueError("warmup must not be negative")


def _sender(
    mode: Mode,
    channel: grpc.Channel,
    request: predict_pb2.PredictRequest,
    metadata: Metadata,
    timeout: float,
) -> Sender:
    """A unary or a streaming sender of `request` over `channel`."""
    if mode == "unary":
        return UnarySender(predict_pb2_grpc.PredictServiceStub(channel), request, metadata, timeout)
    stub = stream_pb2_grpc.StreamPredictServiceStub(channel)
    return StreamSender(stub, request, metadata, timeout)
