"""The client package stands alone: importing it runs no server code and no TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # a fresh interpreter: this process has imported the server already


def test_importing_the_client_imports_neither_the_server_nor_tensorflow() -> None:
    probe = (
        "import sys, client, client.cli, client.bench; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'server', 'tensorflow', 'keras'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
