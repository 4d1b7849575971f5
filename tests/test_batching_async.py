"""Tests of the Batcher's event-loop side, `await Batcher.infer()`, through its public API.

Each test runs one coroutine on a fresh event loop (`asyncio.run`), the way
the server's loop awaits the Batcher. The model is a `FakeModel` that the test
blocks and releases (tests/support/fixtures.py), so what is queued while the model is
busy is decided by the test, not by timing. Waiting for something to happen
is a poll with a deadline (`until`), never a sleep.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import numpy as np
import pytest

from server.batching import Batcher, BatchingConfig
from server.errors import DeadlineExceeded, Internal, InvalidArgument, ResourceExhausted
from tests.support.fixtures import FAIL_MARKER, WAIT_S, FakeModel, assert_own_rows, rows

pytestmark = pytest.mark.timeout(10)

MakeBatcher = Callable[..., Batcher]


@pytest.fixture
def make_batcher() -> Iterator[MakeBatcher]:
    made: list[tuple[Batcher, FakeModel]] = []

    def make(model: FakeModel, **config: Any) -> Batcher:
        batcher = Batcher(model, BatchingConfig(**config), name="fake")
        made.append((batcher, model))
        return batcher

    yield make
    for batcher, model in made:
        model.release()
        batcher.close(drain=False, timeout=WAIT_S)


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 5 * WAIT_S))


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll `predicate` on the loop (yielding to it) until true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def occupy(batcher: Batcher, model: FakeModel) -> tuple[np.ndarray, asyncio.Task]:
    """One 1-row request that the (blocked) model is running; the queue is then empty."""
    x = rows(1, 10_000.0)
    task = asyncio.ensure_future(batcher.infer({"x": x}))
    await until(model.started.is_set, "the model to start")
    model.started.clear()
    assert batcher.queue_depth == 0
    return x, task


def test_infer_returns_the_callers_rows(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model)
    x = rows(3, 0.0)

    async def scenario() -> None:
        assert_own_rows(await batcher.infer({"x": x}), x)

    run(scenario())
    assert model.batch_rows == [3]


@pytest.mark.parametrize(
    "sizes,config,batches",
    [
        ([1, 2, 3, 1, 4], {}, [1, 11]),
        # No lost wake-up between the model thread and the loop, batch after batch, with nothing else
        # arriving; a queue holding as many rows as the batch that just ran is taken by the model thread at once.
        ([1] * 6, {"max_batch_size": 2}, [1, 2, 2, 2]),
    ],
    ids=["one batch", "batch after batch"],
)
def test_requests_queued_while_the_model_runs_become_the_next_batches(
    make_batcher: MakeBatcher, sizes: list[int], config: dict, batches: list[int]
) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model, **config)

    async def scenario() -> None:
        first_x, first = await occupy(batcher, model)
        xs = [rows(n, 100.0 * (i + 1)) for i, n in enumerate(sizes)]
        tasks = [asyncio.ensure_future(batcher.infer({"x": x})) for x in xs]
        await until(lambda: batcher.queue_depth == len(xs), "every request to be queued")
        model.release()
        assert_own_rows(await first, first_x)
        for x, result in zip(xs, await asyncio.gather(*tasks), strict=True):
            assert_own_rows(result, x)

    run(scenario())
    assert model.batch_rows == batches


def test_the_model_thread_runs_batches_and_the_loop_is_never_blocked(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def scenario() -> None:
        tick = asyncio.ensure_future(ticker())
        x, task = await occupy(batcher, model)
        before = ticks
        await until(lambda: ticks > before + 10, "the loop to run while the model is busy")
        model.release()
        assert_own_rows(await task, x)
        tick.cancel()

    run(scenario())
    assert model.calls[0].thread != threading.get_ident()


def test_an_idle_model_starts_at_once_without_waiting_for_more(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch_size=64)

    async def scenario() -> None:
        for start in (0.0, 100.0, 200.0):
            x = rows(1, start)
            began = time.monotonic()
            assert_own_rows(await batcher.infer({"x": x}), x)
            assert time.monotonic() - began < 0.5

    run(scenario())
    assert model.batch_rows == [1, 1, 1]


def test_full_queue_refuses_at_once(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model, max_queue_size=2)

    async def scenario() -> None:
        _, first = await occupy(batcher, model)
        queued = [asyncio.ensure_future(batcher.infer({"x": rows(1, 100.0 + i)})) for i in range(2)]
        await until(lambda: batcher.queue_depth == 2, "two queued requests")
        with pytest.raises(ResourceExhausted, match="queue is full"):
            await batcher.infer({"x": rows(1, 900.0)})
        model.release()
        await asyncio.gather(first, *queued)

    run(scenario())
    assert batcher.stats.rejected == 1


def test_too_many_rows_are_refused_before_queueing(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(FakeModel(), max_batch_size=4)

    async def scenario() -> None:
        with pytest.raises(InvalidArgument, match="exceed max_batch_size 4"):
            await batcher.infer({"x": rows(5, 0.0)})

    run(scenario())
    assert batcher.queue_depth == 0


def test_a_request_whose_deadline_passes_while_queued_is_answered_and_never_run(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    late_x = rows(1, 500.0)

    async def scenario() -> None:
        first_x, first = await occupy(batcher, model)
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await batcher.infer({"x": late_x}, deadline=time.monotonic() + 0.05)
        assert time.monotonic() - began < 0.5  # answered at its deadline, while the model is still busy
        model.release()
        assert_own_rows(await first, first_x)
        await until(lambda: batcher.queue_depth == 0, "the queue to empty")

    run(scenario())
    seen = {float(v) for call in model.calls for v in call.inputs["x"].ravel()}
    assert seen.isdisjoint(late_x.ravel().tolist())
    assert model.batch_rows == [1]
    assert batcher.stats.expired == 1


def test_a_cancelled_caller_is_dropped_before_its_batch_runs(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    gone_x, kept_x = rows(1, 100.0), rows(2, 200.0)

    async def scenario() -> None:
        first_x, first = await occupy(batcher, model)
        gone = asyncio.ensure_future(batcher.infer({"x": gone_x}))
        kept = asyncio.ensure_future(batcher.infer({"x": kept_x}))
        await until(lambda: batcher.queue_depth == 2, "two queued requests")
        gone.cancel()  # what grpc.aio does to a handler whose client went away
        with pytest.raises(asyncio.CancelledError):
            await gone
        model.release()
        assert_own_rows(await first, first_x)
        assert_own_rows(await kept, kept_x)

    run(scenario())
    assert model.batch_rows == [1, 2]
    seen = {float(v) for call in model.calls for v in call.inputs["x"].ravel()}
    assert seen.isdisjoint(gone_x.ravel().tolist())


def test_a_failing_request_fails_alone(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    good = [rows(1, 100.0), rows(2, 200.0)]
    bad = np.full((1, 3), FAIL_MARKER)

    async def scenario() -> None:
        first_x, first = await occupy(batcher, model)
        tasks = [asyncio.ensure_future(batcher.infer({"x": x})) for x in (good[0], bad, good[1])]
        await until(lambda: batcher.queue_depth == 3, "three queued requests")
        model.release()
        assert_own_rows(await first, first_x)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert_own_rows(outcomes[0], good[0])  # type: ignore[arg-type]  # rows here; outcomes[1] is the error
        assert isinstance(outcomes[1], Internal) and "fail marker" in str(outcomes[1])
        assert_own_rows(outcomes[2], good[1])  # type: ignore[arg-type]

    run(scenario())
    assert model.batch_rows == [1, 4, 1, 1, 2]  # the merged batch failed; each request then ran alone


def test_loop_callers_and_threads_share_batches(make_batcher: MakeBatcher) -> None:
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    loop_x, thread_x = rows(2, 100.0), rows(3, 200.0)

    async def scenario() -> None:
        first_x, first = await occupy(batcher, model)
        from_thread = batcher.submit({"x": thread_x})
        from_loop = asyncio.ensure_future(batcher.infer({"x": loop_x}))
        await until(lambda: batcher.queue_depth == 2, "two queued requests")
        model.release()
        assert_own_rows(await first, first_x)
        assert_own_rows(await from_loop, loop_x)
        assert_own_rows(from_thread.result(WAIT_S), thread_x)

    run(scenario())
    assert model.batch_rows == [1, 5]


def test_requests_ready_in_one_loop_turn_go_to_the_model_as_one_batch(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model)
    xs = [rows(1, 100.0 * i) for i in range(5)]

    async def scenario() -> None:
        results = await asyncio.gather(*(batcher.infer({"x": x}) for x in xs))  # five requests in one turn
        for x, result in zip(xs, results, strict=True):
            assert_own_rows(result, x)

    run(scenario())
    assert model.batch_rows == [5]
    assert all(call.thread != threading.get_ident() for call in model.calls)


class CallsBackAfterItsFirstCall(FakeModel):
    """Schedules `after_first` on `loop` when its first call returns, before the Batcher answers it."""

    loop: asyncio.AbstractEventLoop
    after_first: Callable[[], None]

    def __call__(self, inputs: Any) -> Any:
        outputs = super().__call__(inputs)
        if len(self.calls) == 1:
            self.loop.call_soon_threadsafe(self.after_first)
        return outputs


def test_requests_queued_as_a_batch_is_answered_join_the_next_one(make_batcher: MakeBatcher) -> None:
    """When fewer rows queued than the batch that just ran had, the answer of that batch, not the model
    thread, starts the next one: a request the loop takes in just before the answers (after the model
    returned) joins what queued while the model ran."""
    model = CallsBackAfterItsFirstCall(blocked=True)
    batcher = make_batcher(model)
    late = rows(2, 500.0)
    late_task: list[asyncio.Future] = []

    async def scenario() -> None:
        model.loop = asyncio.get_running_loop()
        model.after_first = lambda: late_task.append(asyncio.ensure_future(batcher.infer({"x": late})))
        first_x = rows(3, 10_000.0)  # more rows than queue behind it: the next batch waits for the answers' turn
        first = asyncio.ensure_future(batcher.infer({"x": first_x}))
        await until(model.started.is_set, "the model to start")
        queued_x = rows(1, 100.0)
        queued = asyncio.ensure_future(batcher.infer({"x": queued_x}))
        await until(lambda: batcher.queue_depth == 1, "a request queued while the model runs")
        model.release()
        assert_own_rows(await first, first_x)
        assert_own_rows(await queued, queued_x)
        assert_own_rows(await late_task[0], late)

    run(scenario())
    assert model.batch_rows == [3, 3]


def test_thread_callers_do_not_wait_for_a_loop_turn(make_batcher: MakeBatcher) -> None:
    model = FakeModel()
    batcher = make_batcher(model)
    xs = [rows(1, 100.0 * i) for i in range(3)]
    for x in xs:  # no event loop anywhere: each is taken by the model thread at once
        assert_own_rows(batcher.submit({"x": x}).result(WAIT_S), x)
    assert model.batch_rows == [1, 1, 1]


def test_close_waits_for_a_batch_run_in_a_callers_thread_and_returns(make_batcher: MakeBatcher) -> None:
    """`run()` on an idle model runs in its caller's thread; `close()` meanwhile returns once it is done."""
    model = FakeModel(blocked=True)
    batcher = make_batcher(model)
    x = rows(2, 0.0)
    results: list[dict] = []
    caller = threading.Thread(target=lambda: results.append(batcher.run({"x": x})))
    caller.start()
    model.wait_started()
    closing = threading.Thread(target=batcher.close)
    closing.start()
    model.release()
    caller.join(WAIT_S)
    closing.join(WAIT_S)
    assert not closing.is_alive(), "close() never returned"
    assert_own_rows(results[0], x)
    assert model.calls[0].thread == caller.ident
