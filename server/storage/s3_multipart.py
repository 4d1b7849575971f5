"""Streaming one object into S3: parts of `part_size` bytes, one uploading while the next fills.

Memory per upload is at most two part buffers (the part in flight and the
one filling), whatever the object's size; they are memory maps of their own,
unmapped when the upload ends. An object smaller than one part
goes up in a single PutObject. The object becomes visible only on
CompleteMultipartUpload, after every check passed; any failure, or the
caller going away, aborts the multipart upload so no parts are left behind.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from server.memory import release_freed_memory
from server.storage.store import StreamDigest

if TYPE_CHECKING:
    from server.storage.s3 import S3ObjectStore

log = logging.getLogger(__name__)


class PartBuffer:
    """A reusable buffer of exactly one part, in its own anonymous memory map.

    Mapped and unmapped directly (not through malloc), so a finished upload
    gives its memory back at once instead of leaving heap fragments behind.
    """

    def __init__(self, size: int) -> None:
        self.data = mmap.mmap(-1, size)
        self.used = 0

    @property
    def full(self) -> bool:
        return self.used == len(self.data)

    def fill(self, chunk: memoryview) -> memoryview:
        """Copy as much of `chunk` as fits; returns the rest."""
        take = min(len(chunk), len(self.data) - self.used)
        self.data[self.used : self.used + take] = chunk[:take]
        self.used += take
        return chunk[take:]

    def body(self) -> bytes | mmap.mmap:
        """What to send: the whole buffer (read as a file from the start), or a copy of its used part."""
        if not self.full:
            return self.data[: self.used]
        self.data.seek(0)
        return self.data

    def close(self) -> None:
        self.data.close()


class MultipartWriter:
    """Writes one object; `write` streams it, any exception aborts it."""

    def __init__(self, store: S3ObjectStore, key: str, content_type: str) -> None:
        self.store = store
        self.key = key
        self.content_type = content_type
        self.upload_id: str | None = None
        self.parts: list[dict[str, object]] = []
        self._in_flight: tuple[Future, PartBuffer] | None = None
        self._buffers: list[PartBuffer] = []

    def write(self, chunks: Iterable[bytes], digest: StreamDigest) -> str:
        """Stream the chunks through `digest` into the object; visible once this returns its SHA-256."""
        buffer = self._new_buffer()
        try:
            for chunk in chunks:
                digest.add(chunk)
                rest = memoryview(chunk)
                while rest:
                    rest = buffer.fill(rest)
                    if buffer.full:
                        buffer = self._send(buffer)
            sha256 = digest.finish()
            if self.upload_id is None:
                self.store.call(
                    "storing the object",
                    self.key,
                    "put_object",
                    Key=self.key,
                    Body=buffer.body(),
                    ContentType=self.content_type,
                )
                return sha256
            if buffer.used:
                self._send(buffer)
            self._wait()
            self.store.call(
                "completing the multipart upload",
                self.key,
                "complete_multipart_upload",
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
            log.debug("stored %s in %d parts", self.key, len(self.parts))
            return sha256
        except BaseException:
            self._abort()
            raise
        finally:
            for used in self._buffers:
                used.close()
            if self.upload_id is not None:
                release_freed_memory()

    def _new_buffer(self) -> PartBuffer:
        buffer = PartBuffer(self.store.part_size)
        self._buffers.append(buffer)
        return buffer

    def _send(self, buffer: PartBuffer) -> PartBuffer:
        """Start uploading `buffer` once the previous part is done; returns a free buffer."""
        if self.upload_id is None:
            reply = self.store.call(
                "starting a multipart upload",
                self.key,
                "create_multipart_upload",
                Key=self.key,
                ContentType=self.content_type,
            )
            self.upload_id = reply["UploadId"]
        free = self._wait()
        number = len(self.parts) + 1
        future = self.store.executor.submit(self._upload_part, number, buffer.body())
        self._in_flight = (future, buffer)
        if free is None:
            return self._new_buffer()
        free.used = 0
        return free

    def _upload_part(self, number: int, body: bytes | mmap.mmap) -> dict[str, object]:
        reply = self.store.call(
            f"uploading part {number}",
            self.key,
            "upload_part",
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": reply["ETag"]}

    def _wait(self) -> PartBuffer | None:
        """Wait for the part in flight (raising its error); returns its buffer for reuse."""
        if self._in_flight is None:
            return None
        future, buffer = self._in_flight
        self._in_flight = None
        self.parts.append(future.result())
        return buffer

    def _abort(self) -> None:
        """Let the part in flight finish, then abort the upload (remembered for later if S3 is down)."""
        if self._in_flight is not None:
            future, _ = self._in_flight
            self._in_flight = None
            future.exception()
        if self.upload_id is not None:
            self.store.abort_upload(self.key, self.upload_id)
