"""Run callables later from one timer thread (webhook retries wait here, not in a worker)."""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Scheduler:
    """`call_later(delay, fn)`; `fn` runs on the timer thread and should only hand work off."""

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay_s), next(self._seq), fn))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                log.exception("scheduled call failed")

    def stop(self) -> None:
        """Drop what is still waiting and end the thread."""
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): exponential, capped, with jitter.

    The un-jittered delay is `initial_s * 2**(attempt-1)` capped at `max_s`; the
    result is drawn uniformly from its upper half ("equal jitter"), so retries
    of many tasks spread out but none comes much sooner than planned.
    """
    planned: float = min(max_s, initial_s * (2 ** min(attempt - 1, 30)))
    return planned / 2 + random.uniform(0, planned / 2)
