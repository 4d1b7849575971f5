"""Decoded results of predictions: plain dataclasses holding numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from client.errors import ClientError
from serving.v1 import predict_pb2, stream_pb2
from wire.codec import to_numpy


@dataclass(frozen=True)
class ClassScore:
    """One class of a classified row: its label, index in the output and score."""

    label: str
    index: int
    score: float


@dataclass(frozen=True)
class PredictResult:
    """A decoded `PredictResponse`.

    `classifications` has one list per batch row, best class first; it is empty
    for models without a labels file. `response` is the message it was built from.
    """

    request_id: str
    model: str
    version: int
    outputs: dict[str, np.ndarray]
    classifications: list[list[ClassScore]]
    task_id: str = ""
    response: predict_pb2.PredictResponse | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_response(cls, response: predict_pb2.PredictResponse) -> PredictResult:
        """Decode every output tensor and classification of a response."""
        return cls(
            request_id=response.request_id,
            model=response.model.name,
            version=response.model.version,
            outputs={name: to_numpy(tensor, f"output '{name}'") for name, tensor in sorted(response.outputs.items())},
            classifications=[
                [ClassScore(c.label, c.index, c.score) for c in row.classes] for row in response.classifications
            ],
            task_id=response.task_id,
            response=response,
        )


@dataclass(frozen=True)
class StreamResult:
    """The answer to one streamed message: a result or an error, never both."""

    request_id: str
    result: PredictResult | None = None
    error: ClientError | None = None

    @property
    def ok(self) -> bool:
        """True when the message was answered with a prediction."""
        return self.error is None

    @classmethod
    def from_message(cls, message: stream_pb2.StreamPredictResponse) -> StreamResult:
        """Decode one `StreamPredictResponse`."""
        if message.WhichOneof("result") == "error":
            error = ClientError.from_status(message.error.code, message.error.message)
            return cls(message.request_id, error=error)
        return cls(message.request_id, result=PredictResult.from_response(message.response))
