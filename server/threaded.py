"""Plain (blocking) servicer methods on the grpc.aio server: each call runs in a worker thread.

Servicers whose work blocks (Redis, object storage, long watches) stay plain
functions; the event loop never runs them. `threaded_handler()` turns such a
method handler into a coroutine handler that runs the behavior in a bounded
pool with a `ThreadedContext`: the full `grpc.ServicerContext` API of the
threaded server (abort raises, `code()`, `is_active()`, `add_callback()`),
backed by the call's grpc.aio context. Request streams are read on the loop one
message at a time as the thread asks; responses are written on the loop as the
thread yields them (waiting for each write: flow control reaches the thread).

grpc.aio can run plain handlers itself (`migration_thread_pool`), but its
thread-side context has no `code()` or `is_active()`, and a stream cancelled by
the client leaves the thread waiting; this module keeps the threaded server's
semantics that the servicers and interceptors rely on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server.errors import InvalidArgument
from server.http.context import RecordedContext, RpcAborted, run_callbacks
from server.telemetry.calls import behavior_of, replace_handler

Behavior = Callable[..., Any]


class StreamBroken(grpc.RpcError):
    """Raised to a thread reading a request stream or writing a response once the call is over."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "the call is over"


class ThreadedContext(RecordedContext):
    """The context a plain servicer method sees; `transport` is "grpc". The status it sets is kept
    here (`RecordedContext`) and applied on the loop when the method returns."""

    transport = "grpc"

    def __init__(self, context: grpc.aio.ServicerContext, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._context = context
        self._loop = loop
        self._waiting: set[concurrent.futures.Future] = set()

    # -- what the call carries (set before the handler runs: safe to read from the thread) --

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> Any:
        return self._context.peer_identity_key()

    def auth_context(self) -> Any:
        return self._context.auth_context()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    # -- metadata sent back ------------------------------------------------------------

    def send_initial_metadata(self, initial_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.on_loop(self._context.send_initial_metadata(tuple(initial_metadata)))

    def set_compression(self, compression: Any) -> None:
        self._context.set_compression(compression)

    def disable_next_message_compression(self) -> None:
        self._context.disable_next_message_compression()

    # -- life cycle ---------------------------------------------------------------------

    def end(self) -> None:
        """The call is over (it finished, or the client went away): wake the thread, run the callbacks once."""
        with self._lock:
            callbacks = self._ended()
            waiting, self._waiting = set(self._waiting), set()
        if callbacks is None:
            return
        for future in waiting:
            future.cancel()
        run_callbacks(callbacks)

    def on_loop(self, coroutine: Any) -> Any:
        """From the thread: run `coroutine` on the loop and wait for it; StreamBroken once the call is over."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        with self._lock:
            if not self._active:
                future.cancel()
                raise StreamBroken()
            self._waiting.add(future)
        try:
            return future.result()
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            raise StreamBroken() from None
        finally:
            with self._lock:
                self._waiting.discard(future)

    async def finish(self) -> None:
        """On the loop, after the method returned: send its status and trailing metadata."""
        if self.trailing_metadata_sent:
            self._context.set_trailing_metadata(self.trailing_metadata_sent)
        if self._code is not None and self._code != grpc.StatusCode.OK:
            await self._context.abort(self._code, self._details or "")


class _Requests:
    """A request stream read on the loop, as the thread's iterator."""

    def __init__(self, requests: AsyncIterable[Any], context: ThreadedContext) -> None:
        self._source = requests
        self._requests: AsyncIterator[Any] | None = None  # made when first read: a stream never read stays unopened
        self._context = context

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._requests is None:
            self._requests = self._source.__aiter__()
        try:
            return self._context.on_loop(_next_or_end(self._requests))
        except StopAsyncIteration:
            raise StopIteration from None
        except DecodeError as exc:  # grpc parses each message as it is read: bytes that are no message
            raise InvalidArgument(f"request stream: a message is not valid protobuf ({exc})") from None


async def _next_or_end(requests: AsyncIterator[Any]) -> Any:
    return await requests.__anext__()  # StopAsyncIteration crosses to the thread as it is


def threaded_handler(handler: grpc.RpcMethodHandler, executor: Executor) -> grpc.RpcMethodHandler:
    """`handler` with its plain behavior run in `executor` (see the module docstring)."""
    request_streaming, response_streaming = handler.request_streaming, handler.response_streaming
    behavior = behavior_of(handler)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        loop = asyncio.get_running_loop()
        threaded = ThreadedContext(context, loop)
        context.add_done_callback(lambda _call: threaded.end())  # type: ignore[arg-type]  # any callable, at run time
        requests = _Requests(request, threaded) if request_streaming else request

        def run() -> Any:
            result = None
            try:
                result = behavior(requests, threaded)
                if not response_streaming:
                    return result
                for response in result:
                    threaded.on_loop(context.write(response))
                return None
            except RpcAborted:
                return None  # the status is in the context
            except StreamBroken:
                return None  # the caller went away
            finally:
                close = getattr(result, "close", None) if response_streaming else None
                if close is not None:
                    close()  # a response generator left early runs its clean-up now

        try:
            result = await loop.run_in_executor(executor, run)
        except asyncio.CancelledError:
            threaded.end()
            raise
        await threaded.finish()
        return result

    kind = ("stream_" if request_streaming else "unary_") + ("stream" if response_streaming else "unary")
    return replace_handler(handler, **{kind: call})
