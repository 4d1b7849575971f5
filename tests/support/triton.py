"""Running Triton's own clients (tests/support/triton_clients.py) from a test, in a process of their own:
tritonclient's messages define the same protobuf names as the server's stubs, and one process's
descriptor pool cannot hold both."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.support.servers import ROOT


def run(command: str, *args: str) -> dict[str, Any]:
    """What both of Triton's clients saw for `command` (infer, load-unload, config, stats)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.triton_clients", command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer
