"""LocalObjectStore: atomic writes, limits, checksums and keys that stay inside the folder."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.errors import ServingError
from server.storage.local import LocalObjectStore
from tests.support.s3_servers import chunks_of, local_files


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "uploads", key_prefix="up", max_bytes=1000, public_base_url="http://h:8080/")


def test_round_trip(store: LocalObjectStore) -> None:
    data = os.urandom(900)
    key = store.new_key("../a b.bin", "../../x")
    stored = store.put(
        key,
        chunks_of(data, 100),
        content_type="application/x-test",
        size=900,
        sha256=hashlib.sha256(data).hexdigest().upper(),
    )
    assert key.startswith("up/x/") and key.endswith("-a_b.bin")
    assert stored.size == 900 and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.uri == (store.root / key).as_uri()
    assert stored.url == f"http://h:8080/files/{key}"
    assert stored.presigned_url == "" and stored.content_type == "application/x-test"
    assert store.get(key) == data and store.exists(key)
    assert store.key_of(stored.uri) == key and store.key_of(key) == key
    assert local_files(store.root) == [key]  # no temporary file left
    store.delete(key)
    store.delete(key)
    assert not store.exists(key)


def _expect(code: grpc.StatusCode, call) -> str:
    with pytest.raises(ServingError) as caught:
        call()
    assert caught.value.code == code
    return caught.value.message


def test_failures_store_nothing(store: LocalObjectStore) -> None:
    key = store.new_key("f.bin")
    message = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: store.put(key, chunks_of(b"x" * 1001, 100)))
    assert message == "upload exceeds the limit of 1000 bytes (MAX_UPLOAD_BYTES); nothing stored"
    message = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: store.put(key, [b"x"], size=5000))
    assert "upload of 5000 bytes exceeds the limit of 1000 bytes" in message
    message = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: store.put(key, [b"abc"], size=4))
    assert message == "size: 3 bytes were sent but 4 were declared; nothing stored"
    message = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: store.put(key, [b"abc"], size=2))
    assert message == "size: more than the declared 2 bytes were sent; nothing stored"
    message = _expect(grpc.StatusCode.DATA_LOSS, lambda: store.put(key, [b"abc"], sha256="0" * 64))
    assert message.startswith(f"sha256: the data sent hashes to {hashlib.sha256(b'abc').hexdigest()}, not")
    message = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: store.put(key, [b"abc"], sha256="xyz"))
    assert message == "sha256: expected 64 hex digits (a SHA-256), got 'xyz'"
    assert local_files(store.root) == []


def test_a_stream_that_fails_midway_leaves_nothing(store: LocalObjectStore) -> None:
    seen: list[list[str]] = []

    def chunks() -> Iterator[bytes]:
        yield b"a" * 100
        seen.append(local_files(store.root))  # the half-written file, where readers cannot see it
        raise ConnectionResetError("caller went away")

    key = store.new_key("f.bin")
    with pytest.raises(ConnectionResetError):
        store.put(key, chunks())
    assert len(seen[0]) == 1 and seen[0][0].startswith(".incoming/upload-")
    assert local_files(store.root) == [] and not store.exists(key)


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "a/../../b", ".incoming/x"])
def test_keys_cannot_escape(store: LocalObjectStore, key: str) -> None:
    message = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: store.put(key, [b"x"]))
    assert message.startswith(f"object key {key!r}")


def test_symlinks_cannot_lead_outside(store: LocalObjectStore, tmp_path: Path) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / "link").symlink_to(tmp_path)
    message = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: store.put("link/x", [b"x"]))
    assert message == "object key 'link/x': outside the store"


def test_a_key_segment_longer_than_a_file_name_is_refused_by_name(store: LocalObjectStore) -> None:
    """S3 takes such keys; a folder cannot (the fuzzer's ImportTasks uri was once INTERNAL: ENAMETOOLONG)."""
    key = "up/" + "x" * 256
    for call in (lambda: store.put(key, [b"x"]), lambda: store.get(key), lambda: store.exists(key)):
        message = _expect(grpc.StatusCode.INVALID_ARGUMENT, call)
        assert (
            message == "object key: a path segment of 256 bytes; the local folder store takes at most 255 (a file name)"
        )
    assert store.put("up/" + "x" * 255, [b"x"]).size == 1


def test_missing_objects(store: LocalObjectStore) -> None:
    message = _expect(grpc.StatusCode.NOT_FOUND, lambda: store.get("up/none"))
    assert message == f"object 'up/none' not found in {store.root}"
    message = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: store.key_of("s3://bucket/key"))
    assert "expected file://" in message
    message = _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: store.key_of("file:///etc/passwd"))
    assert "not inside the local object store" in message


def test_nothing_is_created_before_the_first_write(tmp_path: Path) -> None:
    LocalObjectStore(tmp_path / "never", max_bytes=10)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("gone_at", ["end_of_stream", "after_store"])
def test_an_upload_whose_caller_went_away_stores_nothing(tmp_path: Path, gone_at: str) -> None:
    """gRPC may report a cancelled stream as a normal end: the end only counts while the call is active."""
    from server.errors import Cancelled
    from server.protocols.serving_v1.uploads import Uploads
    from serving.v1 import upload_pb2

    root = tmp_path / "uploads"
    uploads = Uploads(LocalObjectStore(root, max_bytes=1 << 20))
    checks = iter([True, False] if gone_at == "after_store" else [False, False])
    messages = [
        upload_pb2.UploadRequest(metadata=upload_pb2.UploadMetadata(file_name="x.bin")),
        upload_pb2.UploadRequest(chunk=b"partial"),
    ]
    with pytest.raises(Cancelled):
        uploads.upload(iter(messages), lambda: next(checks))
    assert not root.exists() or local_files(root) == []
