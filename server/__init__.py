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

glibc's malloc gives threads arenas of their own (up to 8 per core) and keeps
what they free; with a thread per call and 1 MiB upload chunks that shows as
resident memory that varies from run to run (a 256 MiB upload: 46-60 MiB of
growth, once 157). Unless MALLOC_ARENA_MAX is set, the server limits glibc to
2 arenas before any thread starts (36-40 MiB for the same upload). Elsewhere
than glibc this does nothing.
"""

import ctypes
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

M_ARENA_MAX = -8  # glibc's mallopt() parameter
MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    if "MALLOC_ARENA_MAX" in os.environ:  # glibc read it at start-up
        return
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)  # the process's own symbols: libc's, on Linux
    except (OSError, AttributeError):  # not glibc
        pass


_limit_malloc_arenas()
