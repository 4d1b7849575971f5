"""Benchmark models built in code, cached under .cache/bench-models/ (never downloaded, never committed).

`mobilenet_v2()`: `keras.applications.MobileNetV2(weights=None)` (random weights, seed 0,
224x224x3 float32 in, 1000 scores out), exported as a SavedModel version folder.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.servers import ROOT

CACHE = ROOT / ".cache" / "bench-models"


def mobilenet_v2(cache: Path = CACHE) -> Path:
    """A model repository holding `mobilenet_v2/1`; built on first use (about a minute)."""
    version = cache / "mobilenet_v2" / "1"
    if not (version / "saved_model.pb").exists():
        import keras

        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV2(weights=None)
        version.parent.mkdir(parents=True, exist_ok=True)
        model.export(str(version), format="tf_saved_model", verbose=False)
    return cache


if __name__ == "__main__":
    print(mobilenet_v2())
