"""`LocalObjectStore`: objects as files under one folder (UPLOAD_DIR), for demos and tests.

A write goes to a temporary file in `<root>/.incoming/` (same file system)
and is renamed into place only when complete and checked, so no reader ever
sees a half-written object. Keys never start with a dot, so `.incoming`
cannot collide with an object; the HTTP shim serves the folder read-only
under `/files/<key>` and skips dot paths.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote, urlparse

from server.errors import InvalidArgument, NotFound
from server.storage.keys import check_key
from server.storage.store import DEFAULT_CONTENT_TYPE, ObjectStore, StoredObject, StreamDigest

INCOMING = ".incoming"
FILES_PATH = "/files/"
MAX_NAME_BYTES = 255  # a file name on Linux file systems (NAME_MAX)


class LocalObjectStore(ObjectStore):
    """Objects under `root`; URLs are `<public_base_url>/files/<key>`."""

    def __init__(
        self,
        root: Path,
        *,
        key_prefix: str = "",
        max_bytes: int,
        public_base_url: str = "",
        fsync: bool = False,
    ) -> None:
        super().__init__(key_prefix, max_bytes)
        self.root = root.resolve()
        self.public_base_url = public_base_url.rstrip("/")
        self.fsync = fsync

    def path_of(self, key: str) -> Path:
        """The file of a key, guaranteed to be inside `root`."""
        longest = max(len(segment.encode()) for segment in check_key(key).split("/"))
        if longest > MAX_NAME_BYTES:
            raise InvalidArgument(
                f"object key: a path segment of {longest} bytes; the local folder store takes at most "
                f"{MAX_NAME_BYTES} (a file name)"
            )
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidArgument(f"object key {key!r}: outside the store")
        return path

    def put(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        size: int | None = None,
        sha256: str | None = None,
    ) -> StoredObject:
        path = self.path_of(key)
        digest = StreamDigest(key, self.max_bytes, size, sha256)
        incoming = self.root / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=incoming, prefix="upload-", suffix=".part")
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.add(chunk)
                    out.write(chunk)
                if self.fsync:
                    out.flush()
                    os.fsync(out.fileno())
            sha = digest.finish()
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_dir(path.parent)
        return self.describe(key, digest.size, sha, content_type)

    def open(self, key: str) -> BinaryIO:
        try:
            return self.path_of(key).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"object '{key}' not found in {self.root}") from None

    def delete(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def uri(self, key: str) -> str:
        return self.path_of(key).as_uri()

    def url(self, key: str) -> str:
        return f"{self.public_base_url}{FILES_PATH}{quote(key)}"

    def key_of(self, uri: str) -> str:
        try:
            parsed = urlparse(uri)
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            raise InvalidArgument(f"uri {uri!r}: not a URI or key ({exc})") from None
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path))
            if not path.is_relative_to(self.root):
                raise InvalidArgument(f"uri {uri!r}: not inside the local object store {self.root}")
            return check_key(path.relative_to(self.root).as_posix())
        if parsed.scheme:
            raise InvalidArgument(f"uri {uri!r}: expected file://{self.root}/... or a key of the local object store")
        return check_key(uri)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
