"""The prediction core shared by every transport (unary, stream, HTTP, task workers).

It takes and returns the API's messages but knows nothing of gRPC or HTTP:
decode and validate the inputs, hand them to the model's Batcher, then turn
the output rows into a response (tensors, top-k classes, and for a model's
file outputs one stored file per row, unless the request asks for them inline).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

from server.errors import DeadlineExceeded, InvalidArgument
from server.models import images
from server.models.file_outputs import FileOutput
from server.models.model import LoadedModel
from server.models.repository import ModelRepository
from server.storage.store import ObjectStore
from serving.v1 import model_pb2, predict_pb2
from wire import codec


class PendingPrediction:
    """A queued request; the response is built in the thread that asks for it."""

    def __init__(
        self, predictor: Predictor, model: LoadedModel, request: predict_pb2.PredictRequest, rows: Future
    ) -> None:
        self.request = request
        self._predictor = predictor
        self._model = model
        self._rows = rows

    def result(self, timeout: float | None = None) -> predict_pb2.PredictResponse:
        """Wait for the rows and build the response; DeadlineExceeded after `timeout`."""
        try:
            rows = self._rows.result(timeout=timeout)
        except TimeoutError:
            self._rows.cancel()
            raise DeadlineExceeded(f"deadline exceeded waiting for model '{self._model.name}'") from None
        return self._predictor.build_response(self._model, self.request, rows)

    def cancel(self) -> None:
        """Give up: the rows are dropped if they have not started running."""
        self._rows.cancel()

    def add_done_callback(self, callback: Callable[[PendingPrediction], None]) -> None:
        self._rows.add_done_callback(lambda _: callback(self))


class Predictor:
    """Runs PredictRequests through the batching model repository."""

    def __init__(self, repository: ModelRepository, default_top_k: int = 3, store: ObjectStore | None = None) -> None:
        self.repository = repository
        self.default_top_k = default_top_k
        self.store = store  # where file outputs go; None returns them as tensors

    async def infer(
        self, request: predict_pb2.PredictRequest, deadline: float | None = None
    ) -> predict_pb2.PredictResponse:
        """`predict` on the event loop: the loop is free while the model runs."""
        if any(value.WhichOneof("kind") == "images" for value in request.inputs.values()):
            # Decoding and resizing images is real work: not on the loop.
            model, arrays = await asyncio.get_running_loop().run_in_executor(None, self.prepare, request)
        else:
            model, arrays = self.prepare(request)
        rows = await model.batcher.infer(arrays, deadline)
        if self.store is not None and _stores_files(model, request):
            # Files are written to the object store: not on the loop.
            return await asyncio.get_running_loop().run_in_executor(None, self.build_response, model, request, rows)
        return self.build_response(model, request, rows)

    def predict(
        self, request: predict_pb2.PredictRequest, deadline: float | None = None
    ) -> predict_pb2.PredictResponse:
        """Validate, batch, run and answer one request (from a thread: blocks until done or the deadline)."""
        model, arrays = self.prepare(request)
        return self.build_response(model, request, model.batcher.run(arrays, deadline))

    def submit(self, request: predict_pb2.PredictRequest, deadline: float | None = None) -> PendingPrediction:
        """Validate and queue a request.

        Errors found before queueing (bad input, unknown model, full queue) are
        raised here, so a bad request never reaches a batch.
        """
        model, arrays = self.prepare(request)
        return PendingPrediction(self, model, request, model.batcher.submit(arrays, deadline))

    def prepare(self, request: predict_pb2.PredictRequest) -> tuple[LoadedModel, dict[str, np.ndarray]]:
        """Find the model and decode and validate the inputs (before anything is queued)."""
        model = self.repository.get(request.model, request.version, request.version_label)
        arrays = self.decode_inputs(model, request)
        model.validate(arrays)
        _check_output_filter(model, request.output_filter)
        return model, arrays

    def predict_arrays(
        self,
        model: LoadedModel,
        arrays: dict[str, np.ndarray],
        deadline: float | None = None,
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Validate, batch and run inputs another wire format decoded for `model` (from `repository.get`)."""
        _check_arrays(model, arrays, output_filter)
        return _filtered(model.batcher.run(arrays, deadline), output_filter)

    async def infer_arrays(
        self,
        model: LoadedModel,
        arrays: dict[str, np.ndarray],
        deadline: float | None = None,
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """`predict_arrays` on the event loop."""
        _check_arrays(model, arrays, output_filter)
        return _filtered(await model.batcher.infer(arrays, deadline), output_filter)

    def submit_arrays(self, model: LoadedModel, arrays: dict[str, np.ndarray], deadline: float | None = None) -> Future:
        """Validate and queue inputs another wire format decoded; a future of every output's rows."""
        _validate_decoded(model, arrays)
        return model.batcher.submit(arrays, deadline)

    @staticmethod
    def decode_inputs(model: LoadedModel, request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
        """Tensors via the codec; encoded images decoded to the input's shape."""
        if not request.inputs:
            raise InvalidArgument(f"inputs: none given; model '{model.name}' takes {_described_inputs(model)}")
        arrays: dict[str, np.ndarray] = {}
        for name, value in request.inputs.items():
            kind = value.WhichOneof("kind")
            if kind == "tensor":
                try:
                    arrays[name] = codec.to_numpy(value.tensor, f"input '{name}'")
                except codec.TensorCodecError as exc:
                    raise InvalidArgument(str(exc)) from None
            elif kind == "images":
                spec = model.inputs.get(name)
                if spec is None or not images.accepts_images(spec.shape, spec.dtype):
                    accepted = ", ".join(f"'{n}'" for n in model.image_inputs) or "none"
                    raise InvalidArgument(
                        f"input '{name}': does not accept encoded images; image inputs of "
                        f"model '{model.name}': {accepted}"
                    )
                arrays[name] = images.decode_images(name, list(value.images.images), spec.shape, spec.dtype)
            else:
                raise InvalidArgument(f"input '{name}': set either tensor or images")
        return arrays

    def build_response(
        self, model: LoadedModel, request: predict_pb2.PredictRequest, outputs: dict[str, np.ndarray]
    ) -> predict_pb2.PredictResponse:
        raw = request.output_encoding != predict_pb2.TENSOR_ENCODING_TYPED
        wanted = request.output_filter or list(outputs)
        response = predict_pb2.PredictResponse(
            request_id=request.request_id,
            model=model_pb2.ModelRef(name=model.name, version=model.version),
        )
        for name in wanted:
            file_output = model.file_outputs.get(name)
            if file_output is not None and self.store is not None and not request.inline_files:
                prefix = f"outputs/{model.name}/{request.request_id}"
                response.files[name].files.extend(_store_files(self.store, prefix, file_output, outputs[name]))
            else:
                response.outputs[name].CopyFrom(codec.from_numpy(outputs[name], raw=raw))
        top_k = self.default_top_k if request.top_k == 0 else request.top_k
        scores_name = model.classification_output
        if top_k > 0 and scores_name is not None:
            response.classifications.extend(_top_k(outputs[scores_name], model.labels, top_k))
        return response


def _stores_files(model: LoadedModel, request: predict_pb2.PredictRequest) -> bool:
    """Whether answering the request writes file outputs to the object store."""
    if request.inline_files or not model.file_outputs:
        return False
    wanted = request.output_filter or model.outputs
    return any(name in model.file_outputs for name in wanted)


def _check_arrays(model: LoadedModel, arrays: dict[str, np.ndarray], output_filter: Sequence[str]) -> None:
    _validate_decoded(model, arrays)
    _check_output_filter(model, output_filter)


def _filtered(outputs: dict[str, np.ndarray], output_filter: Sequence[str]) -> dict[str, np.ndarray]:
    return {n: outputs[n] for n in (output_filter or outputs)}


def _validate_decoded(model: LoadedModel, arrays: dict[str, np.ndarray]) -> None:
    if not arrays:
        raise InvalidArgument(f"inputs: none given; model '{model.name}' takes {_described_inputs(model)}")
    model.validate(arrays)


def _described_inputs(model: LoadedModel) -> str:
    return ", ".join(f"'{n}' ({s.describe()})" for n, s in model.inputs.items())


def _check_output_filter(model: LoadedModel, output_filter: Sequence[str]) -> None:
    unknown = [n for n in output_filter if n not in model.outputs]
    if unknown:
        raise InvalidArgument(
            f"output_filter: unknown output '{unknown[0]}'; model '{model.name}' returns "
            + ", ".join(f"'{n}'" for n in model.outputs)
        )


def _store_files(store: ObjectStore, prefix: str, output: FileOutput, rows: np.ndarray) -> list[predict_pb2.FileRef]:
    """Encode and store each row as `<prefix>/<id>-<output>-<row>.<format>`."""
    refs = []
    for index, row in enumerate(rows):
        key = store.new_key(f"{output.name}-{index}.{output.format}", prefix)
        stored = store.put_bytes(key, output.encode(row), content_type=output.content_type)
        refs.append(
            predict_pb2.FileRef(
                uri=stored.uri,
                url=stored.url,
                presigned_url=stored.presigned_url,
                content_type=stored.content_type,
                size=stored.size,
                sha256=stored.sha256,
                key=stored.key,
            )
        )
    return refs


def best_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's `k` highest scores, best first (ties: the lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]


def _top_k(scores: np.ndarray, labels: list[str], k: int) -> list[predict_pb2.Classification]:
    best = best_classes(scores, k)
    return [
        predict_pb2.Classification(
            classes=[predict_pb2.ClassScore(label=labels[i], index=int(i), score=float(row[i])) for i in indices]
        )
        for row, indices in zip(scores, best, strict=True)
    ]
