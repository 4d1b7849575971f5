"""The HTTP/JSON shim: an aiohttp server in its own thread and event loop.

Routes come from the `google.api.http` annotations of every registered
service (`routes.build_routes`); each call goes through `Dispatcher.handler`,
so HTTP callers meet the same interceptors (errors, auth, logging, metrics,
tracing) and servicers as gRPC callers. Besides the RPC routes it serves:

    GET /openapi.json    OpenAPI 3 document generated from the same annotations
    GET /healthz         200 while the process runs
    GET /readyz          200 when gRPC health says SERVING for "", else 503
    GET /metrics         when a metrics function is given
    GET /files/<key>     files under `files_root`, read-only, when one is given
                         (never outside it, never a path with a part starting with ".")

Unknown paths answer 404 and known paths under another method 405, in the
same error shape as every RPC error.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Awaitable, Callable, Iterable

from aiohttp import web
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2

from server.dispatch import Dispatcher
from server.errors import NotFound, ServingError, status_of
from server.gateway.calls import CallFailed, RpcCall
from server.gateway.openapi import openapi_document
from server.gateway.responses import MethodNotAllowed, dumps, error_response, json_response
from server.gateway.routes import Router, build_routes
from server.gateway.rpc import RpcHandler, context_for

log = logging.getLogger("server.gateway")

HEALTH_CHECK_RPC = "/grpc.health.v1.Health/Check"
MetricsFunction = Callable[[], tuple[bytes, str]]


def split_address(address: str) -> tuple[str | None, int]:
    """("host" or None for every interface, port) of "host:port" / "[v6]:port"."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise SystemExit(f"HTTP_SERVER_ADDRESS: expected host:port, got {address!r}")
    host = host.strip("[]")
    return (host or None), int(port)


class HttpGateway:
    """Serves the registered services over HTTP/JSON; `start()` then `stop()`."""

    def __init__(
        self,
        address: str,
        dispatcher: Dispatcher,
        services: Iterable[str],
        *,
        max_body_bytes: int,
        max_workers: int,
        metrics: MetricsFunction | None = None,
        files_root: Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
        pool: descriptor_pool.DescriptorPool | None = None,
    ) -> None:
        self.host, self.port = split_address(address)
        self.dispatcher = dispatcher
        self.routes = build_routes(services, pool)
        self.router = Router(self.routes)
        self.openapi = dumps(openapi_document(self.routes))
        self.metrics = metrics
        self.files_root = files_root
        self.ssl_context = ssl_context
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="http")
        self.rpc = RpcHandler(dispatcher, self.executor, max_body_bytes)
        self.system: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "/openapi.json": self._openapi,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }
        if metrics is not None:
            self.system["/metrics"] = self._metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Listen (in a new thread with its own event loop); raises OSError when the port is taken."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="http-gateway", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), loop).result()
        except BaseException as exc:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            if isinstance(exc, OSError):
                raise OSError(f"cannot listen on {self.host or ''}:{self.port} (HTTP_SERVER_ADDRESS): {exc}") from exc
            raise
        self._loop, self._thread = loop, thread

    async def _open(self) -> None:
        app = web.Application()
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)  # every path, newlines included
        # handler_cancellation: a client that goes away cancels its call (the
        # context turns inactive and its callbacks run), as over gRPC.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context).start()
        self.port = self._runner.addresses[0][1]

    @property
    def address(self) -> str:
        """host:port actually bound (127.0.0.1 for a wildcard host)."""
        host = self.host if self.host not in (None, "0.0.0.0", "::") else "127.0.0.1"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight calls finish within `grace` seconds, then close."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self._close(grace), loop).result(timeout=grace + 10)
        except Exception as exc:
            log.warning("HTTP shutdown did not finish cleanly: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _close(self, grace: float) -> None:
        runner = self._runner
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            await runner.server.shutdown(grace)
        await runner.cleanup()

    # -- requests ----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            system = self.system.get(request.path)
            if system is not None or (self.files_root is not None and request.path.startswith("/files/")):
                if request.method not in ("GET", "HEAD"):
                    raise MethodNotAllowed(request.method, request.path, ("GET", "HEAD"))
                return await (system or self._file)(request)
            route, variables = self.router.match(request.method, request.rel_url.raw_path)
            return await self.rpc.handle(request, route, variables)
        except ServingError as exc:
            return error_response(exc.code, exc.message, http_status=getattr(exc, "http_status", None))
        except Exception as exc:
            code, message = status_of(exc)
            return error_response(code, message)

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")

    async def _healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "SERVING"})

    async def _readyz(self, request: web.Request) -> web.Response:
        call = RpcCall(self.dispatcher, HEALTH_CHECK_RPC, context_for(request, "GET /readyz"))
        build = partial(health_pb2.HealthCheckRequest, service="")
        try:
            reply = await asyncio.get_running_loop().run_in_executor(self.executor, call.invoke, build)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except CallFailed as failed:
            status = "SERVICE_UNKNOWN" if failed.code.name == "NOT_FOUND" else failed.code.name
        return json_response({"status": status}, 200 if status == "SERVING" else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.metrics is not None
        body, content_type = await asyncio.get_running_loop().run_in_executor(self.executor, self.metrics)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        assert self.files_root is not None
        key = request.path[len("/files/"):]
        root = self.files_root.resolve()
        try:
            target = (root / key).resolve()
            hidden = any(part.startswith(".") for part in Path(key).parts)
            found = not hidden and target.is_relative_to(root) and target.is_file()
        except (OSError, ValueError):
            found = False
        if not found:
            raise NotFound(f"no file '{key}'")
        return web.FileResponse(target)
