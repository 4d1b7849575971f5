"""Giving freed heap memory back to the operating system after a large transfer.

A streamed upload allocates and frees many megabyte-sized buffers (gRPC
messages, HTTP bodies) across threads; glibc keeps such freed memory in its
per-thread arenas, so without a trim the resident size of a long-running
server creeps up upload after upload. `malloc_trim(0)` returns it. On other
C libraries this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Callable


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
