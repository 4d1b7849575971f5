"""What the task parts report as they go (task outcomes, webhook attempts), without knowing Prometheus.

`server.telemetry.metrics.Metrics` is one; `NO_OBSERVER` records nothing.
"""

from __future__ import annotations

from typing import Protocol


class TaskObserver(Protocol):
    def task_finished(self, outcome: str) -> None:
        """A task reached a final status: "succeeded", "failed", "cancelled" or "expired"."""

    def webhook_delivered(self, outcome: str) -> None:
        """One webhook attempt: "delivered" (2xx), "retried" (a retry is scheduled) or "failed" (given up)."""


class _NoObserver:
    def task_finished(self, outcome: str) -> None:
        pass

    def webhook_delivered(self, outcome: str) -> None:
        pass


NO_OBSERVER: TaskObserver = _NoObserver()


def outcome(status_name: str) -> str:
    """The outcome label of a final status name ("SUCCEEDED" -> "succeeded")."""
    return status_name.lower()
