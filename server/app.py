"""Composition root: settings -> core objects -> servers on one event loop; signals; shutdown order.

One asyncio event loop (in its own thread, "event-loop") serves the grpc.aio
server and every HTTP listener. Servicer methods that are coroutines run on it
and await the model's Batcher; plain ones (Redis, object storage, watches) run
in the bounded "rpc" pool (server/threaded.py); models run on their own
threads. The process's main thread only starts, waits for a signal and stops.

Start-up: the gRPC server starts listening at once with health NOT_SERVING
(so probes get an answer), the models load and warm up, then health turns
SERVING. Shutdown (SIGTERM/SIGINT): health NOT_SERVING, stop accepting calls,
let in-flight calls finish within the grace period (their batches still run),
then close the batchers; last, flush the access log and the spans.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from inference import open_inference_pb2_grpc
from server.batching import BatchingConfig
from server.config import Settings, load_settings, parse_args
from server.dispatch import Dispatcher, GrpcHandlers, HandlerRegistry, InterceptorChain
from server.health import HealthServicer
from server.http.gateway import HttpGateway
from server.interceptors import ErrorInterceptor
from server.models.device import choose_device
from server.models.repository import ModelRepository
from server.predictor import Predictor
from server.processes import run_children
from server.protocols.inference_v2.rest import REST_INFER_RPC, rest_infer_handler
from server.protocols.inference_v2.servicer import InferenceV2Servicer
from server.protocols.serving_v1.predict import PredictServicer
from server.protocols.serving_v1.stream import StreamPredictServicer
from server.protocols.serving_v1.tasks import TaskServicer
from server.protocols.serving_v1.upload import UploadServicer
from server.protocols.serving_v1.uploads import Uploads
from server.protocols.tfserving.rest import REST_PREDICT_RPC, TFServingRest, rest_predict_handler
from server.protocols.tfserving.servicer import TFServingModelServicer, TFServingPredictionServicer
from server.security.tls import grpc_server_credentials, load_tls, server_ssl_context
from server.storage.factory import open_object_store
from server.tasks.system import open_tasks
from server.telemetry.telemetry import Telemetry
from serving.v1 import predict_pb2, predict_pb2_grpc, stream_pb2, stream_pb2_grpc, task_pb2_grpc, upload_pb2_grpc

MIN_RETIRE_SECONDS = 1.0  # a replaced model version stays loaded at least this long for calls holding it
STOP_MARGIN_SECONDS = 5.0  # how long past the grace period the gRPC server may take to stop
# The process is gone at most this long after the grace period, whatever grpcio or a stuck call does: the
# stop's own bounded steps (draining 2 x STOP_MARGIN_SECONDS past the grace, task workers 15 s, the loop 5 s)
# fit in it.
EXIT_MARGIN_SECONDS = 40.0
T = TypeVar("T")

log = logging.getLogger("server")

PREDICT_SERVICE = predict_pb2.DESCRIPTOR.services_by_name["PredictService"].full_name
STREAM_SERVICE = stream_pb2.DESCRIPTOR.services_by_name["StreamPredictService"].full_name
# Health names: "" (and "readiness") are SERVING once every model is loaded and
# warmed up; "liveness" is SERVING while the process runs.
READY_NAMES = ("", "readiness", PREDICT_SERVICE, STREAM_SERVICE)
LIVENESS = "liveness"


class App:
    """The server process: build with settings, `start()`, then `stop()`."""

    def __init__(self, settings: Settings, mode: str = "serve") -> None:
        self.settings = settings
        # "worker": only queue workers and gRPC health (python -m server worker)
        self.worker_mode = mode == "worker"
        self.telemetry = Telemetry(settings)
        batching = BatchingConfig(
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000,
            allowed_batch_sizes=tuple(settings.allowed_batch_sizes),
            max_queue_size=settings.max_queue_size,
            observer=self.telemetry.batch_observer,
        )
        self.repository = ModelRepository(
            settings.model_dir,
            choose_device(settings.tf_intra_op_threads, settings.tf_inter_op_threads),
            batching,
            poll_seconds=settings.model_poll_seconds if settings.model_control_mode == "poll" else 0.0,
            retire_seconds=max(settings.grace_period_seconds, MIN_RETIRE_SECONDS),
            strict=settings.model_load_strict,
            control=settings.model_control_mode or "none",
            startup=tuple(settings.startup_models),
        )
        self.object_store = open_object_store(settings)
        self.predictor = Predictor(self.repository, settings.default_top_k, self.object_store)
        self.tasks = open_tasks(
            settings,
            self.predictor,
            self.object_store,
            self.worker_mode,
            self.telemetry.tracing,
            self.telemetry.metrics,
        )
        self.telemetry.metrics.watch_task_queue_length(self.tasks.queue.length)
        self.health = HealthServicer()
        self.telemetry.watch_models(self.repository.models)
        # Outermost first: tracing, access log + metrics, auth (telemetry), then errors.
        self.interceptors: list[grpc.ServerInterceptor] = [*self.telemetry.interceptors, ErrorInterceptor()]
        self.registry = self._register_services()
        self.dispatcher = Dispatcher(self.registry, self.interceptors)
        self.grpc_only = HandlerRegistry()  # what only gRPC serves: the in-process dispatcher never reaches it
        if settings.reflection:
            names = (*self.registry.services, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.grpc_only.as_server())
        self.executor = ThreadPoolExecutor(max_workers=settings.grpc_max_workers, thread_name_prefix="rpc")
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="event-loop", daemon=True)
        self._loop_thread.start()
        self.tls = load_tls(settings)
        # gRPC listens from the moment a port is added: one of several processes sharing the ports
        # (SERVER_PROCESSES) adds it in `listen()`, once its models are loaded.
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.health_server: grpc.Server | None = None
        self.health_port = 0
        if settings.server_process_index < 0:
            self._bind()
        self.gateway = self._http_gateway()
        self.tfserving = self._tfserving_rest()
        for listener in (self.gateway, self.tfserving):
            if listener is not None:
                listener.reuse_port = settings.server_process_index >= 0
        self.stopping = threading.Event()
        self.stopped = threading.Event()

    def _bind(self) -> None:
        """Make the gRPC servers and add their ports (they take connections from then on)."""
        self.server, self.port = self.on_loop(self._grpc_server())
        if not self.port:
            raise SystemExit(f"cannot listen on {self.settings.grpc_server_address}")
        self.health_server, self.health_port = self._health_only_server(self.settings.health_server_address)

    async def _grpc_server(self) -> tuple[grpc.aio.Server, int]:
        """The grpc.aio server (made on the loop it runs on) and the port it bound."""
        settings = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
            ],
        )
        # Its own chain: composed over what gRPC serves (reflection too, no in-process-only methods).
        chain = InterceptorChain(self.interceptors)
        server.add_generic_rpc_handlers((GrpcHandlers((self.registry, self.grpc_only), chain, self.executor),))
        address = settings.grpc_server_address
        try:
            port = (
                server.add_secure_port(address, grpc_server_credentials(self.tls))
                if self.tls is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError:  # grpc.aio raises where the threaded server returned 0
            port = 0
        return server, port

    def on_loop(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the App's event loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def _http_gateway(self) -> HttpGateway | None:
        """The HTTP/JSON shim over the same dispatcher (None when HTTP_SERVER_ADDRESS is empty)."""
        settings = self.settings
        if not settings.http_server_address:
            return None
        return HttpGateway(
            settings.http_server_address,
            self.dispatcher,
            self.registry.services,
            max_body_bytes=settings.max_http_body_bytes or settings.max_message_bytes,
            max_workers=settings.http_max_workers,
            metrics=self.telemetry.metrics.exposition,
            files_root=None if settings.aws_bucket else settings.upload_dir,
            ssl_context=server_ssl_context(settings),
            admits=self.telemetry.authenticator.admits,
            inference_v2=settings.inference_v2,
            loop=self.loop,
        )

    def _tfserving_rest(self) -> TFServingRest | None:
        """TensorFlow Serving's REST API over the same dispatcher (None when TFSERVING_REST_ADDRESS is empty)."""
        settings = self.settings
        if not settings.tfserving_rest_address or self.worker_mode:
            return None
        return TFServingRest(
            settings.tfserving_rest_address,
            self.dispatcher,
            max_body_bytes=settings.max_http_body_bytes or settings.max_message_bytes,
            max_workers=settings.http_max_workers,
            ssl_context=server_ssl_context(settings),
            admits=self.telemetry.authenticator.admits,
            loop=self.loop,
        )

    def _health_only_server(self, address: str) -> tuple[grpc.Server | None, int]:
        """A plaintext server answering only grpc.health.v1, for probes that cannot speak TLS."""
        if not address:
            return None, 0
        server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="health"))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        port = server.add_insecure_port(address)
        if not port:
            raise SystemExit(f"cannot listen on {address} (HEALTH_SERVER_ADDRESS)")
        return server, port

    def _register_services(self) -> HandlerRegistry:
        """The API's servicers, collected once for the gRPC server and in-process dispatch."""
        registry = HandlerRegistry()
        if self.worker_mode:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, registry.as_server())
            return registry
        predict_pb2_grpc.add_PredictServiceServicer_to_server(
            PredictServicer(self.predictor, self.repository, self.tasks.predictions), registry
        )
        stream_pb2_grpc.add_StreamPredictServiceServicer_to_server(StreamPredictServicer(self.predictor), registry)
        if self.settings.tfserving_rest_address:
            registry.add_in_process(REST_PREDICT_RPC, rest_predict_handler(self.predictor))
        if self.settings.tfserving_grpc:
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
                TFServingPredictionServicer(self.predictor, self.repository, self.settings.max_message_bytes), registry
            )
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(TFServingModelServicer(self.repository), registry)
        if self.settings.inference_v2:
            open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceV2Servicer(self.predictor, self.repository, self.ready), registry
            )
            registry.add_in_process(REST_INFER_RPC, rest_infer_handler(self.predictor))
        task_pb2_grpc.add_TaskServiceServicer_to_server(TaskServicer(self.tasks.manager, self.tasks.exports), registry)
        tracing = self.telemetry.tracing
        # Files sent with a task_id join its `files`; an `upload` span when tracing is on.
        uploads = Uploads(
            self.object_store,
            self.tasks.store,
            tracing.tracer if tracing.enabled else None,
            self.telemetry.metrics.uploaded,
        )
        upload_pb2_grpc.add_UploadServiceServicer_to_server(UploadServicer(uploads), registry)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registry.as_server())
        return registry

    @property
    def address(self) -> str:
        host = self.settings.grpc_server_address.rsplit(":", 1)[0]
        return f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '') else host}:{self.port}"

    @property
    def http_address(self) -> str | None:
        """host:port of the HTTP shim once listening (None without one)."""
        return self.gateway.address if self.gateway is not None else None

    def ready(self) -> bool:
        """Every model is loaded and warmed up, and the server is not shutting down (health SERVING)."""
        return self.repository.ready.is_set() and not self.stopping.is_set()

    def start(self) -> None:
        """Listen, load and warm up every model, then report SERVING.

        One of several processes on shared ports (SERVER_PROCESSES) loads its
        models first and listens only then: the kernel would hand a process
        that is still loading its share of the connections.
        """
        if self.settings.server_process_index >= 0:
            self.repository.load_all()
            self.listen()
        else:
            self.listen()
        self.load_models()

    def listen(self) -> None:
        """Start answering calls; health is NOT_SERVING until `load_models()`."""
        for name in READY_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        if self.server is None:
            self._bind()
        assert self.server is not None
        self.on_loop(self.server.start())
        if self.health_server is not None:
            self.health_server.start()
        if self.gateway is not None:
            self.gateway.start()
            log.info("HTTP/JSON shim listening on %s", self.gateway.bound)
        if self.tfserving is not None:
            self.tfserving.start()
            log.info("TensorFlow Serving REST API listening on %s", self.tfserving.bound)
        if not self.settings.http_server_address and self.settings.server_process_index <= 0:
            self.telemetry.serve_metrics()  # one process of several: the files hold every process's values
        host = self.settings.grpc_server_address.rsplit(":", 1)[0] or "0.0.0.0"
        log.info("gRPC listening on %s:%d (health NOT_SERVING until the models are ready)", host, self.port)

    def load_models(self) -> None:
        """Load and warm up every model (unless loaded), then report SERVING."""
        if not self.repository.ready.is_set():
            self.repository.load_all()
        for name in READY_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "ready: %s",
            ", ".join(f"{m.name} v{m.version}" for m in self.repository.models())
            or f"no models loaded yet (MODEL_CONTROL_MODE={self.repository.control})",
        )
        self.repository.start_polling()
        self.tasks.start_workers()

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown in the documented order; safe to call twice."""
        if self.stopped.is_set():
            return
        grace = self.settings.grace_period_seconds if grace is None else grace
        self.stopping.set()
        log.info("shutting down: health NOT_SERVING, draining in-flight calls for up to %.1fs", grace)
        self.health.enter_graceful_shutdown()
        try:
            self.on_loop(self._drain(grace), timeout=grace + 2 * STOP_MARGIN_SECONDS)
        except Exception as exc:
            log.warning("draining did not finish cleanly: %r", exc)
        self.tasks.stop()
        self.repository.close(drain=True)
        self.object_store.close()
        self.telemetry.close()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(STOP_MARGIN_SECONDS)
        if not self._loop_thread.is_alive():
            self.loop.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.stopped.set()
        log.info("stopped")

    async def _drain(self, grace: float) -> None:
        """Stop accepting calls; gRPC and the HTTP listeners drain side by side within one grace period."""
        listeners = [listener for listener in (self.gateway, self.tfserving) if listener is not None]
        stopping = [listener.close(grace) for listener in listeners]
        if self.server is not None:
            stopping.append(asyncio.wait_for(self.server.stop(grace), grace + STOP_MARGIN_SECONDS))
        outcomes = await asyncio.gather(*stopping, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.warning("a listener did not stop cleanly: %r", outcome)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings(args)
    index = settings.server_process_index
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s " + (f"[{index}] " if index >= 0 else "") + "%(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings.server_processes > 1 and args.mode == "serve":
        return run_children(settings, sys.argv[1:] if argv is None else argv)
    app = App(settings, args.mode)
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
    return stop_and_exit(app)


def stop_and_exit(app: App) -> int:
    """`app.stop()` (which flushes the access log and the spans), then make sure the process ends: a
    watchdog exits it GRACE_PERIOD_SECONDS + EXIT_MARGIN_SECONDS after the signal if the stop hangs, and
    threads still running after it (a call stuck in a worker thread; Python would wait for them at exit
    forever) do not keep it alive."""
    limit = app.settings.grace_period_seconds + EXIT_MARGIN_SECONDS
    watchdog = threading.Timer(limit, _exit_now, args=(f"shutdown still running after {limit:g}s; exiting", 1))
    watchdog.daemon = True
    watchdog.start()
    app.stop()
    deadline = time.monotonic() + STOP_MARGIN_SECONDS
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [
        t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon and t.is_alive()
    ]
    if stuck:
        _exit_now(f"threads still running after the shutdown ({', '.join(sorted(set(stuck)))}); exiting", 0)
    return 0


def _exit_now(why: str, code: int) -> None:
    log.warning(why)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
