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


def choose_device(intra_op_threads: int = 0, inter_op_threads: int = 0) -> str:
    """Configure TensorFlow once and return the device string models run on.

    Thread counts of 0 keep TensorFlow's defaults (one per core). A batching
    server on few cores often does better with 1: TensorFlow's idle pool threads
    spin and take CPU from the RPC threads.
    """
    global _chosen
    if _chosen is not None:
        return _chosen
    if intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    if inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # already initialised by an earlier call
            log.warning("could not enable memory growth on %s: %s", gpu.name, exc)
    _chosen = "/device:GPU:0" if gpus else "/device:CPU:0"
    log.info("models run on %s (%d GPU(s) visible)", _chosen, len(gpus))
    return _chosen
