"""Save the digits demo model as a Keras 3 native file: models/digits_keras/1/model.keras.

The same network and weights as the SavedModel in ``--saved-model`` (written by
train_digits.py), so both answer the same: input ``image`` (float32 [None, 8,
8, 1]), output ``probabilities`` (float32 [None, 10]), the same labels.txt.
The weights are read from the SavedModel's variables; nothing is trained or
downloaded. The script checks that both give the same probabilities on the
test images before it writes anything.

Usage (from the repository root):
    .venv/bin/python models/export_digits_keras.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import build_model, load_data


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved-model", type=Path, default=Path("models/digits/1"))
    parser.add_argument(
        "--out", type=Path, default=Path("models/digits_keras/1"), help="version directory (replaced if it exists)"
    )
    return parser.parse_args()


def keras_model(saved_model: Path) -> keras.Model:
    """build_model()'s network with the SavedModel's weights, answering {"probabilities": ...}."""
    network = build_model()
    saved = [v for v in tf.saved_model.load(str(saved_model)).variables if "seed_generator" not in v.name]
    if [tuple(v.shape) for v in saved] != [tuple(w.shape) for w in network.weights]:
        raise SystemExit(f"{saved_model}: its variables do not fit train_digits.build_model()")
    network.set_weights([v.numpy() for v in saved])
    image = keras.Input(shape=(8, 8, 1), name="image")
    return keras.Model(image, {"probabilities": network(image)}, name="digits")


def main() -> None:
    args = parse_args()
    model = keras_model(args.saved_model)
    _, x_test, _, _ = load_data(seed=0)
    want = tf.saved_model.load(str(args.saved_model)).signatures["serving_default"](image=tf.constant(x_test))
    got = model(x_test, training=False)["probabilities"]
    np.testing.assert_allclose(np.asarray(got), want["probabilities"].numpy(), rtol=1e-5, atol=1e-6)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    model.save(args.out / "model.keras")
    shutil.copy(args.saved_model / "labels.txt", args.out / "labels.txt")
    print(f"wrote {args.out / 'model.keras'} ({(args.out / 'model.keras').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
