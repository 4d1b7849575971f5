"""Answering an HTTP request with an RPC: unary JSON, NDJSON streams, multipart forms.

The loop only reads bodies and writes answers; transcoding and the servicer
run in a worker thread (`calls.RpcCall`). A deadline from the headers bounds
the wait: past it the call is answered DEADLINE_EXCEEDED (504) and its
context stops being active. Server-streaming answers are NDJSON, one
`{"result": ...}` per message written as it comes, and `{"error": status}`
last on failure; a call that fails before its first message is answered
with the plain error shape and status instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from functools import partial
from typing import TypeVar, cast

import grpc
from aiohttp import web
from google.protobuf.message import Message

from server.dispatch import Dispatcher
from server.errors import InvalidArgument
from server.http import multipart
from server.http.bodies import feed_lines, read_body
from server.http.calls import CallFailed, End, FromLoop, RequestStream, RpcCall, ToLoop
from server.http.context import HttpServicerContext, metadata_from_headers, peer_of, timeout_from_headers
from server.http.responses import JSON, NDJSON, error_response
from server.http.routes import Route
from server.http.transcode import build_request, error_line, parse_stream_line
from server.metadata import Metadata
from serving.v1 import model_pb2, predict_pb2, upload_pb2

GET_MODEL_RPC = "/serving.v1.PredictService/GetModel"
Build = Callable[[], "Message | RequestStream"]
T = TypeVar("T")
# (full method name, metadata) -> whether the caller may be read from (auth off, method exempt, or a valid key)
Admits = Callable[[str, Metadata], bool]


def context_for(request: web.Request, route: str) -> HttpServicerContext:
    """The servicer context of an HTTP request: metadata, peer and deadline from it."""
    peername = request.transport.get_extra_info("peername") if request.transport is not None else None
    return HttpServicerContext(
        metadata_from_headers(request.headers), peer_of(peername), timeout_from_headers(request.headers), route
    )


def failure_response(failed: CallFailed, context: HttpServicerContext) -> web.Response:
    return error_response(
        failed.code, failed.message, http_status=failed.http_status, headers=context.response_headers()
    )


class RpcHandler:
    """Serves the routes' RPCs through the dispatcher, in the worker pool."""

    def __init__(
        self, dispatcher: Dispatcher, executor: Executor, max_body_bytes: int, admits: Admits | None = None
    ) -> None:
        self.dispatcher = dispatcher
        self.executor = executor
        self.max_body_bytes = max_body_bytes
        self.admits = admits or admit_all

    async def handle(self, request: web.Request, route: Route, variables: dict[str, str]) -> web.StreamResponse:
        context = context_for(request, f"{route.http_method} {route.template.template}")
        call = RpcCall(self.dispatcher, route.rpc, context, route.response_body)
        feeder: Awaitable[None] | None = None
        build: Build
        loop = asyncio.get_running_loop()
        if not self.admits(route.rpc, context.invocation_metadata()):
            # No valid key: the body is never read; the call still goes through the interceptors,
            # which answer UNAUTHENTICATED and log it.
            build = partial(unread_request, route, loop)
        elif request.content_type == multipart.MULTIPART:
            if route.rpc == multipart.PREDICT_RPC:
                form = await multipart.read_form(request, self.max_body_bytes)
                build = partial(multipart.predict_request, form, variables, self._model_metadata(context))
            elif route.rpc == multipart.UPLOAD_RPC:
                uploads: FromLoop[upload_pb2.UploadRequest] = FromLoop(loop)
                feeder = multipart.feed_upload(request, uploads)
                build = partial(RequestStream, uploads, _as_is)
            else:
                raise InvalidArgument(
                    f"{route.rpc}: multipart forms are accepted only by Predict and Upload; send JSON"
                )
        elif route.client_streaming:
            lines: FromLoop[bytes] = FromLoop(loop)
            feeder = feed_lines(request.content, lines, self.max_body_bytes)
            build = partial(RequestStream, lines, partial(parse_stream_line, route, variables=variables))
        else:
            body = await read_body(request, self.max_body_bytes) if route.body else b""
            query = list(request.query.items())
            build = partial(build_request, route, body, query, variables)
        feeding = asyncio.ensure_future(feeder) if feeder is not None else None
        try:
            if route.server_streaming:
                return await self._streaming(request, call, build)
            return await self._unary(call, build)
        finally:
            if feeding is not None and not feeding.done():
                feeding.cancel()

    def _model_metadata(self, context: HttpServicerContext) -> Callable[[str, int], model_pb2.ModelMetadata]:
        """GetModel through the interceptors, with the caller's metadata (for multipart Predict)."""

        def lookup(model: str, version: int) -> model_pb2.ModelMetadata:
            lookup_context = HttpServicerContext(
                context.invocation_metadata(), context.peer(), context.time_remaining(), context.route
            )
            call = RpcCall(self.dispatcher, GET_MODEL_RPC, lookup_context)
            reply = call.invoke(partial(predict_pb2.GetModelRequest, model=model, version=version))
            return cast(predict_pb2.GetModelResponse, reply).model

        return lookup

    async def _unary(self, call: RpcCall, build: Build) -> web.Response:
        try:
            body = await in_pool(self.executor, call, call.run_unary, build)
        except CallFailed as failed:
            return failure_response(failed, call.context)
        return web.Response(body=body, content_type=JSON, headers=call.context.response_headers())

    async def _next(self, sink: ToLoop, context: HttpServicerContext) -> bytes | End:
        remaining = context.time_remaining()
        if remaining is None:
            return await sink.get()
        try:
            return await asyncio.wait_for(sink.get(), remaining)
        except TimeoutError:
            context.end_early(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            sink.abandon()
            return End(CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"))

    async def _streaming(self, request: web.Request, call: RpcCall, build: Build) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        sink = ToLoop(loop)
        loop.run_in_executor(self.executor, call.run_streaming, build, sink).add_done_callback(retrieve_outcome)
        response: web.StreamResponse | None = None
        try:
            while not isinstance(item := await self._next(sink, call.context), End):
                if response is None:
                    response = await self._open(request, call.context)
                await response.write(item)
            if item.error is not None:
                failed = item.error if isinstance(item.error, CallFailed) else CallFailed.of(item.error)
                if response is None:
                    return failure_response(failed, call.context)
                await response.write(error_line(failed.code, failed.message))
            if response is None:
                response = await self._open(request, call.context)
            await response.write_eof()
            return response
        except ConnectionError:
            call.context.cancel()
            sink.abandon()
            return response or web.Response(status=499, reason="Client Closed Request")
        except asyncio.CancelledError:
            call.context.cancel()
            sink.abandon()
            raise

    @staticmethod
    async def _open(request: web.Request, context: HttpServicerContext) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": NDJSON, **context.response_headers()})
        await response.prepare(request)
        return response


async def in_pool(executor: Executor, call: RpcCall, run: Callable[[Build], T], build: Build) -> T:
    """`run(build)` (`call.invoke` or `call.run_unary`) in the pool, or on the loop when the method is
    a coroutine, bounded by the call's deadline (CallFailed DEADLINE_EXCEEDED after it); a client that
    goes away cancels the call."""
    remaining = call.context.time_remaining()
    awaited: Awaitable[T]
    handler = call.loop_handler()
    if handler is not None:
        # `run` is call.run_unary (T: bytes) or call.invoke (T: Message); its coroutine twin gives the same.
        coroutine = cast(
            Awaitable[T],
            call.run_unary_async(handler, build) if run == call.run_unary else call.invoke_async(handler, build),
        )
        # A deadline cancels the coroutine (the Batcher drops what has not run); so does a client gone.
        awaited = coroutine if remaining is None else asyncio.wait_for(coroutine, remaining)
    else:
        future = asyncio.get_running_loop().run_in_executor(executor, run, build)
        future.add_done_callback(retrieve_outcome)
        awaited = future if remaining is None else asyncio.wait_for(asyncio.shield(future), remaining)
    try:
        return await awaited
    except TimeoutError:
        call.context.end_early(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        raise CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
    except asyncio.CancelledError:
        call.context.cancel()
        raise


def admit_all(method: str, metadata: Metadata) -> bool:
    return True


def unread_request(route: Route, loop: asyncio.AbstractEventLoop) -> Message | RequestStream:
    """The request of a call whose body is not read: empty (an empty stream for client streams)."""
    if not route.client_streaming:
        return route.new_request()
    empty: FromLoop[Message] = FromLoop(loop)
    empty.end()
    return RequestStream(empty, _as_is)


def _as_is(message: Message, number: int) -> Message:
    """Request messages that need no parsing (multipart uploads)."""
    return message


def retrieve_outcome(future: asyncio.Future) -> None:
    """Consume a worker's outcome nobody awaits any more (after a deadline or a disconnect)."""
    if not future.cancelled():
        future.exception()
