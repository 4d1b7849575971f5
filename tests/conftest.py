"""Shared fixtures: the real demo model, a real server subprocess, an in-process App."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import server as _tf_environment  # noqa: F401  (sets TensorFlow's environment, as the server does, before any test imports it)
from tests.support.servers import MODEL_DIR, ServerProcess

# Fixtures shared across folders (lazy: a fixture starts nothing until a test asks for it).
pytest_plugins = ["tests.support.http_fixtures", "tests.support.s3_fixtures", "tests.support.telemetry_fixtures"]

DIGITS = MODEL_DIR / "digits" / "1"


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
