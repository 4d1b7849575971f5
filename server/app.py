"""Composition root: settings -> core objects -> gRPC server; signals; shutdown order.

Start-up: the gRPC server starts listening at once with health NOT_SERVING
(so probes get an answer), the models load and warm up, then health turns
SERVING. Shutdown (SIGTERM/SIGINT): health NOT_SERVING, stop accepting calls,
let in-flight calls finish within the grace period (their batches still run),
then close the batchers.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.batching import BatchingConfig
from server.config import Settings, load_settings, parse_args
from server.dispatch import Dispatcher, HandlerRegistry
from server.interceptors import ErrorInterceptor
from server.models.device import choose_device
from server.models.repository import ModelRepository
from server.predictor import Predictor
from server.services.predict import PredictServicer
from server.services.stream import StreamPredictServicer
from serving.v1 import predict_pb2, predict_pb2_grpc, stream_pb2, stream_pb2_grpc, task_pb2_grpc, upload_pb2_grpc

log = logging.getLogger("server")

PREDICT_SERVICE = predict_pb2.DESCRIPTOR.services_by_name["PredictService"].full_name
STREAM_SERVICE = stream_pb2.DESCRIPTOR.services_by_name["StreamPredictService"].full_name
# Health names: "" (and "readiness") are SERVING once every model is loaded and
# warmed up; "liveness" is SERVING while the process runs.
READY_NAMES = ("", "readiness", PREDICT_SERVICE, STREAM_SERVICE)
LIVENESS = "liveness"


class App:
    """The server process: build with settings, `start()`, then `stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        batching = BatchingConfig(
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000,
            allowed_batch_sizes=tuple(settings.allowed_batch_sizes),
            max_queue_size=settings.max_queue_size,
        )
        self.repository = ModelRepository(
            settings.model_dir,
            choose_device(settings.tf_intra_op_threads, settings.tf_inter_op_threads),
            batching,
        )
        self.predictor = Predictor(self.repository, settings.default_top_k)
        self.health = health.HealthServicer()
        self.interceptors: list[grpc.ServerInterceptor] = [ErrorInterceptor()]
        self.registry = self._register_services()
        self.dispatcher = Dispatcher(self.registry, self.interceptors)
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=settings.grpc_max_workers, thread_name_prefix="rpc"),
            interceptors=self.interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
            ],
        )
        self.registry.install(self.server)
        if settings.reflection:
            names = (*self.registry.methods, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(settings.grpc_server_address)
        if not self.port:
            raise SystemExit(f"cannot listen on {settings.grpc_server_address}")
        self.stopped = threading.Event()

    def _register_services(self) -> HandlerRegistry:
        """The API's servicers, collected once for the gRPC server and in-process dispatch."""
        registry = HandlerRegistry()
        predict_pb2_grpc.add_PredictServiceServicer_to_server(
            PredictServicer(self.predictor, self.repository), registry
        )
        stream_pb2_grpc.add_StreamPredictServiceServicer_to_server(StreamPredictServicer(self.predictor), registry)
        # Defined in the API, answered UNIMPLEMENTED until their parts exist.
        task_pb2_grpc.add_TaskServiceServicer_to_server(task_pb2_grpc.TaskServiceServicer(), registry)
        upload_pb2_grpc.add_UploadServiceServicer_to_server(upload_pb2_grpc.UploadServiceServicer(), registry)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registry)
        return registry

    @property
    def address(self) -> str:
        host = self.settings.grpc_server_address.rsplit(":", 1)[0]
        return f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '') else host}:{self.port}"

    def start(self) -> None:
        """Listen, load and warm up every model, then report SERVING."""
        self.listen()
        self.load_models()

    def listen(self) -> None:
        """Start answering calls; health is NOT_SERVING until `load_models()`."""
        for name in READY_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        self.server.start()
        log.info("gRPC listening on %s (health NOT_SERVING until the models are ready)", self.address)

    def load_models(self) -> None:
        """Load and warm up every model, then report SERVING."""
        self.repository.load_all()
        for name in READY_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("ready: %s", ", ".join(f"{m.name} v{m.version}" for m in self.repository.models()))

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown in the documented order; safe to call twice."""
        if self.stopped.is_set():
            return
        grace = self.settings.grace_period_seconds if grace is None else grace
        log.info("shutting down: health NOT_SERVING, draining in-flight calls for up to %.1fs", grace)
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.repository.close(drain=True)
        self.stopped.set()
        log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    app = App(settings)
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop_requested.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(1)
        log.info("%s received", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        app.start()
    except Exception as exc:
        log.error("start-up failed: %s", exc)
        app.stop(grace=0)
        return 1
    while not stop_requested.wait(1.0):
        pass
    app.stop()
    return 0
