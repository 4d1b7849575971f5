"""The outcome of a bench run and how it is reported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class BenchResult:
    """What a run measured; latencies are in milliseconds, over OK requests only."""

    target: str
    model: str
    mode: str
    concurrency: int
    channels: int
    rows: int
    elapsed_s: float
    requests: int
    ok: int
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None

    @property
    def requests_per_s(self) -> float:
        """Measured requests (any status) per second."""
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def samples_per_s(self) -> float:
        """Batch rows of OK requests per second."""
        return self.rows * self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        """Every field plus the rates, for JSON output."""
        return asdict(self) | {
            "requests_per_s": self.requests_per_s,
            "samples_per_s": self.samples_per_s,
        }

    def format(self) -> str:
        """A short human-readable report."""
        errors = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items())) or "none"
        return "\n".join(
            [
                f"{self.mode} bench of '{self.model}' at {self.target}: "
                f"{self.concurrency} workers, {self.channels} channel(s), "
                f"{self.rows} row(s) per request, {self.elapsed_s:.2f} s measured",
                f"requests     {self.requests} ({self.ok} OK)",
                f"requests/s   {self.requests_per_s:.1f}",
                f"samples/s    {self.samples_per_s:.1f}",
                f"latency ms   p50 {_ms(self.p50_ms)}  p95 {_ms(self.p95_ms)}  "
                f"p99 {_ms(self.p99_ms)}  max {_ms(self.max_ms)}",
                f"errors       {errors}",
            ]
        )


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of the latencies (all None when there are none)."""
    if not latencies_ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(np.asarray(latencies_ms), [50, 95, 99])
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "max_ms": float(max(latencies_ms)),
    }


def _ms(value: float | None) -> str:
    """Milliseconds with two decimals, or `-` when there is no value."""
    return "-" if value is None else f"{value:.2f}"
