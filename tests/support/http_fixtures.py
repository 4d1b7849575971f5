"""Fixtures of the HTTP shim tests: the real App with its shim, and a shim over scripted servicers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from grpc_health.v1 import health, health_pb2_grpc

from server.dispatch import Dispatcher, HandlerRegistry
from server.http.gateway import HttpGateway
from server.interceptors import ErrorInterceptor
from serving.v1 import task_pb2_grpc, upload_pb2_grpc

if TYPE_CHECKING:
    from server.app import App  # imported by the fixture itself, when a test asks for it
from tests.support.scripted import CountingUploads, ScriptedTasks
from tests.support.servers import MODEL_DIR

SCRIPTED_BODY_LIMIT = 64 * 1024


@dataclass
class Served:
    """The real App (demo models, in-memory tasks, local files) and its shim's base URL."""

    app: App
    url: str
    upload_dir: Path
    access_log: Path


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from server.app import App
    from server.config import Settings

    root = tmp_path_factory.mktemp("gateway-app")
    settings = Settings(
        _env_file=None,
        grpc_server_address="127.0.0.1:0",
        http_server_address="127.0.0.1:0",
        model_dir=MODEL_DIR,
        upload_dir=root / "uploads",
        access_log_path=str(root / "access.log"),
        metrics_address="",
        max_http_body_bytes=4 * 1024 * 1024,
    )
    app = App(settings)
    try:
        app.start()
        yield Served(app, f"http://{app.http_address}", root / "uploads", root / "access.log")
    finally:
        app.stop(grace=1)


@dataclass
class Scripted:
    """A shim over scripted Task and Upload servicers (and health), without models."""

    url: str
    tasks: ScriptedTasks
    uploads: CountingUploads
    health: health.HealthServicer
    gateway: HttpGateway


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    tasks, uploads, health_servicer = ScriptedTasks(), CountingUploads(), health.HealthServicer()
    registry = HandlerRegistry()
    task_pb2_grpc.add_TaskServiceServicer_to_server(tasks, registry)
    upload_pb2_grpc.add_UploadServiceServicer_to_server(uploads, registry)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registry.as_server())
    gateway = HttpGateway(
        "127.0.0.1:0",
        Dispatcher(registry, [ErrorInterceptor()]),
        registry.methods,
        max_body_bytes=SCRIPTED_BODY_LIMIT,
        max_workers=8,
    )
    gateway.start()
    try:
        yield Scripted(f"http://{gateway.address}", tasks, uploads, health_servicer, gateway)
    finally:
        tasks.proceed.set()
        uploads.hold.set()
        gateway.stop(grace=1)
