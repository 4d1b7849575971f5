"""Tests of `server.batching.Batcher` through its public API only.

The model is a `FakeModel` (tests/support/fixtures.py). To build a queue
deterministically a test starts the fake blocked, submits one request and waits
until the fake is running it (`occupy`): everything submitted afterwards stays
queued until the test calls `model.release()`. No test sleeps to synchronise;
the only clock waits are in the tests of deadlines and of `max_batch_delay_s`,
where time passing is the behaviour under test.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest

from server.batching import Batcher, BatchingConfig
from server.errors import DeadlineExceeded, Internal, InvalidArgument, ResourceExhausted, Unavailable
from tests.support.fixtures import (
    FAIL_MARKER,
    WAIT_S,
    FakeModel,
    assert_own_rows,
    result_of,
    rows,
    run_threads,
)

pytestmark = pytest.mark.timeout(10)

NAME = "fake"
MakeBatcher = Callable[..., Batcher]


@pytest.fixture
def make_batcher() -> Iterator[MakeBatcher]:
    """`make_batcher(model, **config)`; every batcher is released and closed afterwards."""
    made: list[tuple[Batcher, FakeModel]] = []

    def make(model: FakeModel, **config: Any) -> Batcher:
        batcher = Batcher(model, BatchingConfig(**config), name=NAME)
        made.append((batcher, model))
        return batcher

    yield make
    for batcher, model in made:
        model.release()
        batcher.close(drain=False, timeout=WAIT_S)


def occupy(batcher: Batcher, model: FakeModel, start: float = 10_000.0) -> tuple[np.ndarray, Future]:
    """Submit one 1-row request and wait until the (blocked) model runs it.

    Afterwards the queue is empty and the model is busy until `model.release()`.
    """
    x = rows(1, start)
    future = batcher.submit({"x": x})
    model.wait_started()
    assert batcher.queue_depth == 0
    return x, future


def wait_until_past(deadline: float) -> None:
    """Block until time.monotonic() is past `deadline` (the clock is what is tested)."""
    clock = threading.Event()
    while time.monotonic() <= deadline:
        clock.wait(deadline - time.monotonic() + 0.001)


def values_of(*arrays: np.ndarray) -> set[float]:
    return {float(v) for a in arrays for v in a.ravel()}


# -- single requests ----------------------------------------------------------


def test_single_request_returns_its_rows(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model)
    x = rows(3, 1.0)

    assert_own_rows(result_of(batcher.submit({"x": x})), x)
    assert_own_rows(batcher.run({"x": x}, deadline=time.monotonic() + WAIT_S), x)
    assert_own_rows(batcher.run({"x": x}), x)

    assert model.batch_rows == [3, 3, 3]
    np.testing.assert_array_equal(model.calls[0].inputs["x"], x)
    assert batcher.stats.batches == 3
    assert batcher.stats.rows == 9
    assert batcher.stats.batch_sizes == collections.Counter({3: 3})
    assert batcher.stats.padded_rows == 0
    assert batcher.queue_depth == 0


# -- merging ---------------------------------------------------------------


@pytest.mark.parametrize("row_counts", [[1] * 8, [1, 2, 3, 1, 2, 3]], ids=["8x1-row", "1-2-3-rows"])
def test_queued_requests_from_threads_run_as_one_batch(make_batcher: MakeBatcher, row_counts: list[int]) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    first_x, first = occupy(batcher, model)

    inputs = [rows(n, 100.0 * (i + 1)) for i, n in enumerate(row_counts)]
    futures: dict[int, Future] = {}

    def submitter(i: int) -> Callable[[], None]:
        def submit() -> None:
            futures[i] = batcher.submit({"x": inputs[i]})

        return submit

    run_threads([submitter(i) for i in range(len(inputs))])
    assert batcher.queue_depth == len(inputs)
    model.release()

    assert_own_rows(result_of(first), first_x)
    for i, x in enumerate(inputs):
        assert_own_rows(result_of(futures[i]), x)
    total = sum(row_counts)
    assert model.batch_rows == [1, total]
    assert batcher.stats.batch_sizes == collections.Counter({1: 1, total: 1})
    assert batcher.stats.batches == 2
    assert batcher.stats.rows == 1 + total
    # The second call saw exactly the queued rows (in some order), nothing else.
    assert values_of(model.calls[1].inputs["x"]) == values_of(*inputs)


def test_max_batch_size_caps_a_batch(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model, max_batch_size=4)
    first_x, first = occupy(batcher, model)

    inputs = [rows(2, 100.0), rows(2, 200.0), rows(2, 300.0)]
    futures = [batcher.submit({"x": x}) for x in inputs]
    model.release()

    assert_own_rows(result_of(first), first_x)
    for future, x in zip(futures, inputs, strict=True):
        assert_own_rows(result_of(future), x)
    assert model.batch_rows == [1, 4, 2]
    assert batcher.stats.batch_sizes == collections.Counter({1: 1, 4: 1, 2: 1})
    assert max(model.batch_rows) <= 4


def test_request_larger_than_max_batch_size_is_rejected(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch_size=4)

    with pytest.raises(InvalidArgument, match="max_batch_size 4") as caught:
        batcher.submit({"x": rows(5, 1.0)})
    assert "5 rows" in caught.value.message
    with pytest.raises(InvalidArgument, match="max_batch_size"):
        batcher.run({"x": rows(5, 1.0)})

    assert model.calls == []
    assert batcher.stats.batches == 0
    assert batcher.queue_depth == 0
    # Exactly max_batch_size rows is fine.
    x = rows(4, 1.0)
    assert_own_rows(batcher.run({"x": x}), x)


# -- padding -----------------------------------------------------------------


def test_allowed_batch_sizes_pad_a_single_request(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch_size=8, allowed_batch_sizes=(2, 4, 8))

    x = rows(3, 1.0)
    assert_own_rows(batcher.run({"x": x}), x)
    assert model.batch_rows == [4]
    seen = model.calls[0].inputs["x"]
    np.testing.assert_array_equal(seen[:3], x)
    np.testing.assert_array_equal(seen[3], x[-1])  # padded by repeating the last row
    assert batcher.stats.padded_rows == 1
    assert batcher.stats.rows == 3
    assert batcher.stats.batch_sizes == collections.Counter({3: 1})

    exact = rows(4, 100.0)  # an allowed size is not padded
    assert_own_rows(batcher.run({"x": exact}), exact)
    assert model.batch_rows == [4, 4]
    assert batcher.stats.padded_rows == 1


def test_allowed_batch_sizes_pad_a_merged_batch(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model, max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    first_x, first = occupy(batcher, model)  # 1 row, padded to 2

    inputs = [rows(1, 100.0), rows(2, 200.0), rows(2, 300.0)]  # 5 rows, padded to 8
    futures = [batcher.submit({"x": x}) for x in inputs]
    model.release()

    assert_own_rows(result_of(first), first_x)
    for future, x in zip(futures, inputs, strict=True):
        assert_own_rows(result_of(future), x)
    assert model.batch_rows == [2, 8]
    assert batcher.stats.padded_rows == 1 + 3
    assert batcher.stats.rows == 1 + 5
    assert batcher.stats.batch_sizes == collections.Counter({1: 1, 5: 1})


# -- the bounded queue -----------------------------------------------------------


class Refusals:
    """A BatchObserver that keeps the refusals it hears of."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, str]] = []

    def request_queued(self) -> None:
        return None

    def batch_done(self, observation: object) -> None:
        pass

    def request_refused(self, model: str, reason: str) -> None:
        self.heard.append((model, reason))


def test_full_queue_rejects_at_once(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    refusals = Refusals()
    batcher = make_batcher(model, max_queue_size=2, observer=refusals)
    first_x, first = occupy(batcher, model)

    inputs = [rows(1, 100.0), rows(1, 200.0)]
    futures = [batcher.submit({"x": x}) for x in inputs]
    assert batcher.queue_depth == 2

    started = time.monotonic()
    with pytest.raises(ResourceExhausted, match="queue is full"):
        batcher.submit({"x": rows(1, 300.0)})
    assert time.monotonic() - started < 0.5
    assert batcher.stats.rejected == 1
    assert batcher.queue_depth == 2

    model.release()
    assert_own_rows(result_of(first), first_x)
    for future, x in zip(futures, inputs, strict=True):
        assert_own_rows(result_of(future), x)
    assert 300.0 not in model.seen_values()
    assert model.batch_rows == [1, 2]
    assert batcher.stats.rejected == 1
    assert refusals.heard == [(NAME, "rejected")]


# -- deadlines -----------------------------------------------------------------


def test_request_expiring_while_queued_is_dropped(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    refusals = Refusals()
    batcher = make_batcher(model, observer=refusals)
    first_x, first = occupy(batcher, model)

    late_x, kept_x = rows(1, 100.0), rows(1, 200.0)
    deadline = time.monotonic() + 0.05
    late = batcher.submit({"x": late_x}, deadline=deadline)
    kept = batcher.submit({"x": kept_x}, deadline=time.monotonic() + 10 * WAIT_S)
    wait_until_past(deadline)
    model.release()

    with pytest.raises(DeadlineExceeded, match="deadline passed while queued"):
        result_of(late)
    assert_own_rows(result_of(first), first_x)
    assert_own_rows(result_of(kept), kept_x)
    assert values_of(late_x).isdisjoint(model.seen_values())
    assert model.batch_rows == [1, 1]
    assert batcher.stats.expired == 1
    assert refusals.heard == [(NAME, "expired")]


def test_run_with_short_deadline_raises_deadline_exceeded(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    first_x, first = occupy(batcher, model)

    late_x = rows(1, 100.0)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="deadline exceeded"):
        batcher.run({"x": late_x}, deadline=started + 0.05)
    assert 0.04 <= time.monotonic() - started < 1.0

    model.release()
    assert_own_rows(result_of(first), first_x)
    x = rows(1, 200.0)  # the batcher still works and never runs the abandoned request
    assert_own_rows(batcher.run({"x": x}), x)
    assert values_of(late_x).isdisjoint(model.seen_values())
    assert model.batch_rows == [1, 1]


# -- failures -------------------------------------------------------------------


def test_failing_request_fails_alone(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    first_x, first = occupy(batcher, model)

    good_a, good_c = rows(1, 100.0), rows(3, 300.0)
    bad = rows(2, 200.0)
    bad[1, 0] = FAIL_MARKER
    futures = [batcher.submit({"x": x}) for x in (good_a, bad, good_c)]
    model.release()

    assert_own_rows(result_of(first), first_x)
    assert_own_rows(result_of(futures[0]), good_a)
    assert_own_rows(result_of(futures[2]), good_c)
    with pytest.raises(Internal) as caught:
        result_of(futures[1])
    assert caught.value.message == f"model '{NAME}' failed: row contains the fail marker {FAIL_MARKER}"
    # The merged batch failed, then each of its requests ran alone.
    assert model.batch_rows == [1, 6, 1, 2, 3]
    assert batcher.stats.batch_sizes == collections.Counter({1: 2, 3: 1})
    stats = batcher.stats  # what the model statistics report: the failed merged call is no execution
    assert (stats.succeeded, stats.failed, stats.rows, stats.batches) == (3, 1, 5, 3)
    assert stats.failed_ns > 0 and sorted(stats.batch_ns) == [1, 3] and stats.batch_ns[1][0] == 2


def test_single_failing_request_gets_internal(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model)
    bad = np.full((1, 3), FAIL_MARKER)

    with pytest.raises(Internal, match="fail marker"):
        batcher.run({"x": bad})
    assert model.batch_rows == [1]
    assert batcher.stats.batches == 0
    x = rows(2, 1.0)
    assert_own_rows(batcher.run({"x": x}), x)


# -- shapes --------------------------------------------------------------------


def test_different_shapes_are_not_merged(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    first_x, first = occupy(batcher, model)

    inputs = [
        rows(1, 100.0, width=3),
        rows(1, 200.0, width=4),
        rows(2, 300.0, width=3),
        rows(1, 400.0, width=4),
        rows(1, 500.0, width=3, dtype=np.float32),  # same shape, other dtype
    ]
    futures = [batcher.submit({"x": x}) for x in inputs]
    model.release()

    assert_own_rows(result_of(first), first_x)
    for future, x in zip(futures, inputs, strict=True):
        assert_own_rows(result_of(future), x)
    assert model.batch_rows == [1, 3, 2, 1]
    merged = [call.inputs["x"] for call in model.calls[1:]]
    assert [(m.shape, m.dtype) for m in merged] == [  # type: ignore[comparison-overlap]  # a dtype equals its type
        ((3, 3), np.float64),
        ((2, 4), np.float64),
        ((1, 3), np.float32),
    ]
    assert values_of(merged[0]) == values_of(inputs[0], inputs[2])
    assert values_of(merged[1]) == values_of(inputs[1], inputs[3])


# -- max_batch_delay_s -----------------------------------------------------------


def test_batch_delay_holds_a_batch_open(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch_delay_s=0.5)

    a, b = rows(1, 1.0), rows(1, 100.0)
    started = time.monotonic()
    futures = [batcher.submit({"x": a}), batcher.submit({"x": b})]
    assert_own_rows(result_of(futures[0]), a)
    assert_own_rows(result_of(futures[1]), b)
    elapsed = time.monotonic() - started

    assert model.batch_rows == [2]
    assert batcher.stats.batch_sizes == collections.Counter({2: 1})
    assert 0.45 <= elapsed < 1.5


def test_full_batch_runs_without_waiting_for_the_delay(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch_size=2, max_batch_delay_s=1.0)

    a, b = rows(1, 1.0), rows(1, 100.0)
    started = time.monotonic()
    futures = [batcher.submit({"x": a}), batcher.submit({"x": b})]
    assert_own_rows(result_of(futures[0]), a)
    assert_own_rows(result_of(futures[1]), b)
    assert time.monotonic() - started < 0.5
    assert model.batch_rows == [2]

    c = rows(2, 200.0)  # one request of max_batch_size rows runs at once too
    started = time.monotonic()
    assert_own_rows(batcher.run({"x": c}), c)
    assert time.monotonic() - started < 0.5
    assert model.batch_rows == [2, 2]


# -- cancellation -------------------------------------------------------------


def test_cancelled_request_is_not_run(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    first_x, first = occupy(batcher, model)

    gone_x, kept_x = rows(1, 100.0), rows(2, 200.0)
    gone = batcher.submit({"x": gone_x})
    kept = batcher.submit({"x": kept_x})
    assert gone.cancel()
    model.release()

    assert_own_rows(result_of(first), first_x)
    assert_own_rows(result_of(kept), kept_x)
    assert gone.cancelled()
    assert values_of(gone_x).isdisjoint(model.seen_values())
    assert model.batch_rows == [1, 2]


def test_cancelled_head_of_queue_does_not_block_other_shapes(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    first_x, first = occupy(batcher, model)

    gone_x, other_x = rows(1, 100.0, width=3), rows(1, 200.0, width=4)
    gone = batcher.submit({"x": gone_x})
    other = batcher.submit({"x": other_x})
    assert gone.cancel()
    model.release()

    assert_own_rows(result_of(first), first_x)
    assert_own_rows(result_of(other), other_x)
    assert values_of(gone_x).isdisjoint(model.seen_values())
    assert model.batch_rows == [1, 1]


# -- close ---------------------------------------------------------------------


def test_close_with_drain_runs_what_is_queued(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    first_x, first = occupy(batcher, model)
    inputs = [rows(1, 100.0), rows(2, 200.0)]
    futures = [batcher.submit({"x": x}) for x in inputs]

    batcher.close(drain=True, timeout=0)  # stop taking requests; don't wait for the busy model
    with pytest.raises(Unavailable, match="shutting down"):
        batcher.submit({"x": rows(1, 300.0)})
    assert not any(f.done() for f in futures)

    model.release()
    assert_own_rows(result_of(first), first_x)
    for future, x in zip(futures, inputs, strict=True):
        assert_own_rows(result_of(future), x)
    batcher.close(timeout=WAIT_S)
    assert model.batch_rows == [1, 3]
    assert batcher.queue_depth == 0
    with pytest.raises(Unavailable):
        batcher.run({"x": rows(1, 400.0)})


def test_close_without_drain_fails_queued_requests(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    first_x, first = occupy(batcher, model)
    queued_x = [rows(1, 100.0), rows(2, 200.0)]
    futures = [batcher.submit({"x": x}) for x in queued_x]

    batcher.close(drain=False, timeout=0)
    for future in futures:
        assert future.done()
        with pytest.raises(Unavailable, match="unloaded"):
            future.result(timeout=0)
    assert batcher.queue_depth == 0
    with pytest.raises(Unavailable):
        batcher.submit({"x": rows(1, 300.0)})

    model.release()  # the batch already running still completes
    assert_own_rows(result_of(first), first_x)
    batcher.close(timeout=WAIT_S)
    assert model.batch_rows == [1]
    assert values_of(*queued_x).isdisjoint(model.seen_values())


# -- concurrency -----------------------------------------------------------------


def test_random_concurrent_requests_get_their_own_rows(make_batcher: MakeBatcher) -> None:
    threads, per_thread = 16, 30
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    # Every thread submits its first request, then waits here with the main
    # thread; only then is the model released, so at least one batch merges
    # several requests.
    all_submitted = threading.Barrier(threads + 1, timeout=5 * WAIT_S)
    sent_rows = [0] * threads

    def client(seed: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(seed)
            nprng = np.random.default_rng(seed)

            def make_input() -> np.ndarray:
                n = rng.randint(1, 4)
                sent_rows[seed] += n
                # Integers as floats: sums are exact whatever the batch layout.
                return nprng.integers(-(10**6), 10**6, size=(n, 3)).astype(np.float64)

            x = make_input()
            future = batcher.submit({"x": x})
            all_submitted.wait()
            assert_own_rows(result_of(future, 5 * WAIT_S), x)
            for _ in range(per_thread - 1):
                x = make_input()
                assert_own_rows(batcher.run({"x": x}, deadline=time.monotonic() + 5 * WAIT_S), x)

        return run

    def release_when_all_submitted() -> None:
        all_submitted.wait()
        model.release()

    waiter = threading.Thread(target=release_when_all_submitted, daemon=True)
    waiter.start()
    run_threads([client(seed) for seed in range(threads)], timeout=8 * WAIT_S)
    waiter.join(WAIT_S)

    stats = batcher.stats
    total_rows = sum(sent_rows)
    assert stats.rows == total_rows
    assert sum(size * count for size, count in stats.batch_sizes.items()) == total_rows
    assert stats.batches == sum(stats.batch_sizes.values()) == len(model.calls)
    assert stats.batches < threads * per_thread
    # One batch held at least half of the 16 first requests: more rows than any one request.
    assert max(stats.batch_sizes) > 4
    assert stats.expired == stats.rejected == stats.padded_rows == 0


def test_run_on_an_idle_model_executes_in_the_calling_thread(make_batcher):
    model = FakeModel()
    model.release()
    batcher = make_batcher(model, max_batch_size=8)
    x = rows(2, 1.0)
    assert_own_rows(batcher.run({"x": x}), x)
    assert model.calls[0].thread == threading.get_ident()


def test_run_on_a_busy_model_is_queued_and_batched(make_batcher):
    model = FakeModel(blocked=True)
    batcher = make_batcher(model, max_batch_size=8)
    _, first = occupy(batcher, model)
    results: dict[int, dict[str, np.ndarray]] = {}
    inputs = {i: rows(1, 100.0 * (i + 1)) for i in range(3)}

    def caller(i: int) -> Callable[[], None]:
        return lambda: results.__setitem__(i, batcher.run({"x": inputs[i]}, time.monotonic() + WAIT_S))

    threads = [threading.Thread(target=caller(i)) for i in range(3)]
    for t in threads:
        t.start()
    wait_for_queue(batcher, 3)
    model.release()
    for t in threads:
        t.join(WAIT_S)
    result_of(first)
    assert model.batch_rows == [1, 3]
    assert model.calls[1].thread != threading.get_ident()
    for i, x in inputs.items():
        assert_own_rows(results[i], x)


def wait_for_queue(batcher: Batcher, depth: int) -> None:
    """Poll (with a deadline) until `depth` requests are queued."""
    deadline = time.monotonic() + WAIT_S
    while batcher.queue_depth < depth:
        assert time.monotonic() < deadline, f"queue depth {batcher.queue_depth}, expected {depth}"
        time.sleep(0.001)
