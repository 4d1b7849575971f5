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
                         (never outside it, never a path with a part starting with ".";
                         with API keys configured, only for a caller with a valid key)
    /v2/...              the Open Inference Protocol's REST API, when enabled
                         (server/protocols/inference_v2/rest.py)

Unknown paths answer 404 and known paths under another method 405, in the
same error shape as every RPC error.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import cast

from aiohttp import web
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2

from server.dispatch import Dispatcher
from server.errors import NotFound, ServingError, Unauthenticated, status_of
from server.http.calls import CallFailed, RpcCall
from server.http.context import metadata_from_headers
from server.http.listener import LoopServer
from server.http.openapi import openapi_document
from server.http.responses import MethodNotAllowed, dumps, error_response, json_response
from server.http.routes import Router, build_routes
from server.http.rpc import Admits, RpcHandler, context_for
from server.protocols.inference_v2.rest import InferenceV2Rest

log = logging.getLogger("server.http")

HEALTH_CHECK_RPC = "/grpc.health.v1.Health/Check"
FILES_PATH = "/files/"  # asked of the authenticator like a method: never exempt
FILES_KEY = "a valid API key is needed for /files: send the header 'Authorization: Bearer <key>'"
MetricsFunction = Callable[[], tuple[bytes, str]]


class HttpGateway(LoopServer):
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
        admits: Admits | None = None,
        inference_v2: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(address, "HTTP_SERVER_ADDRESS", "http-gateway", ssl_context, loop)
        self.dispatcher = dispatcher
        self.routes = build_routes(services, pool)
        self.router = Router(self.routes)
        self.openapi = dumps(openapi_document(self.routes))
        self.metrics = metrics
        self.files_root = files_root
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="http")
        self.rpc = RpcHandler(dispatcher, self.executor, max_body_bytes, admits)
        # The Open Inference Protocol's REST API under /v2 (its paths are not the API's annotations)
        self.inference_v2 = InferenceV2Rest(dispatcher, self.executor, max_body_bytes, admits) if inference_v2 else None
        self.system: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "/openapi.json": self._openapi,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }
        if metrics is not None:
            self.system["/metrics"] = self._metrics

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)  # every path, newlines included
        return app

    def stopped(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- requests ----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            system = self.system.get(request.path)
            if system is not None or (self.files_root is not None and request.path.startswith("/files/")):
                if request.method not in ("GET", "HEAD"):
                    raise MethodNotAllowed(request.method, request.path, ("GET", "HEAD"))
                return await (system or self._file)(request)
            if self.inference_v2 is not None and (request.path == "/v2" or request.path.startswith("/v2/")):
                return await self.inference_v2.handle(request)
            route, variables = self.router.match(request.method, request.rel_url.raw_path)
            return await self.rpc.handle(request, route, variables)
        except ServingError as exc:
            return error_response(
                exc.code,
                exc.message,
                http_status=getattr(exc, "http_status", None),
                headers=getattr(exc, "http_headers", None),
            )
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
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(
                cast(health_pb2.HealthCheckResponse, reply).status
            )
        except CallFailed as failed:
            status = "SERVICE_UNKNOWN" if failed.code.name == "NOT_FOUND" else failed.code.name
        return json_response({"status": status}, 200 if status == "SERVING" else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.metrics is not None
        body, content_type = await asyncio.get_running_loop().run_in_executor(self.executor, self.metrics)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        assert self.files_root is not None
        if not self.rpc.admits(FILES_PATH, metadata_from_headers(request.headers)):
            raise Unauthenticated(FILES_KEY)
        key = request.path[len("/files/") :]
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
