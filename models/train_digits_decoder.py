"""Train the demo image model `digits_decoder` and export it as a TF-Serving SavedModel.

The model draws a digit: given a class index 0-9 it returns the mean 8x8
image of that class in scikit-learn's bundled digits data set (no download
needed), upscaled (bilinear) to 32x32. Its `serving_default` signature takes
``digit`` (int32 [None]) and returns ``image`` (float32 [None, 32, 32, 1],
values in [0, 1]); ``models/digits_decoder/serving.json`` declares ``image``
a PNG file output, so the server answers with stored files and their URLs.

Usage (from the repository root):

    .venv/bin/python models/train_digits_decoder.py --out models/digits_decoder/1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

NUM_CLASSES = 10
SIZE = 32


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("models/digits_decoder/1"),
        help="SavedModel version directory (replaced if it exists)",
    )
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Class indices (int32 [N]) and their images (float32 [N, 8, 8, 1] in [0, 1])."""
    digits = load_digits()
    return digits.target.astype(np.int32), (digits.images / 16.0).astype(np.float32)[..., np.newaxis]


def class_means(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The mean image of each class: what the model learns (float32 [10, 8, 8, 1])."""
    return np.stack([x[y == label].mean(axis=0) for label in range(NUM_CLASSES)])


def build_model() -> keras.Model:
    """class index -> 8x8 image (the squared error is smallest at the class mean)."""
    return keras.Sequential(
        [
            keras.Input(shape=(), dtype="int32", name="digit"),
            keras.layers.Embedding(NUM_CLASSES, 64),
            keras.layers.Reshape((8, 8, 1)),
        ]
    )


def export_saved_model(model: keras.Model, out: Path) -> None:
    """Write a SavedModel with serving_default: digit -> image (32x32, clipped to [0, 1])."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def draw(digit: tf.Tensor) -> dict[str, tf.Tensor]:
        small = model(digit, training=False)
        large = tf.image.resize(small, (SIZE, SIZE), method="bilinear")
        return {"image": tf.clip_by_value(large, 0.0, 1.0)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=draw,
        input_signature=[tf.TensorSpec([None], tf.int32, name="digit")],
    )
    archive.write_out(str(out), verbose=False)


def main() -> None:
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    y, x = load_data()
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(y, x, epochs=args.epochs, batch_size=len(y), verbose=0)

    export_saved_model(model, args.out)
    serve = tf.saved_model.load(str(args.out)).signatures["serving_default"]
    drawn = serve(digit=tf.range(NUM_CLASSES, dtype=tf.int32))["image"].numpy()
    expected = tf.image.resize(class_means(y, x), (SIZE, SIZE), method="bilinear").numpy()
    error = float(np.abs(drawn - expected).max())
    if error > 0.02:
        raise SystemExit(f"the model is {error:.4f} away from the class means; train longer")
    (args.out / "metrics.json").write_text(
        json.dumps(
            {
                "max_abs_error_vs_class_mean": round(error, 5),
                "samples": len(y),
                "epochs": args.epochs,
                "seed": args.seed,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"max |image - class mean|: {error:.5f}")


if __name__ == "__main__":
    main()
