"""glibc's heap: fewer arenas, and freed memory given back to the operating system.

glibc's malloc gives threads arenas of their own (up to 8 per core) and keeps
what they free; with a thread per call and 1 MiB upload chunks that shows as
resident memory that varies from run to run (a 256 MiB upload: 46-60 MiB of
growth, once 157). Unless MALLOC_ARENA_MAX is set, the server limits glibc to
2 arenas before any thread starts (36-40 MiB for the same upload); `server`'s
`__init__` does that when it is first imported.

A streamed upload allocates and frees many megabyte-sized buffers (gRPC
messages, HTTP bodies) across threads; glibc keeps such freed memory in its
per-thread arenas, so without a trim the resident size of a long-running
server creeps up upload after upload. `malloc_trim(0)` returns it. On other
C libraries this is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable

M_ARENA_MAX = -8  # glibc's mallopt() parameter
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS arenas, unless MALLOC_ARENA_MAX is set (glibc read it at start-up)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)  # the process's own symbols: libc's, on Linux


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once; None elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return freed heap memory to the operating system (glibc); cheap next to a multipart upload."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
