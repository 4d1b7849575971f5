"""Train the demo digits CNN and export it as a TF-Serving SavedModel.

Trains a small Keras CNN on scikit-learn's bundled 8x8 digits data set (no
download needed) and writes, into ``--out``, a SavedModel whose
``serving_default`` signature takes ``image`` (float32 [None, 8, 8, 1], values
in [0, 1]) and returns ``probabilities`` (float32 [None, 10]), plus
``labels.txt`` and ``metrics.json``. Sample PNGs for trying the server go to
``models/digits/samples/``.

Usage (from the repository root):

    .venv/bin/python models/train_digits.py --out models/digits/1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

NUM_CLASSES = 10
SAMPLES_DIR = Path(__file__).resolve().parent / "digits" / "samples"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("models/digits/1"), help="SavedModel version directory (replaced if it exists)"
    )
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-samples", action="store_true", help="do not write sample PNGs")
    return parser.parse_args()


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return x_train, x_test (float32 [N, 8, 8, 1] in [0, 1]), y_train, y_test."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_train, x_test, y_train, y_test


def build_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="image"),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ]
    )


def export_saved_model(model: keras.Model, out: Path) -> None:
    """Write a SavedModel with serving_default: image -> probabilities."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda image: {"probabilities": model(image, training=False)},
        input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")],
    )
    archive.write_out(str(out), verbose=False)


def verify_saved_model(out: Path, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Reload the SavedModel, print its signature, return its test accuracy."""
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    print("input signature:", serve.structured_input_signature)
    print("outputs:", serve.structured_outputs)
    probs = serve(image=tf.constant(x_test))["probabilities"].numpy()
    return float(np.mean(probs.argmax(axis=1) == y_test))


def write_metadata(out: Path, metrics: dict[str, float | int]) -> None:
    (out / "labels.txt").write_text("".join(f"{i}\n" for i in range(NUM_CLASSES)))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def write_samples(x_test: np.ndarray, y_test: np.ndarray, predicted: np.ndarray) -> None:
    """Save one correctly classified test image per digit, at 8x8 and 64x64."""
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    for label in range(NUM_CLASSES):
        index = int(np.flatnonzero((y_test == label) & (predicted == label))[0])
        pixels = np.rint(x_test[index, :, :, 0] * 255.0).astype(np.uint8)
        image = Image.fromarray(pixels)  # uint8 2-D -> mode "L"
        image.save(SAMPLES_DIR / f"digit_{label}.png")
        image.resize((64, 64), Image.Resampling.NEAREST).save(SAMPLES_DIR / f"digit_{label}_64.png")


def main() -> None:
    args = parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    keras.utils.set_random_seed(args.seed)

    x_train, x_test, y_train, y_test = load_data(args.seed)
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=2)
    predicted = model.predict(x_test, verbose=0).argmax(axis=1)
    accuracy = float(np.mean(predicted == y_test))

    export_saved_model(model, args.out)
    served_accuracy = verify_saved_model(args.out, x_test, y_test)
    if abs(served_accuracy - accuracy) > 1e-9:
        raise SystemExit(f"SavedModel accuracy {served_accuracy} != Keras {accuracy}")
    write_metadata(
        args.out,
        {
            "test_accuracy": round(accuracy, 4),
            "train_samples": len(x_train),
            "test_samples": len(x_test),
            "epochs": args.epochs,
            "seed": args.seed,
        },
    )
    if not args.no_samples:
        write_samples(x_test, y_test, predicted)
    print(f"test accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    main()
