"""The `fake_server` fixture: a real in-process gRPC server with fake services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_serving import FakeServer, start_fake_server


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A fake serving backend on a free loopback port, stopped after the test."""
    server, fake = start_fake_server()
    try:
        yield fake
    finally:
        server.stop(grace=None)
