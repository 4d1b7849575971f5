"""Building the message stream of `UploadService.Upload`: metadata first, then chunks."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from serving.v1 import upload_pb2

DEFAULT_CHUNK_BYTES = 1024 * 1024

UploadSource = str | os.PathLike | Iterable[bytes]
"""The path of a file, or an iterable of byte chunks (read lazily, never all at once)."""


def upload_requests(
    source: UploadSource,
    *,
    file_name: str | None = None,
    content_type: str = "",
    size: int = 0,
    sha256: str = "",
    key_prefix: str = "",
    task_id: str = "",
    chunk_size: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[upload_pb2.UploadRequest]:
    """The metadata message, then one message per chunk (paths are checked at once).

    For a path, `file_name` defaults to its base name and `size` to its size;
    the server checks a given `size` and `sha256` and stores nothing on a mismatch.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        chunks: Iterable[bytes] = _file_chunks(path, chunk_size)
        file_name = path.name if file_name is None else file_name
        size = size or path.stat().st_size
    else:
        chunks = source
    metadata = upload_pb2.UploadMetadata(
        file_name=file_name or "",
        content_type=content_type,
        size=size,
        sha256=sha256,
        key_prefix=key_prefix,
        task_id=task_id,
    )
    return _messages(metadata, chunks)


def _messages(metadata: upload_pb2.UploadMetadata, chunks: Iterable[bytes]) -> Iterator[upload_pb2.UploadRequest]:
    yield upload_pb2.UploadRequest(metadata=metadata)
    for chunk in chunks:
        if chunk:
            yield upload_pb2.UploadRequest(chunk=bytes(chunk))


def _file_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(chunk_size):
            yield chunk
