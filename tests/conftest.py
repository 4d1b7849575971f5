"""Shared fixtures: the real demo model, a real server subprocess, an in-process App; the test lanes.

A test that starts a process, listens on a port or starts a gRPC server is an integration test and
says so (`pytestmark = pytest.mark.integration` in its module, or the mark on the test); `make
test-unit` runs the others. The guard below fails an unmarked test that starts one, so the fast
lane stays fast and the marks stay true.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import numpy as np
import pytest

import server as _tf_environment  # noqa: F401  (sets TensorFlow's environment, as the server does, before any test imports it)
from tests.support.servers import MODEL_DIR, ServerProcess

# Fixtures shared across folders (lazy: a fixture starts nothing until a test asks for it).
pytest_plugins = ["tests.support.http_fixtures", "tests.support.s3_fixtures", "tests.support.telemetry_fixtures"]

DIGITS = MODEL_DIR / "digits" / "1"


@contextlib.contextmanager
def _no_servers(item: pytest.Item) -> Iterator[None]:
    """Outside `integration`, starting a process, listening on a port or making a gRPC server fails
    (in the test and in every fixture it sets up, session-scoped ones included)."""
    if item.get_closest_marker("integration"):
        yield
        return

    def refuse(what: str) -> Any:
        def refused(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"{item.nodeid} {what}: mark it, or its module, pytest.mark.integration")

        return refused

    with (
        mock.patch.object(subprocess.Popen, "__init__", refuse("starts a process")),
        mock.patch.object(socket.socket, "listen", refuse("listens on a port")),
        mock.patch.object(grpc, "server", refuse("starts a gRPC server")),
        mock.patch.object(grpc.aio, "server", refuse("starts a gRPC server")),
    ):
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _no_servers(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _no_servers(item):
        return (yield)


@pytest.fixture(scope="session")
def digits_reference():
    """The demo model's own serving signature, loaded straight from disk."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(DIGITS)).signatures["serving_default"]

    def run(x: np.ndarray) -> np.ndarray:
        return signature(image=tf.constant(x))["probabilities"].numpy()

    return run


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `python -m server` subprocess for the session."""
    proc = ServerProcess(tmp_path_factory.mktemp("server") / "server.log")
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


def digits_rows(n: int, seed: int = 0) -> np.ndarray:
    """n random digit-shaped rows in [0, 1]."""
    return np.random.default_rng(seed).random((n, 8, 8, 1), dtype=np.float32)


@pytest.fixture
def start_app():
    """Start in-process Apps (a real gRPC server on a free loopback port) from settings; stopped after.

    With `models=False` only `listen()` runs: the models are not loaded (health stays NOT_SERVING).
    """
    from server.app import App

    apps = []

    def start(settings, models: bool = False):
        app = App(settings)
        apps.append(app)
        if models:
            app.start()
        else:
            app.listen()
        return app

    yield start
    for app in apps:
        app.stop(grace=1)


@pytest.fixture
def make_app(tmp_path: Path, start_app):
    """`start_app` with test settings: free ports, an access log in tmp_path, the demo models."""
    from server.config import Settings

    made = 0

    def make(listen_only: bool = False, **overrides):
        nonlocal made
        overrides.setdefault("http_server_address", "127.0.0.1:0")  # the HTTP shim on a free port
        overrides.setdefault("access_log_path", str(tmp_path / f"access-{made}.log"))
        overrides.setdefault("model_dir", MODEL_DIR)
        made += 1
        settings = Settings(_env_file=None, grpc_server_address="127.0.0.1:0", **overrides)
        return start_app(settings, models=not listen_only)

    return make
