"""The serving backend: gRPC services, the batching core, the HTTP shim and their operation.

TensorFlow reads the variables below once, when it is first imported, so
their defaults are set here, before any module of the server imports it; the
environment still wins.

- TF_CPP_MIN_LOG_LEVEL=2 keeps TensorFlow's C++ start-up notices out of the log.
- TF_ENABLE_ONEDNN_OPTS is left to TensorFlow (its Linux x86 builds turn its
  oneDNN kernels on for CPUs with AVX512_VNNI and newer). Measured on the same
  2-core VM with the serving benchmark (docs/benchmarks.md): on MobileNetV2
  the server does 73-92 requests/s with them against 43 without; on the
  digits model 1,495-1,512 against 1,257-1,379 at concurrency 64, and a p50
  about 0.2 ms higher at concurrency 1 (1.29-1.47 against 1.09-1.22 ms). Set
  TF_ENABLE_ONEDNN_OPTS=0 for a tiny model served one request at a time.

glibc's heap is limited to 2 arenas here, before any thread starts
(`server.memory` says why).
"""

import os

from server.memory import limit_malloc_arenas

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
limit_malloc_arenas()
