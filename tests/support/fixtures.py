"""Fakes shared by the unit tests.

`FakeModel` stands in for a TensorFlow model behind a `Batcher`: it is a batch
function (`Mapping[str, ndarray] -> dict[str, ndarray]`) that

- records every call (its rows, its input shapes and a copy of its inputs),
- computes outputs that depend on each row (`expected_outputs`), so a caller can
  check it received exactly its own rows,
- can be made to block until the test releases it (`gate`), so the test decides
  when the model is busy and can build up a queue deterministically,
- can sleep on each call, and
- fails when a row of its input contains `FAIL_MARKER`.

The helpers at the bottom build inputs and wait for threads and futures with
timeouts, so a broken test fails quickly instead of hanging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

#: A value that makes `FakeModel` fail when any row of its input contains it.
FAIL_MARKER = -999.0

#: How long a test waits for something that should happen at once.
WAIT_S = 1.0


class ModelFailure(RuntimeError):
    """What `FakeModel` raises for a row containing `FAIL_MARKER`."""


def expected_outputs(x: np.ndarray) -> dict[str, np.ndarray]:
    """The per-row function `FakeModel` computes for input `x` (rows on axis 0).

    Row i of every output depends only on row i of `x`, so splitting the input
    into requests and the output back into results commutes with the function.
    """
    return {
        "y": x.sum(axis=tuple(range(1, x.ndim))) * 2,
        "z": x[:, :1],
    }


@dataclass(frozen=True)
class Call:
    """One call of the fake model."""

    rows: int
    shapes: dict[str, tuple[int, ...]]
    inputs: dict[str, np.ndarray]
    thread: int = 0  # threading.get_ident() of the thread that ran the batch


class FakeModel:
    """A batch function for a `Batcher` whose behaviour the test controls.

    Args:
        input_name: the input it reads (the other inputs are ignored).
        blocked: start blocked, i.e. every call waits for `release()`.
        sleep_s: seconds to sleep in every call (after the gate).
    """

    def __init__(self, input_name: str = "x", *, blocked: bool = False, sleep_s: float = 0.0) -> None:
        self.input_name = input_name
        self.sleep_s = sleep_s
        self.calls: list[Call] = []
        #: Set once a call has started (and recorded itself); cleared by `wait_started`.
        self.started = threading.Event()
        #: Calls wait on this until it is set; `release()` sets it.
        self.gate = threading.Event()
        if not blocked:
            self.gate.set()
        self._lock = threading.Lock()

    # -- the batch function -------------------------------------------------

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs[self.input_name]
        with self._lock:
            self.calls.append(
                Call(
                    rows=x.shape[0],
                    shapes={k: tuple(v.shape) for k, v in inputs.items()},
                    inputs={k: np.array(v, copy=True) for k, v in inputs.items()},
                    thread=threading.get_ident(),
                )
            )
        self.started.set()
        if not self.gate.wait(timeout=10 * WAIT_S):
            raise AssertionError("FakeModel was never released")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if np.any(x == FAIL_MARKER):
            raise ModelFailure(f"row contains the fail marker {FAIL_MARKER}")
        return expected_outputs(x)

    # -- control ---------------------------------------------------------------

    def block(self) -> None:
        """Make the following calls wait for `release()`."""
        self.gate.clear()

    def release(self) -> None:
        """Let blocked and following calls run."""
        self.gate.set()

    def wait_started(self, timeout: float = WAIT_S) -> None:
        """Wait until a call has started (the model is busy), then re-arm."""
        if not self.started.wait(timeout):
            raise AssertionError(f"the model was not called within {timeout} s")
        self.started.clear()

    # -- what it saw -------------------------------------------------------

    @property
    def batch_rows(self) -> list[int]:
        """Rows of every call, in call order (padded sizes included)."""
        with self._lock:
            return [call.rows for call in self.calls]

    def seen_values(self) -> set[float]:
        """Every value of the input that any call received."""
        with self._lock:
            return {float(v) for call in self.calls for v in call.inputs[self.input_name].ravel()}


def rows(n: int, start: float, width: int = 3, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """An (n, width) array of distinct values start, start+1, ... (no marker)."""
    return (start + np.arange(n * width, dtype=np.float64)).reshape(n, width).astype(dtype)


def assert_own_rows(result: Mapping[str, np.ndarray], x: np.ndarray) -> None:
    """Assert `result` is exactly the per-row function of the caller's `x`."""
    expected = expected_outputs(x)
    assert set(result) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(result[name], value, err_msg=f"output {name!r}")
        assert result[name].dtype == value.dtype


def result_of(future: Future, timeout: float = WAIT_S) -> dict[str, np.ndarray]:
    """The future's result, failing the test instead of hanging."""
    return future.result(timeout=timeout)


def run_threads(targets: list[Callable[[], None]], timeout: float = 5 * WAIT_S) -> None:
    """Run each callable in its own thread; re-raise the first failure."""
    errors: list[BaseException] = []

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported to the test below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), f"a thread did not finish within {timeout} s"
    if errors:
        raise errors[0]
