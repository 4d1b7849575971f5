"""Keras 3 native models (`<version>/model.keras`), loaded with `keras.saving.load_model`.

The model is called on the TensorFlow backend inside one `tf.function` whose
input signature has a free batch dimension, so every batch size runs the same
traced graph, as a SavedModel's signature does. Inputs are the model's
`keras.Input`s by name (the keys, for a model built on a dict of inputs).
Outputs are named as the model returns them: the keys
of a dict output, else `output_0`, `output_1`, ... (the names Keras gives a
SavedModel export). A model without declared inputs (a subclassed model that
was never built on `keras.Input`s) cannot be described before a call, so it
is refused at load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from server.models.backend import BackendModel, ModelBackend
from server.models.backends.tf_specs import tensor_info, tensor_spec

MODEL_FILE = "model.keras"
PLATFORM = "keras"


class KerasBackend(ModelBackend):
    platform = PLATFORM

    def detect(self, version_dir: Path) -> bool:
        return (version_dir / MODEL_FILE).is_file()

    def describe(self) -> str:
        return f"a Keras 3 model ({MODEL_FILE})"

    def load(self, version_dir: Path, device: str) -> BackendModel:
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"{version_dir / MODEL_FILE}: Keras runs on {keras.backend.backend()!r}; "
                "the server serves Keras models on its TensorFlow backend (KERAS_BACKEND=tensorflow)"
            )
        with tf.device(device):
            model = keras.saving.load_model(version_dir / MODEL_FILE, compile=False)
        declared = list(getattr(model, "inputs", None) or [])
        if not declared:
            raise ValueError(
                f"{version_dir / MODEL_FILE}: the model declares no inputs (a subclassed model "
                "not built on keras.Input); save a functional or Sequential model"
            )
        structure = getattr(model, "input", None)
        # A model built on a dict of inputs is called with that dict: its keys name the inputs.
        named = list(structure.items()) if isinstance(structure, dict) else [(t.name, t) for t in declared]
        inputs = {name: tensor_info(name, t.dtype, t.shape) for name, t in named}
        if len(inputs) != len(named):
            raise ValueError(f"{version_dir / MODEL_FILE}: two inputs share a name: {[n for n, _ in named]}")
        single = named[0][0] if len(named) == 1 and not isinstance(structure, dict) else None
        signature = {name: tensor_spec(spec) for name, spec in inputs.items()}

        @tf.function(input_signature=[signature], reduce_retracing=True)
        def serve(tensors: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            return _named(model(tensors[single] if single else tensors, training=False))

        outputs = {
            name: tensor_info(name, spec.dtype, spec.shape)
            for name, spec in sorted(serve.get_concrete_function().structured_outputs.items())
        }

        def run_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with tf.device(device):
                result = serve({k: tf.convert_to_tensor(v) for k, v in batch.items()})
            return {k: v.numpy() for k, v in result.items()}

        return BackendModel(
            dict(sorted(inputs.items())),
            outputs,
            run_batch,
            PLATFORM,
            f"Keras {keras.__version__} on TensorFlow {tf.__version__}",
            handle=model,
        )


def _named(result: Any) -> dict[str, tf.Tensor]:
    if isinstance(result, Mapping):
        return {str(k): v for k, v in result.items()}
    if isinstance(result, Sequence) and not isinstance(result, (str, bytes)):
        return {f"output_{i}": v for i, v in enumerate(result)}
    return {"output_0": result}
