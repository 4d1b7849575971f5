"""The seam between the server and a model format: `ModelBackend` and what it loads.

A backend recognises its files in a version folder (`detect`), loads them for
a device (`load`) and hands back a `BackendModel`: input and output specs, one
function that runs a whole batch of numpy arrays, its platform name and the
object that keeps the loaded model alive. Everything else a served model has
(labels, file outputs, validation, metadata, warm-up, the Batcher) is
format-neutral and lives in `LoadedModel`.

The backends are listed in `server.models.backends.BACKENDS`; adding a format
is one module there and one test folder (docs/architecture.md says how).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from server.models.warmup import WARMUP_FILE, warmup_records
from serving.v1 import tensor_pb2
from wire import codec

BatchFunction = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TensorInfo:
    """Name, numpy dtype and shape (-1: any size) of an input or output."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def data_type(self) -> tensor_pb2.DataType:
        return codec.data_type_of(np.empty(0, self.dtype))

    def describe(self) -> str:
        return f"{codec.dtype_name(self.data_type)} {list(self.shape)}"

    def to_proto(self) -> tensor_pb2.TensorSpec:
        return tensor_pb2.TensorSpec(name=self.name, dtype=self.data_type, shape=self.shape)


@dataclass
class BackendModel:
    """One version loaded by a backend: its specs (by name, sorted) and its batch function."""

    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    run_batch: BatchFunction = field(repr=False)  # inputs by name (validated) -> outputs by name
    platform: str  # Triton's platform name where it has one: "tensorflow_savedmodel"
    framework: str  # what ran it, for metadata: "TensorFlow 2.21.0"
    handle: object = field(default=None, repr=False)  # keeps the loaded model (and its variables) alive


class ModelBackend(ABC):
    """A model format: how to recognise, load and warm up one version folder."""

    platform: str

    @abstractmethod
    def detect(self, version_dir: Path) -> bool:
        """Whether the folder holds this format's files (cheap: it runs on every repository poll)."""

    @abstractmethod
    def load(self, version_dir: Path, device: str) -> BackendModel:
        """Load the version for `device` (a TensorFlow device name); raises on anything unusable."""

    def describe(self) -> str:
        """What a version folder of this format holds, for messages about folders that hold none."""
        return self.platform

    def warmup_inputs(self, version_dir: Path) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(record number, inputs) to run once before serving: TF Serving's warm-up records
        (`assets.extra/tf_serving_warmup_requests`) by default, whatever the format."""
        return warmup_records(version_dir / WARMUP_FILE)
