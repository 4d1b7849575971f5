"""The caller's deadline, as every protocol hands it to the Predictor."""

from __future__ import annotations

import time

import grpc

NO_DEADLINE_SECONDS = 365 * 24 * 3600.0


def deadline_of(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline as a time.monotonic() value (None: no deadline)."""
    remaining = context.time_remaining()
    # Without a deadline grpc reports a huge remaining time rather than None.
    if remaining is None or remaining > NO_DEADLINE_SECONDS:
        return None
    return time.monotonic() + remaining
