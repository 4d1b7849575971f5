"""One served model version, whatever its format: specs, labels, file outputs, validation, batcher.

The format's part (files, loading, the batch function) is a `BackendModel`
from one of `server.models.backends`.

Life cycle (KServe's template, without the async branching):
load -> warm up -> (validate -> batch -> predict -> postprocess)* -> close.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from server.batching import Batcher, BatchingConfig
from server.errors import InvalidArgument
from server.models import images
from server.models.backend import BackendModel, ModelBackend, TensorInfo
from server.models.backends import backend_for, known_formats
from server.models.file_outputs import FileOutput, parse_file_outputs
from server.models.warmup import WARMUP_FILE
from serving.v1 import model_pb2
from wire import codec

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"  # the one signature name every protocol reports, whatever the format
LABELS_FILE = "labels.txt"
SERVING_CONFIG = "serving.json"  # per-model batching overrides and file outputs, in models/<name>/


@dataclass
class LoadedModel:
    """A model version ready to serve."""

    name: str
    version: int
    path: Path
    labels: list[str]
    device: str
    batching: BatchingConfig
    backend: ModelBackend = field(repr=False)
    loaded: BackendModel = field(repr=False)
    batcher: Batcher = field(init=False, repr=False)
    load_seconds: float = 0.0
    file_outputs: dict[str, FileOutput] = field(default_factory=dict)  # stored as files, by output

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.run_batch, self.batching, name=self.name)

    @property
    def inputs(self) -> dict[str, TensorInfo]:
        return self.loaded.inputs

    @property
    def outputs(self) -> dict[str, TensorInfo]:
        return self.loaded.outputs

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
        return self.loaded.run_batch(batch)

    def warm_up(self) -> int:
        """Run every batch size the model will see once, so no caller pays for it, then the
        version's TF Serving warm-up records (`assets.extra/tf_serving_warmup_requests`); how many.

        A model with string inputs (serialized tf.Examples, text) is warmed up from its records only,
        as TF Serving does: no made-up string is a valid input of every such model.
        """
        strings = [name for name, spec in self.inputs.items() if spec.dtype == object]
        sizes = () if strings else self.batching.allowed_batch_sizes or (1,)
        if strings:
            log.info(
                "model %s v%d: string input%s %s, warmed up from %s only",
                self.name,
                self.version,
                "s" if len(strings) > 1 else "",
                ", ".join(strings),
                WARMUP_FILE,
            )
        for size in sizes:
            batch = {
                name: np.zeros((size, *[max(d, 1) for d in spec.shape[1:]]), dtype=spec.dtype)
                for name, spec in self.inputs.items()
            }
            self.run_batch(batch)
        replayed = 0
        for index, inputs in self.backend.warmup_inputs(self.path):
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
                raise InvalidArgument(f"input '{name}': dtype {got} does not match the model's {spec.describe()}")
            if array.ndim != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
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

    def metadata(
        self, available_versions: list[int], served_versions: list[int] | None = None
    ) -> model_pb2.ModelMetadata:
        batching = self.batching
        return model_pb2.ModelMetadata(
            name=self.name,
            version=self.version,
            available_versions=available_versions,
            served_versions=served_versions or [self.version],
            platform=f"{self.loaded.platform} ({self.loaded.framework})",
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


def load_model(
    name: str, version: int, path: Path, device: str, defaults: BatchingConfig, backend: ModelBackend | None = None
) -> LoadedModel:
    """Load a version with its backend (the one whose files it holds, unless given) and warm it up."""
    started = time.monotonic()
    backend = backend or backend_for(path)
    if backend is None:
        raise ValueError(f"{path}: no model files: expected {known_formats()}")
    loaded = backend.load(path, device)
    config = serving_config(path.parent)
    model = LoadedModel(
        name=name,
        version=version,
        path=path,
        labels=_read_labels(path),
        device=device,
        batching=_batching_for(config, defaults),
        backend=backend,
        loaded=loaded,
        file_outputs=parse_file_outputs(config.get("file_outputs"), loaded.outputs, str(path.parent / SERVING_CONFIG)),
    )
    try:
        warmed = model.warm_up()
    except BaseException:
        model.close(drain=False)  # its Batcher's thread would otherwise keep the model alive
        raise
    model.load_seconds = time.monotonic() - started
    log.info(
        "loaded model %s version %d (%s) in %.2fs (%d warm-up records): inputs %s, outputs %s, %d labels",
        name,
        version,
        loaded.platform,
        model.load_seconds,
        warmed,
        {k: v.describe() for k, v in loaded.inputs.items()},
        {k: v.describe() for k, v in loaded.outputs.items()},
        len(model.labels),
    )
    return model


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


def _quoted(names: Mapping[str, object]) -> str:
    return ", ".join(f"'{n}'" for n in names)
