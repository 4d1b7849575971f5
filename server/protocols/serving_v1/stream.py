"""StreamPredictService: each streamed message goes through the same Batcher (server/protocols/streaming.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
from google.rpc import status_pb2

from server.errors import status_of
from server.predictor import PendingPrediction, Predictor
from server.protocols.deadlines import deadline_of
from server.protocols.streaming import BatchedStream
from serving.v1 import stream_pb2, stream_pb2_grpc


class StreamPredictServicer(stream_pb2_grpc.StreamPredictServiceServicer):
    """Bidirectional predictions; one response per request message, in completion order."""

    def __init__(self, predictor: Predictor, max_in_flight: int = 256) -> None:
        self.predictor = predictor
        self.max_in_flight = max_in_flight

    def StreamPredict(
        self, request_iterator: Iterator[stream_pb2.StreamPredictRequest], context: grpc.ServicerContext
    ) -> Iterator[stream_pb2.StreamPredictResponse]:
        deadline = deadline_of(context)

        def submit(message: stream_pb2.StreamPredictRequest) -> PendingPrediction:
            request = message.request
            request.request_id = request.request_id or uuid.uuid4().hex
            return self.predictor.submit(request, deadline)

        stream = BatchedStream(submit, self._answer, self._refused, self.max_in_flight)
        return stream.run(request_iterator, context)

    def _answer(self, pending: PendingPrediction) -> stream_pb2.StreamPredictResponse:
        try:
            return stream_pb2.StreamPredictResponse(request_id=pending.request.request_id, response=pending.result(0))
        except Exception as exc:
            return self._failed(pending.request.request_id, exc)

    def _refused(self, message: stream_pb2.StreamPredictRequest, exc: Exception) -> stream_pb2.StreamPredictResponse:
        return self._failed(message.request.request_id, exc)

    @staticmethod
    def _failed(request_id: str, exc: Exception) -> stream_pb2.StreamPredictResponse:
        code, message = status_of(exc)
        return stream_pb2.StreamPredictResponse(
            request_id=request_id, error=status_pb2.Status(code=code.value[0], message=message)
        )
