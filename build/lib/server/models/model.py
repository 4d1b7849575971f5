"""One loaded model version: a SavedModel signature, its specs, labels and batcher.

Life cycle (KServe's template, without the async branching):
load -> warm up -> (validate -> batch -> predict -> postprocess)* -> close.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from server.batching import Batcher, BatchingConfig
from server.errors import InvalidArgument
from server.models import images
from wire import codec
from server.models.file_outputs import FileOutput, parse_file_outputs
from server.protocols.tfserving.tensor_proto import tensor_array
from serving.v1 import model_pb2, tensor_pb2

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"  # TF Serving's place and format
MAX_WARMUP_RECORDS = 1000  # as TF Serving
MAX_WARMUP_BYTES = 256 * 1024 * 1024  # per tensor, decoded
LABELS_FILE = "labels.txt"
SERVING_CONFIG = "serving.json"  # per-model batching overrides and file outputs, in models/<name>/


@dataclass(frozen=True)
class TensorInfo:
    """Name, numpy dtype and shape (-1: any size) of an input or output."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def data_type(self) -> int:
        return codec.data_type_of(np.empty(0, self.dtype))

    def describe(self) -> str:
        return f"{codec.dtype_name(self.data_type)} {list(self.shape)}"

    def to_proto(self) -> tensor_pb2.TensorSpec:
        return tensor_pb2.TensorSpec(name=self.name, dtype=self.data_type, shape=self.shape)


@dataclass
class LoadedModel:
    """A model version ready to serve."""

    name: str
    version: int
    path: Path
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    labels: list[str]
    device: str
    batching: BatchingConfig
    signature: object = field(repr=False)
    saved_model: object = field(repr=False)  # keeps the variables alive
    batcher: Batcher = field(init=False, repr=False)
    load_seconds: float = 0.0
    file_outputs: dict[str, FileOutput] = field(default_factory=dict)  # stored as files, by output
    # The signature called with tensors by input name; `flat_caller` may replace it at load.
    call: Callable[[dict[str, tf.Tensor]], Mapping[str, tf.Tensor]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.call is None:
            self.call = lambda tensors: self.signature(**tensors)
        self.batcher = Batcher(self.run_batch, self.batching, name=self.name)

    @cached_property
    def image_inputs(self) -> list[str]:
        return [n for n, spec in self.inputs.items() if images.accepts_images(spec.shape, spec.dtype)]

    @cached_property
    def classification_output(self) -> str | None:
        """The output the labels apply to: the first [-1, len(labels)] output."""
        if not self.labels:
            return None
        for name, spec in self.outputs.items():
            if len(spec.shape) == 2 and spec.shape[1] == len(self.labels):
                return name
        return None

    def run_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of the model on a whole batch (used by the Batcher only)."""
        with tf.device(self.device):
            result = self.call({k: tf.convert_to_tensor(v) for k, v in batch.items()})
        return {k: v.numpy() for k, v in result.items()}

    def warm_up(self) -> int:
        """Run every batch size the model will see once, so no caller pays for it, then the
        version's TF Serving warm-up records (`assets.extra/tf_serving_warmup_requests`); how many.

        A model with string inputs (serialized tf.Examples, text) is warmed up from its records only,
        as TF Serving does: no made-up string is a valid input of every such model.
        """
        strings = [name for name, spec in self.inputs.items() if spec.dtype == object]
        sizes = () if strings else self.batching.allowed_batch_sizes or (1,)
        if strings:
            log.info("model %s v%d: string input%s %s, warmed up from %s only", self.name, self.version,
                     "s" if len(strings) > 1 else "", ", ".join(strings), WARMUP_FILE)
        for size in sizes:
            batch = {
                name: np.zeros((size, *[max(d, 1) for d in spec.shape[1:]]), dtype=spec.dtype)
                for name, spec in self.inputs.items()
            }
            self.run_batch(batch)
        replayed = 0
        for index, inputs in warmup_records(self.path / WARMUP_FILE):
            try:
                self.validate(inputs)
            except InvalidArgument as exc:
                raise ValueError(f"{self.path / WARMUP_FILE}: record {index}: {exc.message}") from None
            self.run_batch(inputs)
            replayed += 1
        return replayed

    def validate(self, inputs: dict[str, np.ndarray]) -> None:
        """Check names, dtypes and shapes against the signature before queueing."""
        for name, array in inputs.items():
            spec = self.inputs.get(name)
            if spec is None:
                raise InvalidArgument(
                    f"inputs: unknown input '{name}'; model '{self.name}' takes {_quoted(self.inputs)}"
                )
            if array.dtype.newbyteorder("=") != spec.dtype.newbyteorder("="):
                try:
                    got = codec.dtype_name(codec.data_type_of(array))
                except codec.TensorCodecError:  # a dtype the API has no name for (complex, bfloat16, ...)
                    got = str(array.dtype)
                raise InvalidArgument(
                    f"input '{name}': dtype {got} does not match the model's {spec.describe()}"
                )
            if array.ndim != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape)
            ):
                raise InvalidArgument(
                    f"input '{name}': shape {list(array.shape)} does not match the model's {spec.describe()}"
                )
            if array.shape[0] == 0:
                raise InvalidArgument(f"input '{name}': batch dimension is 0; send at least one row")
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            spec = self.inputs[missing[0]]
            raise InvalidArgument(f"inputs: missing input '{spec.name}' ({spec.describe()})")

    def metadata(self, available_versions: list[int], served_versions: list[int] | None = None) -> model_pb2.ModelMetadata:
        batching = self.batching
        return model_pb2.ModelMetadata(
            name=self.name,
            version=self.version,
            available_versions=available_versions,
            served_versions=served_versions or [self.version],
            platform=f"tensorflow_savedmodel (TensorFlow {tf.__version__})",
            signature_name=SIGNATURE,
            inputs=[s.to_proto() for s in self.inputs.values()],
            outputs=[s.to_proto() for s in self.outputs.values()],
            labels=self.labels,
            classification_output=self.classification_output or "",
            image_inputs=self.image_inputs,
            batching=model_pb2.BatchingInfo(
                max_batch_size=batching.max_batch_size,
                max_batch_delay_ms=batching.max_batch_delay_s * 1000,
                allowed_batch_sizes=batching.allowed_batch_sizes,
                max_queue_size=batching.max_queue_size,
            ),
            device=self.device,
            state=model_pb2.MODEL_STATE_READY,
            file_outputs=[
                model_pb2.FileOutputInfo(output=f.name, format=f.format, content_type=f.content_type)
                for f in self.file_outputs.values()
            ],
        )

    def close(self, drain: bool = True) -> None:
        self.batcher.close(drain=drain)


def load_model(name: str, version: int, path: Path, device: str, defaults: BatchingConfig) -> LoadedModel:
    """Load a SavedModel version, introspect its serving signature and warm it up."""
    started = time.monotonic()
    with tf.device(device):
        loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f"{path}: no '{SIGNATURE}' signature (found {sorted(loaded.signatures)})")
    signature = loaded.signatures[SIGNATURE]
    _, input_specs = signature.structured_input_signature
    inputs = {k: _info(k, s) for k, s in sorted(input_specs.items())}
    outputs = {k: _info(k, s) for k, s in sorted(signature.structured_outputs.items())}
    config = serving_config(path.parent)
    model = LoadedModel(
        name=name,
        version=version,
        path=path,
        inputs=inputs,
        outputs=outputs,
        labels=_read_labels(path),
        device=device,
        batching=_batching_for(config, defaults),
        file_outputs=parse_file_outputs(config.get("file_outputs"), outputs, str(path.parent / SERVING_CONFIG)),
        signature=signature,
        saved_model=loaded,
    )
    try:
        model.call = flat_caller(signature, inputs, model.call)
        warmed = model.warm_up()
    except BaseException:
        model.close(drain=False)  # its Batcher's thread would otherwise keep the model alive
        raise
    model.load_seconds = time.monotonic() - started
    log.info(
        "loaded model %s version %d in %.2fs (%d warm-up records): inputs %s, outputs %s, %d labels",
        name, version, model.load_seconds, warmed,
        {k: v.describe() for k, v in inputs.items()},
        {k: v.describe() for k, v in outputs.items()},
        len(model.labels),
    )
    return model


def flat_caller(
    signature: object, inputs: dict[str, TensorInfo], public: Callable[[dict[str, tf.Tensor]], Mapping[str, tf.Tensor]]
) -> Callable[[dict[str, tf.Tensor]], Mapping[str, tf.Tensor]]:
    """The signature's function called with its flat argument list, else `public`.

    Calling a loaded signature binds and checks its keyword arguments against
    the function type on every call, which for a small model is about a third
    of the call (0.2 ms of 0.6 ms for the digits model at batch 1). The flat
    call skips that, as TF Serving's C++ does: our own validation has already
    checked names, dtypes and shapes. It goes through TensorFlow internals
    (`_inference_function.call_flat`), so it is used only when they exist and
    give the same outputs as the public call on random inputs at load time.
    """
    try:
        function = signature._inference_function  # type: ignore[attr-defined]
        captured = list(signature.captured_inputs)  # type: ignore[attr-defined]
        structure = signature.structured_outputs  # type: ignore[attr-defined]
        # The order TensorFlow's own keyword call flattens to (sorted names, where it says nothing).
        names = list(getattr(signature, "_arg_keywords", None) or sorted(inputs))
        if sorted(names) != sorted(inputs):
            raise ValueError(f"signature keywords {names} differ from its inputs {sorted(inputs)}")

        def call(tensors: dict[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
            flat = function.call_flat(*[tensors[name] for name in names], *captured)
            return tf.nest.pack_sequence_as(structure, flat, expand_composites=True)

        rng = np.random.default_rng(0)
        sample = {
            name: tf.convert_to_tensor(_random_rows(rng, spec, 2))
            for name, spec in inputs.items()
        }
        want, got = public(sample), call(sample)
        if set(want) == set(got) and all(np.array_equal(want[k].numpy(), got[k].numpy()) for k in want):
            return call
        log.warning("flat signature call gives other outputs than the public call; using the public call")
    except Exception as exc:  # other TensorFlow versions, other signatures
        log.info("flat signature call unavailable (%s: %s); using the public call", type(exc).__name__, exc)
    return public


def warmup_records(path: Path) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(record number, inputs) of each predict request in a TF Serving warm-up file, read one at a time.

    The file is a TFRecord of PredictionLog. No file: nothing. Classify,
    regress and other logs are skipped (only Predict is served); a record
    that cannot be read fails the load, as in TF Serving.
    """
    if not path.is_file():
        return
    from tensorflow_serving.apis import prediction_log_pb2

    try:
        for index, raw in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
            if index >= MAX_WARMUP_RECORDS:
                raise ValueError(f"more than {MAX_WARMUP_RECORDS} records")
            entry = prediction_log_pb2.PredictionLog.FromString(raw)
            if entry.WhichOneof("log_type") != "predict_log":
                log.warning("%s: record %d is a %s, skipped: only predict logs are replayed",
                            path, index, entry.WhichOneof("log_type"))
                continue
            try:
                inputs = {
                    key: tensor_array(key, tensor, MAX_WARMUP_BYTES, "the warm-up limit")
                    for key, tensor in entry.predict_log.request.inputs.items()
                }
            except InvalidArgument as exc:
                raise ValueError(f"record {index}: {exc.message}") from None
            yield index, inputs
    except (ValueError, DecodeError, tf.errors.OpError) as exc:
        reason = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
        raise ValueError(f"{path}: cannot read the warm-up records: {reason}") from None


def _random_rows(rng: np.random.Generator, spec: TensorInfo, rows: int) -> np.ndarray:
    shape = (rows, *[max(d, 1) for d in spec.shape[1:]])
    if spec.dtype.kind == "f":
        return rng.random(shape).astype(spec.dtype)
    if spec.dtype.kind in "iu":
        return rng.integers(0, 2, shape).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.random(shape) < 0.5
    return np.full(shape, b"", dtype=object)


def _info(name: str, spec: tf.TensorSpec) -> TensorInfo:
    shape = tuple(-1 if d is None else int(d) for d in spec.shape.as_list())
    dtype = np.dtype(object) if spec.dtype == tf.string else np.dtype(spec.dtype.as_numpy_dtype)
    return TensorInfo(name, dtype, shape)


def _read_labels(path: Path) -> list[str]:
    for candidate in (path / LABELS_FILE, path / "assets" / LABELS_FILE, path.parent / LABELS_FILE):
        if candidate.is_file():
            return [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
    return []


def serving_config(model_root: Path) -> dict:
    """The model's serving.json ({} when there is none)."""
    config_file = model_root / SERVING_CONFIG
    if not config_file.is_file():
        return {}
    try:
        raw = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ValueError(f"{config_file}: not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{config_file}: expected a JSON object")
    return raw


def _batching_for(raw: dict, defaults: BatchingConfig) -> BatchingConfig:
    merged = {
        "max_batch_size": raw.get("max_batch_size", defaults.max_batch_size),
        "max_batch_delay_s": raw.get("max_batch_delay_ms", defaults.max_batch_delay_s * 1000) / 1000,
        "allowed_batch_sizes": tuple(raw.get("allowed_batch_sizes", defaults.allowed_batch_sizes)),
        "max_queue_size": raw.get("max_queue_size", defaults.max_queue_size),
    }
    return dataclasses.replace(defaults, **merged)  # what serving.json does not set stays the server's


def _quoted(names: dict[str, object]) -> str:
    return ", ".join(f"'{n}'" for n in names)
