"""Senders used by the bench: one request per call, answered with its status code.

They use `grpc.aio` channels and run in the bench's event loop.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import grpc

from client.channel import Metadata
from client.errors import status_code
from serving.v1 import predict_pb2, predict_pb2_grpc, stream_pb2, stream_pb2_grpc


class Sender(Protocol):
    """Sends the same prediction again and again, one at a time."""

    async def __call__(self) -> grpc.StatusCode:
        """Send once, wait for the answer and return its status code."""
        ...

    async def close(self) -> None:
        """Release what the sender holds open."""
        ...


class UnarySender:
    """One `Predict` call per send."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        request: predict_pb2.PredictRequest,
        metadata: Metadata,
        timeout: float,
    ) -> None:
        self._predict = predict_pb2_grpc.PredictServiceStub(channel).Predict
        self._request = request
        self._metadata = metadata
        self._timeout = timeout

    async def __call__(self) -> grpc.StatusCode:
        """Call `Predict` and return OK or the error's code."""
        try:
            await self._predict(self._request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    async def close(self) -> None:
        """Nothing is held between calls."""


class StreamSender:
    """One long `StreamPredict` call; each send writes a message and waits for its answer.

    Only one message is unanswered at a time, so the next answer is its answer.
    A message unanswered after `timeout` seconds counts as DEADLINE_EXCEEDED and
    the call is cancelled; a failed call counts its code (UNKNOWN if it ended OK)
    on the send that finds it broken. The next send opens a new call.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        request: predict_pb2.PredictRequest,
        metadata: Metadata,
        timeout: float,
    ) -> None:
        self._stub = stream_pb2_grpc.StreamPredictServiceStub(channel)
        self._message = stream_pb2.StreamPredictRequest(request=request)
        self._metadata = metadata
        self._timeout = timeout
        self._call: grpc.aio.StreamStreamCall | None = None

    async def __call__(self) -> grpc.StatusCode:
        """Write the message and return OK, the message's error code or the call's."""
        if self._call is None:
            self._call = self._stub.StreamPredict(metadata=self._metadata)
        call = self._call
        try:
            async with asyncio.timeout(self._timeout):
                if not call.done():  # a finished call only has its status to read
                    await call.write(self._message)
                reply = await call.read()
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        except grpc.aio.AioRpcError as error:
            code = error.code()
        else:
            if reply is not grpc.aio.EOF:
                message = cast(stream_pb2.StreamPredictResponse, reply)
                if message.WhichOneof("result") == "error":
                    return status_code(message.error.code)
                return grpc.StatusCode.OK
            code = grpc.StatusCode.UNKNOWN
        self._cancel()
        return code

    async def close(self) -> None:
        """Half-close the call, give the server `timeout` seconds to end it, then cancel."""
        if self._call is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._call.done_writing()
                    await self._call.code()
            except TimeoutError:
                pass
            self._cancel()

    def _cancel(self) -> None:
        """Cancel the call, if still open; the next send opens a new one."""
        if self._call is not None:
            self._call.cancel()
        self._call = None
