"""Answering a request stream through the Batcher: StreamPredict and the V2 protocol's ModelStreamInfer.

A reader thread takes request messages and queues each for its model as soon
as it arrives; the handler yields each answer when its rows are ready, so the
messages of one stream share batches (with each other and with unary calls)
and are answered in completion order. At most `max_in_flight` messages per
stream wait at once; past that the reader stops reading, and HTTP/2 flow
control slows the sender. A message refused before it was queued (bad input,
unknown model, full queue) is answered with its error; the stream goes on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import grpc

Request = TypeVar("Request")
Response = TypeVar("Response")
_END = object()


class _Refused:
    def __init__(self, message: Any, exc: Exception) -> None:
        self.message = message
        self.exc = exc


class _Broken:
    """The request stream itself failed (a message that is not one): the call fails with `exc`."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class Queued(Protocol):
    """What `submit` returns: something that calls back once its result (or error) is ready."""

    def add_done_callback(self, callback: Callable[[Any], None]) -> None: ...


class BatchedStream(Generic[Request, Response]):
    """`submit(message)` queues a message (raising when it is refused); `answer(queued)` builds the
    answer of a queued message once it is done; `refused(message, exc)` the answer of a refused one."""

    def __init__(
        self,
        submit: Callable[[Request], Queued],
        answer: Callable[[Any], Response],
        refused: Callable[[Request, Exception], Response],
        max_in_flight: int = 256,
    ) -> None:
        self.submit = submit
        self.answer = answer
        self.refused = refused
        self.max_in_flight = max_in_flight

    def run(self, requests: Iterable[Request], context: grpc.ServicerContext) -> Iterator[Response]:
        results: queue.Queue = queue.Queue()
        slots = threading.Semaphore(self.max_in_flight)
        stop = threading.Event()
        reader = threading.Thread(
            target=self._read, args=(requests, context, results, slots, stop), name="stream-reader", daemon=True
        )
        reader.start()
        try:
            while (item := results.get()) is not _END:
                if isinstance(item, _Broken):
                    raise item.exc
                slots.release()
                yield self.refused(item.message, item.exc) if isinstance(item, _Refused) else self.answer(item)
        finally:
            stop.set()

    def _read(
        self,
        requests: Iterable[Request],
        context: grpc.ServicerContext,
        results: queue.Queue,
        slots: threading.Semaphore,
        stop: threading.Event,
    ) -> None:
        """Queue each message; put `_END` once every queued message has been answered."""
        submitted = 0
        done = threading.Semaphore(0)

        def answered(queued: Any) -> None:
            results.put(queued)
            done.release()

        try:
            for message in requests:
                if stop.is_set():  # the handler is gone: queue nothing more
                    return
                while not slots.acquire(timeout=0.5):
                    if stop.is_set() or not context.is_active():
                        return
                submitted += 1
                try:
                    queued = self.submit(message)
                except Exception as exc:
                    results.put(_Refused(message, exc))  # answered in the handler's thread, like the rest
                    done.release()
                    continue
                queued.add_done_callback(answered)
        except grpc.RpcError:
            return  # the caller went away
        except Exception as exc:  # e.g. InvalidArgument: a message that is not one
            results.put(_Broken(exc))
        finally:
            if not stop.is_set():
                for _ in range(submitted):
                    done.acquire()
                results.put(_END)
