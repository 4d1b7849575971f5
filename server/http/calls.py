"""Running an RPC for an HTTP request, in a worker thread, through the interceptor chain.

The event loop never runs a servicer: an `RpcCall` job runs in the gateway's
bounded thread pool, with the handler found by `Dispatcher.handler` (the same
interceptors and servicers as gRPC). Messages cross between the loop and the
worker thread through two bounded channels:

- `ToLoop`: responses of a streaming RPC, one NDJSON line each, from the worker
  to the loop (the worker waits while the client is slow to read);
- `FromLoop`: request messages (or raw NDJSON lines) of a client-streaming RPC,
  from the loop that reads the body to the servicer's request iterator (the
  loop stops reading the body while the servicer is slow to consume).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, cast

import grpc
from google.protobuf.message import Message

from server.dispatch import Dispatcher
from server.errors import Cancelled, ServingError, Unimplemented, status_of
from server.http.context import HttpServicerContext, RpcAborted
from server.http.responses import dumps
from server.http.transcode import message_json, result_line
from server.telemetry.calls import Behavior, is_async

T = TypeVar("T")


class CallFailed(ServingError):
    """The final status of a failed call (with the HTTP status when HTTP has its own)."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status

    @classmethod
    def of(cls, error: ServingError) -> CallFailed:
        return cls(error.code, error.message, getattr(error, "http_status", None))


class RequestStreamBroken(ServingError, grpc.RpcError):  # type: ignore[misc]  # grpc.RpcError has no code() at run time
    """The request stream ended badly: a malformed line, a line over the limit, the client gone.

    Raised from the servicer's request iterator; it is a `grpc.RpcError`, as
    grpc raises when a request stream breaks, and carries the cause's code.
    """

    def __init__(self, cause: ServingError) -> None:
        super().__init__(cause.message)
        self.code = cause.code
        self.cause = cause


class End:
    """The last item of a channel: the end of the stream, or why it broke."""

    def __init__(self, error: ServingError | None = None) -> None:
        self.error = error


class ToLoop:
    """Bounded worker-thread -> event-loop channel of response lines."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = 16) -> None:
        self._loop = loop
        self._size = size
        self._queue: asyncio.Queue[bytes | End] = asyncio.Queue()
        self._slots = threading.Semaphore(size)
        self._abandoned = False

    def put(self, line: bytes) -> None:
        """Worker side: wait for room, then hand the line to the loop."""
        self._slots.acquire()
        if self._abandoned or not self._send(line):
            raise Cancelled("the HTTP client went away")

    def end(self, error: ServingError | None = None) -> None:
        """Worker side: the stream is over (needs no room)."""
        self._send(End(error))

    def _send(self, item: bytes | End) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the gateway stopped
            self._abandoned = True
            return False
        return True

    async def get(self) -> bytes | End:
        """Loop side: the next line or the end."""
        item = await self._queue.get()
        if not isinstance(item, End):
            self._slots.release()
        return item

    def abandon(self) -> None:
        """Loop side: nobody reads any more; wake and fail the worker."""
        self._abandoned = True
        self._slots.release(self._size)


class FromLoop(Generic[T]):
    """Bounded event-loop -> worker-thread channel; the worker side is an iterator."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = 8) -> None:
        self._loop = loop
        self._items: queue.SimpleQueue[T | End] = queue.SimpleQueue()
        self._space = asyncio.Semaphore(size)
        self._ended: End | None = None

    async def put(self, item: T) -> None:
        """Loop side: wait for room, then queue the item."""
        await self._space.acquire()
        self._items.put(item)

    def end(self, error: ServingError | None = None) -> None:
        """Loop side: no more items (error: the stream broke). Later calls change nothing."""
        self._items.put(End(error))

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._ended is None:
            item = self._items.get()
            if not isinstance(item, End):
                try:  # noqa: SIM105 (per streamed item: cheaper than entering contextlib.suppress)
                    self._loop.call_soon_threadsafe(self._space.release)
                except RuntimeError:
                    pass  # the loop is closed; nothing waits for room any more
                return item
            self._ended = item
        if self._ended.error is not None:
            raise self._ended.error
        raise StopIteration


class RequestStream(Generic[T]):
    """The servicer's request iterator: items from a `FromLoop`, parsed one by one.

    A parse error or a broken body is kept in `error` and raised to the
    servicer as `RequestStreamBroken`.
    """

    def __init__(self, source: FromLoop[T], parse: Callable[[T, int], Message]) -> None:
        self.source = source
        self.parse = parse
        self.error: ServingError | None = None

    def __iter__(self) -> Iterator[Message]:
        number = 0
        try:
            for item in self.source:
                number += 1
                yield self.parse(item, number)
        except ServingError as exc:
            self.error = exc
            raise RequestStreamBroken(exc) from None


class RpcCall:
    """One RPC invoked for an HTTP request; `invoke` and the `run_*` methods run in a worker thread."""

    def __init__(self, dispatcher: Dispatcher, rpc: str, context: HttpServicerContext, response_body: str = "") -> None:
        self.dispatcher = dispatcher
        self.rpc = rpc
        self.context = context
        self.response_body = response_body

    def handler(self) -> grpc.RpcMethodHandler:
        handler = self.dispatcher.handler(self.rpc, self.context.invocation_metadata())
        if handler is None:
            raise Unimplemented(f"method {self.rpc} is not served here")
        return handler

    def failure(self, exc: BaseException | None, requests: RequestStream | None = None) -> CallFailed | None:
        """Why the call failed (None: it succeeded).

        A broken request stream comes first, then a code the servicer set on
        the context (abort, set_code, or the call ended early), then the
        exception.
        """
        if requests is not None and requests.error is not None:
            return CallFailed.of(requests.error)
        code = self.context.code()
        if code is not None and code != grpc.StatusCode.OK:
            return CallFailed(code, self.context.details() or code.name.lower().replace("_", " "))
        if exc is None:
            return None
        if isinstance(exc, RpcAborted):
            return CallFailed(exc.code, exc.details)
        if isinstance(exc, RequestStreamBroken):
            return CallFailed.of(exc.cause)
        if isinstance(exc, ServingError):
            return CallFailed.of(exc)
        return CallFailed(*status_of(exc))

    def failure_or_deadline(
        self, exc: BaseException | None, requests: RequestStream | None = None
    ) -> CallFailed | None:
        """`failure`, and DEADLINE_EXCEEDED for a stream that ended cleanly once its deadline had passed: a
        servicer that stops when the call turns inactive (WatchTask) ends because of the deadline, and
        a gRPC client would see DEADLINE_EXCEEDED then too."""
        failed = self.failure(exc, requests)
        if failed is None and self.context.time_remaining() == 0:
            return CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        return failed

    def invoke(self, build: Callable[[], Message | RequestStream]) -> Message:
        """unary -> unary or stream -> unary: the response, or CallFailed."""
        exc: Exception | None = None
        requests: RequestStream | None = None
        response: Message | None = None
        try:
            request = build()
            handler = self.handler()
            if isinstance(request, RequestStream):
                requests = request
                response = cast(Behavior, handler.stream_unary)(iter(request), self.context)
            else:
                response = cast(Behavior, handler.unary_unary)(request, self.context)
        except Exception as error:
            exc = error
        finally:
            self.context.finish()
        failed = self.failure(exc, requests)
        if failed is not None:
            raise failed
        assert response is not None
        return response

    def run_unary(self, build: Callable[[], Message | RequestStream]) -> bytes:
        """`invoke`, then the JSON body of the response."""
        return dumps(message_json(self.invoke(build), self.response_body))

    def loop_handler(self) -> grpc.RpcMethodHandler | None:
        """The method's handler when its behavior is a coroutine (run on the event loop, not in a
        worker thread); None otherwise."""
        handler = self.dispatcher.handler(self.rpc, self.context.invocation_metadata())
        if handler is None or handler.request_streaming or not is_async(handler.unary_unary):
            return None
        return handler

    async def invoke_async(
        self, handler: grpc.RpcMethodHandler, build: Callable[[], Message | RequestStream]
    ) -> Message:
        """`invoke` for a coroutine behavior (`handler` from `loop_handler`), on the event loop."""
        exc: Exception | None = None
        response: Message | None = None
        try:
            request = build()
            response = await cast(Behavior, handler.unary_unary)(request, self.context)
        except Exception as error:
            exc = error
        finally:
            self.context.finish()
        failed = self.failure(exc)
        if failed is not None:
            raise failed
        assert response is not None
        return response

    async def run_unary_async(
        self, handler: grpc.RpcMethodHandler, build: Callable[[], Message | RequestStream]
    ) -> bytes:
        """`run_unary` for a coroutine behavior, on the event loop."""
        return dumps(message_json(await self.invoke_async(handler, build), self.response_body))

    def run_streaming(self, build: Callable[[], Message | RequestStream], sink: ToLoop) -> None:
        """unary -> stream or stream -> stream: each response becomes an NDJSON line."""
        exc: Exception | None = None
        requests: RequestStream | None = None
        responses: Iterator[Message] | None = None
        try:
            request = build()
            handler = self.handler()
            if isinstance(request, RequestStream):
                requests = request
                responses = cast(Behavior, handler.stream_stream)(iter(request), self.context)
            else:
                responses = cast(Behavior, handler.unary_stream)(request, self.context)
            for message in responses:
                sink.put(result_line(message, self.response_body))
        except Exception as error:
            exc = error
        finally:
            close = getattr(responses, "close", None)
            if close is not None:
                close()
            self.context.finish()
        sink.end(self.failure_or_deadline(exc, requests))
