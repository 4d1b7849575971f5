"""How a loaded SavedModel calls its signature: the flat call when it agrees with the public one."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import tensorflow as tf

from server.batching import BatchingConfig
from server.models.backend import TensorInfo
from server.models.backends.savedmodel import flat_caller
from server.models.model import load_model
from tests.support.servers import MODEL_DIR

INPUTS = {"x": TensorInfo("x", np.dtype(np.float32), (-1, 2))}


def public(tensors: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"y": tensors["x"] * 2.0}


class FlatSignature:
    """What flat_caller reads from a loaded signature, with a chosen flat function."""

    def __init__(self, flat) -> None:
        self._inference_function = self
        self._flat = flat
        self.captured_inputs: list[tf.Tensor] = []
        self.structured_outputs = {"y": tf.TensorSpec([None, 2], tf.float32)}

    def call_flat(self, *args: tf.Tensor) -> list[tf.Tensor]:
        return self._flat(*args)


def test_the_digits_model_uses_the_flat_call_and_gives_the_signature_outputs(digits_reference) -> None:
    model = load_model("digits", 1, MODEL_DIR / "digits" / "1", "/CPU:0", BatchingConfig())
    try:
        assert cast(Any, model.loaded.run_batch).call.__qualname__.startswith("flat_caller")
        rows = np.random.default_rng(3).random((5, 8, 8, 1), dtype=np.float32)
        np.testing.assert_array_equal(model.run_batch({"image": rows})["probabilities"], digits_reference(rows))
    finally:
        model.close()


def test_a_signature_without_the_internals_gets_the_public_call() -> None:
    assert flat_caller(object(), INPUTS, public) is public


def test_a_flat_call_that_disagrees_is_not_used() -> None:
    assert flat_caller(FlatSignature(lambda x: [x * 3.0]), INPUTS, public) is public


def test_a_flat_call_that_agrees_is_used() -> None:
    call = flat_caller(FlatSignature(lambda x: [x * 2.0]), INPUTS, public)
    assert call is not public
    assert call({"x": tf.constant([[1.0, 2.0]])})["y"].numpy().tolist() == [[2.0, 4.0]]
