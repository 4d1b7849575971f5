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
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

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
