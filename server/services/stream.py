"""StreamPredictService: each streamed message goes through the same Batcher.

A reader thread takes request messages and queues them as soon as they arrive;
the handler yields each response when its rows are ready, so many messages of
one stream share batches (with each other and with unary calls). At most
`max_in_flight` messages per stream wait at once; past that the reader stops
reading, and HTTP/2 flow control slows the sender.
"""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Iterator

import grpc
from google.rpc import status_pb2

from server.errors import status_of
from server.predictor import PendingPrediction, Predictor
from server.services.predict import deadline_of
from serving.v1 import stream_pb2, stream_pb2_grpc

_END = object()


class StreamPredictServicer(stream_pb2_grpc.StreamPredictServiceServicer):
    """Bidirectional predictions; one response per request message, in completion order."""

    def __init__(self, predictor: Predictor, max_in_flight: int = 256) -> None:
        self.predictor = predictor
        self.max_in_flight = max_in_flight

    def StreamPredict(
        self, request_iterator: Iterator[stream_pb2.StreamPredictRequest], context: grpc.ServicerContext
    ) -> Iterator[stream_pb2.StreamPredictResponse]:
        results: queue.Queue = queue.Queue()
        slots = threading.Semaphore(self.max_in_flight)
        stop = threading.Event()
        deadline = deadline_of(context)
        reader = threading.Thread(
            target=self._read, args=(request_iterator, context, deadline, results, slots, stop),
            name="stream-reader", daemon=True,
        )
        reader.start()
        try:
            while (item := results.get()) is not _END:
                slots.release()
                yield self._answer(item)
        finally:
            stop.set()

    def _read(self, requests, context, deadline, results: queue.Queue, slots: threading.Semaphore, stop: threading.Event) -> None:
        """Queue each message; put `_END` once every queued message has been answered."""
        submitted = 0
        done = threading.Semaphore(0)
        try:
            for message in requests:
                while not slots.acquire(timeout=0.5):
                    if stop.is_set() or not context.is_active():
                        return
                request = message.request
                request.request_id = request.request_id or uuid.uuid4().hex
                submitted += 1
                try:
                    pending = self.predictor.submit(request, deadline)
                except Exception as exc:
                    results.put((request.request_id, exc))
                    done.release()
                    continue
                pending.add_done_callback(lambda p: (results.put(p), done.release()))
        except grpc.RpcError:
            return  # the caller went away
        finally:
            if not stop.is_set():
                for _ in range(submitted):
                    done.acquire()
                results.put(_END)

    @staticmethod
    def _answer(item: PendingPrediction | tuple[str, Exception]) -> stream_pb2.StreamPredictResponse:
        if isinstance(item, tuple):
            request_id, exc = item
        else:
            request_id = item.request.request_id
            try:
                return stream_pb2.StreamPredictResponse(request_id=request_id, response=item.result(0))
            except Exception as error:
                exc = error
        code, message = status_of(exc)
        return stream_pb2.StreamPredictResponse(
            request_id=request_id, error=status_pb2.Status(code=code.value[0], message=message)
        )
