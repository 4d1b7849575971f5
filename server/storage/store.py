"""`ObjectStore`: the one interface to object storage (S3 via boto3, or a local folder).

Used by UploadService, by file outputs of models and by task export/import.
Writes stream: `put` takes an iterable of byte chunks, counts and hashes them
as they pass (`StreamDigest`), enforces the size limit and the caller's
expectations, and makes the object visible only once everything checked out.
Any failure, or the caller going away mid-stream, leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from server.errors import DataLoss, InvalidArgument, ResourceExhausted
from server.storage import keys

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredObject:
    """Where an object was stored and what it holds."""

    key: str
    uri: str
    url: str
    presigned_url: str
    size: int
    sha256: str
    content_type: str


def check_sha256(value: str, field: str = "sha256") -> str:
    """A lower-case hex SHA-256, or InvalidArgument naming `field`."""
    digest = value.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise InvalidArgument(f"{field}: expected 64 hex digits (a SHA-256), got {value!r}")
    return digest


class StreamDigest:
    """Counts and hashes the chunks of one object as they stream past.

    `add` raises ResourceExhausted past `max_bytes` and InvalidArgument past
    the expected size, so an oversized stream stops early; `finish` checks the
    final size and SHA-256 (DataLoss on a mismatch).
    """

    def __init__(self, key: str, max_bytes: int, size: int | None = None, sha256: str | None = None) -> None:
        if size is not None and size > max_bytes:
            raise ResourceExhausted(
                f"upload of {size} bytes exceeds the limit of {max_bytes} bytes (MAX_UPLOAD_BYTES); nothing stored"
            )
        self.key = key
        self.max_bytes = max_bytes
        self.expected_size = size
        self.expected_sha256 = check_sha256(sha256) if sha256 else None
        self.size = 0
        self._hash = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise ResourceExhausted(
                f"upload exceeds the limit of {self.max_bytes} bytes (MAX_UPLOAD_BYTES); nothing stored"
            )
        if self.expected_size is not None and self.size > self.expected_size:
            raise InvalidArgument(f"size: more than the declared {self.expected_size} bytes were sent; nothing stored")
        self._hash.update(chunk)

    def finish(self) -> str:
        """Check the totals; returns the hex SHA-256 of everything added."""
        if self.expected_size is not None and self.size != self.expected_size:
            raise InvalidArgument(
                f"size: {self.size} bytes were sent but {self.expected_size} were declared; nothing stored"
            )
        digest = self._hash.hexdigest()
        if self.expected_sha256 is not None and digest != self.expected_sha256:
            raise DataLoss(
                f"sha256: the data sent hashes to {digest}, not the declared {self.expected_sha256}; nothing stored"
            )
        return digest


class ObjectStore(ABC):
    """Streams objects in and out of one bucket or folder.

    Keys are `/`-separated relative paths (see `server.storage.keys`).
    `max_bytes` bounds every `put`.
    """

    def __init__(self, key_prefix: str, max_bytes: int) -> None:
        self.key_prefix = keys.safe_prefix(key_prefix)
        self.max_bytes = max_bytes

    def new_key(self, file_name: str, key_prefix: str = "") -> str:
        """A fresh key under the store's prefix and the (sanitized) `key_prefix`."""
        return keys.new_key(file_name, self.key_prefix, key_prefix)

    @abstractmethod
    def put(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        size: int | None = None,
        sha256: str | None = None,
    ) -> StoredObject:
        """Stream `chunks` into the object `key`; visible only if every check passes.

        `size` and `sha256` are the caller's expectations (None: not checked).
        ResourceExhausted past `max_bytes`, InvalidArgument on a size mismatch,
        DataLoss on a checksum mismatch; storage failures are Unavailable or
        FailedPrecondition. In every failure nothing is stored.
        """

    def put_bytes(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> StoredObject:
        """Store a small object held in memory."""
        return self.put(key, (data,), content_type=content_type, size=len(data))

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the object (close it); NotFound if missing."""

    def get(self, key: str) -> bytes:
        """The whole object; NotFound if missing."""
        with self.open(key) as stream:
            return stream.read()

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Stable address: `s3://bucket/key` or `file:///...`."""

    @abstractmethod
    def url(self, key: str) -> str:
        """Address to fetch the object over HTTP(S)."""

    def presigned_url(self, key: str) -> str:
        """A short-lived signed GET URL, or "" when the store has none."""
        return ""

    @abstractmethod
    def key_of(self, uri: str) -> str:
        """The key of an object of this store given its uri (or the key itself)."""

    def describe(self, key: str, size: int, sha256: str, content_type: str) -> StoredObject:
        """The `StoredObject` for a key that was just written."""
        return StoredObject(
            key=key,
            uri=self.uri(key),
            url=self.url(key),
            presigned_url=self.presigned_url(key),
            size=size,
            sha256=sha256,
            content_type=content_type,
        )

    def close(self) -> None:  # noqa: B027 (optional: nothing to release unless a subclass says so)
        """Release connections and threads."""
