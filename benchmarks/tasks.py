"""Task benchmark: PredictAsync submissions/s and completed tasks/s, against sync Predict.

    .venv/bin/python -m benchmarks.tasks [--concurrency 8] [--tasks 400] [--duration 5]

For each task store (in memory; a redis-server started on a free loopback
port) and worker count, one `python -m server` subprocess serves the digits
model. From this process, `concurrency` threads then

1. call Predict (one row each) for `duration` seconds: sync predictions/s;
2. call PredictAsync (one row each) for `tasks` tasks: submissions/s;
3. wait until every task is finished: completed tasks/s, from the first
   submission to the last finish time recorded in the tasks.

Prints a Markdown table for docs/benchmarks.md. Only loopback is targeted.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from serving.v1 import predict_pb2, predict_pb2_grpc, task_pb2, task_pb2_grpc
from tests.support.redis_servers import RedisServer
from tests.support.servers import ServerProcess, wait_for
from tests.support.task_helpers import digits_request


def run_threads(concurrency: int, work: Callable[[], None]) -> None:
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(work) for _ in range(concurrency)]:
            future.result()


def sync_rate(channel: grpc.Channel, concurrency: int, duration: float) -> float:
    stub = predict_pb2_grpc.PredictServiceStub(channel)
    request = digits_request(rows=1)
    for _ in range(20):
        stub.Predict(request, timeout=10)
    done = [0] * concurrency
    index = iter(range(concurrency))
    end = time.monotonic() + duration

    def work() -> None:
        n = next(index)
        while time.monotonic() < end:
            stub.Predict(request, timeout=10)
            done[n] += 1

    run_threads(concurrency, work)
    return sum(done) / duration


def async_rates(channel: grpc.Channel, concurrency: int, tasks: int) -> tuple[float, float]:
    """(submissions/s, completed tasks/s)."""
    predict = predict_pb2_grpc.PredictServiceStub(channel)
    store = task_pb2_grpc.TaskServiceStub(channel)
    request = predict_pb2.PredictAsyncRequest(request=digits_request(rows=1))
    left = iter(range(tasks))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            predict.PredictAsync(request, timeout=10)

    started = time.time()
    run_threads(concurrency, work)
    submit_s = time.time() - started
    unfinished = task_pb2.TaskFilter(statuses=[task_pb2.TASK_STATUS_QUEUED, task_pb2.TASK_STATUS_RUNNING])
    wait_for(
        lambda: not store.ListTasks(task_pb2.ListTasksRequest(filter=unfinished, page_size=1), timeout=30).tasks,
        600,
        "every task to finish",
        interval=0.2,
    )
    finished = task_pb2.TaskFilter(statuses=[task_pb2.TASK_STATUS_SUCCEEDED])
    last, token, count = 0.0, "", 0
    while True:
        page = store.ListTasks(task_pb2.ListTasksRequest(filter=finished, page_size=1000, page_token=token), timeout=30)
        count += len(page.tasks)
        last = max([last] + [t.finish_time.ToNanoseconds() / 1e9 for t in page.tasks])
        token = page.next_page_token
        if not token:
            break
    assert count == tasks, f"{count} of {tasks} tasks succeeded"
    store.DeleteTasks(task_pb2.DeleteTasksRequest(all=True), timeout=60)
    return tasks / submit_s, tasks / (last - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--workers", default="2,8", help="TASK_WORKERS values to compare")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        redis_server = RedisServer(Path(folder) / "redis")
        try:
            for backend, address in (("memory", ""), ("redis", redis_server.address)):
                for workers in [int(w) for w in args.workers.split(",")]:
                    env = {
                        "REDIS_ADDRESS": address,
                        "TASK_WORKERS": str(workers),
                        "HTTP_SERVER_ADDRESS": "",
                        "METRICS_ADDRESS": "",
                        "UPLOAD_DIR": str(Path(folder) / "uploads"),
                        "LOG_LEVEL": "WARNING",
                    }
                    server = ServerProcess(Path(folder) / f"server-{backend}-{workers}.log", env=env)
                    try:
                        server.wait_serving()
                        with grpc.insecure_channel(server.target) as channel:
                            sync = sync_rate(channel, args.concurrency, args.duration)
                            submitted, completed = async_rates(channel, args.concurrency, args.tasks)
                    finally:
                        server.stop()
                    rows.append((backend, workers, sync, submitted, completed))
        finally:
            redis_server.stop()
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"concurrency {args.concurrency}, {args.tasks} tasks of one row, digits model\n"
    )
    print("| task store | TASK_WORKERS | sync Predict/s | PredictAsync submissions/s | completed tasks/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for backend, workers, sync, submitted, completed in rows:
        print(f"| {backend} | {workers} | {sync:.0f} | {submitted:.0f} | {completed:.0f} |")


if __name__ == "__main__":
    main()
