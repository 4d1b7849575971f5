"""Device choice: the first GPU TensorFlow sees, else the CPU.

Memory growth is switched on for every GPU so several server processes (or a
server and its workers) can share one card. Nothing else in the server names a
device: the same code runs on either.
"""

from __future__ import annotations

import logging

import tensorflow as tf

log = logging.getLogger(__name__)
_chosen: str | None = None


def choose_device() -> str:
    """Configure GPUs once and return the device string models run on."""
    global _chosen
    if _chosen is not None:
        return _chosen
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # already initialised by an earlier call
            log.warning("could not enable memory growth on %s: %s", gpu.name, exc)
    _chosen = "/device:GPU:0" if gpus else "/device:CPU:0"
    log.info("models run on %s (%d GPU(s) visible)", _chosen, len(gpus))
    return _chosen
