"""SERVER_PROCESSES=N: N server processes on the same ports, for more cores than one event loop uses.

`python -m server` with SERVER_PROCESSES (or `--processes`) above 1 becomes a
parent that runs N children, `python -m server` each with SERVER_PROCESSES=1
and its SERVER_PROCESS_INDEX. Every child binds the same gRPC and HTTP ports
(SO_REUSEPORT: the kernel spreads connections over them) and has its own
event loop, models and Batchers; they share nothing but Redis and storage.

- Metrics: the children write prometheus-client's multiprocess files in one
  folder (PROMETHEUS_MULTIPROC_DIR, a fresh one unless set), so whichever
  child answers a scrape of /metrics reports the requests, latencies, batches,
  tasks, webhooks and uploads of all of them. What a child reads at scrape
  time (served versions, queue depth, refused requests) is that child's.
- SIGTERM or SIGINT to the parent goes to every child (each in a session of
  its own, so a terminal's Ctrl-C reaches it once, from the parent), which
  drains as one server does; the parent exits once all have, with the first non-zero code.
  A child that dies on its own stops the others, and the parent exits 1 (a
  supervisor such as Kubernetes restarts the pod).
- Each child writes its own access log (`access.log` -> `access.0.log`, ...).
- Ports must be fixed (a port 0 would give each child another port), and the
  tasks need Redis (REDIS_ADDRESS): in-memory tasks would live in one child
  and be unknown to the others.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import multiprocess

from server.config import Settings

log = logging.getLogger("server.processes")

PROCESS_ENV = "SERVER_PROCESS_INDEX"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def check(settings: Settings) -> None:
    """Refuse settings that cannot work with several processes, naming the setting."""
    fixed = {
        "GRPC_SERVER_ADDRESS": settings.grpc_server_address,
        "HTTP_SERVER_ADDRESS": settings.http_server_address,
        "TFSERVING_REST_ADDRESS": settings.tfserving_rest_address,
        "HEALTH_SERVER_ADDRESS": settings.health_server_address,
    }
    for name, address in fixed.items():
        if address and address.rpartition(":")[2] == "0":
            raise SystemExit(f"{name}: SERVER_PROCESSES={settings.server_processes} needs a fixed port, not 0")
    if settings.model_control_mode == "explicit":
        raise SystemExit(
            f"MODEL_CONTROL_MODE=explicit: SERVER_PROCESSES={settings.server_processes} would load a model in the "
            "one process that answers the call; use one process, or poll mode"
        )
    if not settings.redis_address:
        raise SystemExit(
            f"SERVER_PROCESSES={settings.server_processes} needs REDIS_ADDRESS: in-memory tasks would be "
            "known to one process only"
        )


def child_access_log(path: str, index: int) -> str:
    """`logs/access.log` -> `logs/access.<index>.log`."""
    if not path:
        return path
    target = Path(path)
    return str(target.with_name(f"{target.stem}.{index}{target.suffix}"))


def run_children(settings: Settings, argv: Sequence[str]) -> int:
    """Run `settings.server_processes` children until a signal or until one of them exits."""
    check(settings)
    count = settings.server_processes
    metrics_dir = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="serving-metrics-")
    Path(metrics_dir).mkdir(parents=True, exist_ok=True)
    for stale in Path(metrics_dir).glob("*.db"):
        stale.unlink()
    children: list[subprocess.Popen] = []
    stopping = crashed = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # Before the children start (a signal meanwhile is forwarded once they run); each child in a
    # session of its own, so a terminal's Ctrl-C or a signal to the group reaches it once, from here.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(count):
        env = dict(os.environ, SERVER_PROCESSES="1", **{PROCESS_ENV: str(index), MULTIPROC_ENV: metrics_dir})
        env["ACCESS_LOG_PATH"] = child_access_log(settings.access_log_path, index)
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "server", *_without_processes(argv)], env=env, start_new_session=True
            )
        )
        if stopping:
            children[-1].send_signal(signal.SIGTERM)
    log.info(
        "started %d server processes (pids %s); metrics in %s",
        count,
        ", ".join(str(c.pid) for c in children),
        metrics_dir,
    )
    while True:
        codes = [child.poll() for child in children]
        if all(code is not None for code in codes):
            break
        if not stopping and any(code is not None for code in codes):
            dead = next(c for c in children if c.returncode is not None)
            log.error("server process %d exited with %s: stopping the others", dead.pid, dead.returncode)
            forward(signal.SIGTERM, None)
            crashed = True
        time.sleep(0.2)
    for child in children:  # their live gauges (calls in flight) leave the sums
        multiprocess.mark_process_dead(child.pid, metrics_dir)
    failed = [128 - code if code < 0 else code for code in codes if code]  # killed by signal n: 128 + n
    if crashed:
        return 1
    return failed[0] if failed else 0


def _without_processes(argv: Sequence[str]) -> list[str]:
    """The command line without `--processes N` (the children are one process each)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        out.append(arg)
    return out
