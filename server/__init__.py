"""The serving backend: gRPC services, the batching core, the HTTP shim and their operation.

TensorFlow reads the variables below once, when it is first imported, so
their defaults are set here, before any module of the server imports it; the
environment still wins.

- TF_CPP_MIN_LOG_LEVEL=2 keeps TensorFlow's C++ start-up notices out of the log.
- TF_ENABLE_ONEDNN_OPTS=0 turns off TensorFlow's oneDNN kernels (its Linux x86
  builds turn them on for CPUs with AVX512_VNNI and newer). For the small
  batches of online serving they cost more than they save: on the digits
  model, batch 1 takes 0.32 ms without them against 0.42 ms with them, batch
  8 0.46 against 0.74 ms, and a server at concurrency 1 spends 30% less CPU
  per request. From batch 256 up they are faster (4.3 against 3.6 ms at
  512): set TF_ENABLE_ONEDNN_OPTS=1 for large batches of convolutions. See
  docs/benchmarks.md.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
