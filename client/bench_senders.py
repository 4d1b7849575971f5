"""Senders used by the bench: one request per call, answered with its status code."""

from __future__ import annotations

import queue
import threading
from typing import Protocol

import grpc

from client.channel import Metadata
from client.errors import status_code
from serving.v1 import predict_pb2, predict_pb2_grpc, stream_pb2, stream_pb2_grpc

_Message = stream_pb2.StreamPredictRequest
_Reply = stream_pb2.StreamPredictResponse | grpc.StatusCode


class Sender(Protocol):
    """Sends the same prediction again and again, one at a time."""

    def __call__(self) -> grpc.StatusCode:
        """Send once, wait for the answer and return its status code."""
        ...

    def close(self) -> None:
        """Release what the sender holds open."""
        ...


class UnarySender:
    """One `Predict` call per send."""

    def __init__(
        self,
        stub: predict_pb2_grpc.PredictServiceStub,
        request: predict_pb2.PredictRequest,
        metadata: Metadata,
        timeout: float,
    ) -> None:
        self._stub = stub
        self._request = request
        self._metadata = metadata
        self._timeout = timeout

    def __call__(self) -> grpc.StatusCode:
        """Call `Predict` and return OK or the error's code."""
        try:
            self._stub.Predict(self._request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        return grpc.StatusCode.OK

    def close(self) -> None:
        """Nothing is held between calls."""


class StreamSender:
    """One long `StreamPredict` call; each send writes a message and waits for its answer.

    A message unanswered after `timeout` seconds counts as DEADLINE_EXCEEDED and
    the call is cancelled; a failed or cancelled call is reopened on the next send.
    """

    def __init__(
        self,
        stub: stream_pb2_grpc.StreamPredictServiceStub,
        request: predict_pb2.PredictRequest,
        metadata: Metadata,
        timeout: float,
    ) -> None:
        self._stub = stub
        self._message = stream_pb2.StreamPredictRequest(request=request)
        self._metadata = metadata
        self._timeout = timeout
        self._call: grpc.Call | None = None
        self._outbox: queue.SimpleQueue[_Message | None] = queue.SimpleQueue()
        self._inbox: queue.SimpleQueue[_Reply] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None

    def __call__(self) -> grpc.StatusCode:
        """Write the message and return OK, the message's error code or the call's."""
        if self._call is None:
            self._open()
        self._outbox.put(self._message)
        try:
            reply = self._inbox.get(timeout=self._timeout)
        except queue.Empty:
            self._cancel()
            return grpc.StatusCode.DEADLINE_EXCEEDED
        if isinstance(reply, grpc.StatusCode):
            self._cancel()
            return reply
        if reply.WhichOneof("result") == "error":
            return status_code(reply.error.code)
        return grpc.StatusCode.OK

    def close(self) -> None:
        """Half-close the call, give the server `timeout` seconds to end it, then cancel."""
        if self._call is not None and self._reader is not None:
            self._outbox.put(None)
            self._reader.join(self._timeout)
        self._cancel()

    def _open(self) -> None:
        """Start the call and the thread that reads its answers."""
        self._outbox = queue.SimpleQueue()
        self._inbox = queue.SimpleQueue()
        call = self._stub.StreamPredict(iter(self._outbox.get, None), metadata=self._metadata)
        self._call = call
        self._reader = threading.Thread(target=_read, args=(call, self._inbox), daemon=True)
        self._reader.start()

    def _cancel(self) -> None:
        """Cancel the call, if open; the next send opens a new one."""
        if self._call is not None:
            self._call.cancel()
        self._call = None
        self._reader = None


def _read(call: grpc.Call, inbox: queue.SimpleQueue[_Reply]) -> None:
    """Move a call's answers to `inbox`, then its final status (UNKNOWN if it ended OK)."""
    try:
        for message in call:  # type: ignore[attr-defined]
            inbox.put(message)
    except grpc.RpcError as error:
        inbox.put(error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN)
        return
    inbox.put(grpc.StatusCode.UNKNOWN)
