"""The Keras backend on models built here: how inputs and outputs are named and called."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from server.models.backends.keras import KerasBackend


def saved(tmp_path: Path, model: keras.Model) -> Path:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    model.save(version / "model.keras")
    return version


def test_a_model_on_a_dict_of_inputs_takes_its_keys(tmp_path: Path) -> None:
    image, meta = keras.Input((3,), name="img"), keras.Input((2,), name="meta")
    joined = keras.layers.Concatenate()([image, meta])
    with pytest.warns(UserWarning):  # Keras warns that the keys are not the tensors' names
        model = keras.Model({"x": image, "y": meta}, {"score": keras.layers.Dense(1)(joined)})
    loaded = KerasBackend().load(saved(tmp_path, model), "/CPU:0")
    assert (list(loaded.inputs), list(loaded.outputs)) == (["x", "y"], ["score"])
    x, y = np.ones((2, 3), np.float32), np.full((2, 2), 2.0, np.float32)
    np.testing.assert_allclose(
        loaded.run_batch({"x": x, "y": y})["score"], np.asarray(model({"x": x, "y": y})["score"])
    )


def test_a_list_of_inputs_by_name_and_an_unnamed_output(tmp_path: Path) -> None:
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    loaded = KerasBackend().load(saved(tmp_path, keras.Model([a, b], keras.layers.Add()([a, b]))), "/CPU:0")
    assert (list(loaded.inputs), list(loaded.outputs)) == (["a", "b"], ["output_0"])
    assert loaded.outputs["output_0"].shape == (-1, 3)
    ones = np.ones((1, 3), np.float32)
    assert loaded.run_batch({"a": ones, "b": ones})["output_0"].tolist() == [[2.0, 2.0, 2.0]]
