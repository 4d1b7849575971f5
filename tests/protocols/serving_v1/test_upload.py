"""UploadService.Upload through the real gRPC server: local default, S3 (moto), errors, cancellation."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client import Client, ClientError
from client.cli import main
from server.app import App
from serving.v1 import task_pb2, task_pb2_grpc, upload_pb2, upload_pb2_grpc
from tests.support.s3_servers import (
    PART,
    MiB,
    MotoServer,
    app_settings,
    chunks_of,
    in_progress_uploads,
    local_files,
    object_keys,
    s3_settings,
)
from tests.support.servers import wait_for

pytestmark = pytest.mark.integration

StartApp = Callable[..., App]


def metadata(**fields: Any) -> upload_pb2.UploadRequest:
    return upload_pb2.UploadRequest(metadata=upload_pb2.UploadMetadata(**fields))


def messages(data: bytes, chunk: int = MiB, **fields: object) -> Iterator[upload_pb2.UploadRequest]:
    yield metadata(**fields)
    for part in chunks_of(data, chunk):
        yield upload_pb2.UploadRequest(chunk=part)


def upload(app: App, requests: Iterator[upload_pb2.UploadRequest]) -> upload_pb2.UploadResponse:
    with grpc.insecure_channel(app.address) as channel:
        return upload_pb2_grpc.UploadServiceStub(channel).Upload(requests, timeout=60)


def expect_error(app: App, requests: Iterator[upload_pb2.UploadRequest], code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        upload(app, requests)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


@pytest.fixture
def local_app(start_app: StartApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> App:
    """An App with the storage settings at their defaults (but a 3 MiB limit), in an empty working directory."""
    monkeypatch.chdir(tmp_path)
    return start_app(app_settings(max_upload_bytes=3 * MiB))


def test_local_folder_default_end_to_end(local_app: App, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 3)
    reply = upload(
        local_app,
        messages(
            data, 256 * 1024, file_name="../../photo.png", size=len(data), sha256=hashlib.sha256(data).hexdigest()
        ),
    )
    root = tmp_path / "data" / "uploads"
    assert reply.key.endswith("-photo.png") and "/" not in reply.key
    assert reply.uri == (root / reply.key).as_uri()
    assert reply.url == f"/files/{reply.key}"
    assert (reply.size, reply.sha256, reply.content_type) == (len(data), hashlib.sha256(data).hexdigest(), "image/png")
    assert reply.presigned_url == ""
    assert (root / reply.key).read_bytes() == data
    assert local_files(root) == [reply.key]
    with urllib.request.urlopen(f"http://{local_app.http_address}{reply.url}", timeout=10) as served:
        assert served.read() == data  # the HTTP shim serves the folder under /files/


def test_bad_streams_are_refused_and_store_nothing(local_app: App, tmp_path: Path) -> None:
    chunk = upload_pb2.UploadRequest(chunk=b"abc")
    first = "first message must be metadata (file_name, content_type, ...), then chunks"
    assert expect_error(local_app, iter([chunk]), grpc.StatusCode.INVALID_ARGUMENT) == first
    assert expect_error(local_app, iter([]), grpc.StatusCode.INVALID_ARGUMENT) == first
    twice = iter([metadata(file_name="a"), chunk, metadata(file_name="b")])
    assert expect_error(local_app, twice, grpc.StatusCode.INVALID_ARGUMENT) == (
        "message 2: metadata may only be sent in the first message"
    )
    assert expect_error(local_app, messages(b"x", sha256="abc"), grpc.StatusCode.INVALID_ARGUMENT) == (
        "metadata.sha256: expected 64 hex digits (a SHA-256), got 'abc'"
    )
    assert expect_error(local_app, messages(b"x", content_type="not a type"), grpc.StatusCode.INVALID_ARGUMENT) == (
        "metadata.content_type: expected a media type like 'image/png', got 'not a type'"
    )
    assert expect_error(local_app, messages(b"x", size=-1), grpc.StatusCode.INVALID_ARGUMENT) == (
        "metadata.size: must be >= 0 (0: unknown), got -1"
    )
    assert expect_error(local_app, messages(b"abc", size=4), grpc.StatusCode.INVALID_ARGUMENT) == (
        "size: 3 bytes were sent but 4 were declared; nothing stored"
    )
    assert expect_error(local_app, messages(b"x" * (4 * MiB)), grpc.StatusCode.RESOURCE_EXHAUSTED) == (
        f"upload exceeds the limit of {3 * MiB} bytes (MAX_UPLOAD_BYTES); nothing stored"
    )
    assert expect_error(local_app, messages(b"x", size=4 * MiB), grpc.StatusCode.RESOURCE_EXHAUSTED).startswith(
        f"upload of {4 * MiB} bytes exceeds the limit"
    )
    wrong = hashlib.sha256(b"y").hexdigest()
    assert expect_error(local_app, messages(b"x", sha256=wrong), grpc.StatusCode.DATA_LOSS) == (
        f"sha256: the data sent hashes to {hashlib.sha256(b'x').hexdigest()}, not the declared {wrong}; nothing stored"
    )
    assert expect_error(local_app, messages(b"x", task_id="t1"), grpc.StatusCode.NOT_FOUND) == (
        "task 't1' not found (it may have expired)"
    )
    assert local_files(tmp_path / "data" / "uploads") == []


def test_files_sent_with_a_task_id_join_the_task(local_app: App) -> None:
    with grpc.insecure_channel(local_app.address) as channel:
        tasks = task_pb2_grpc.TaskServiceStub(channel)
        task = tasks.CreateTask(task_pb2.CreateTaskRequest(task=task_pb2.Task(model="external")), timeout=10).task
        reply = upload_pb2_grpc.UploadServiceStub(channel).Upload(
            messages(b"result", file_name="out.csv", task_id=task.id), timeout=10
        )
        files = tasks.GetTask(task_pb2.GetTaskRequest(id=task.id), timeout=10).task.files
    assert [(f.name, f.uri, f.url, f.content_type, f.size) for f in files] == [
        ("out.csv", reply.uri, reply.url, "text/csv", 6)
    ]


def test_client_library_and_cli(local_app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "notes.txt"
    source.write_bytes(b"hello " * 1000)
    with Client(local_app.address, timeout=30) as client:
        reply = client.upload(source, key_prefix="docs", chunk_size=1000)
        assert reply.key.startswith("docs/") and reply.key.endswith("-notes.txt")
        assert reply.size == 6000 and reply.content_type == "text/plain"
        generated = client.upload(iter([b"a", b"", b"bc"]), file_name="gen.bin")
        assert generated.size == 3 and generated.sha256 == hashlib.sha256(b"abc").hexdigest()
        with pytest.raises(ClientError) as caught:
            client.upload(source, sha256=hashlib.sha256(b"other").hexdigest())
        assert caught.value.code == grpc.StatusCode.DATA_LOSS
        with pytest.raises(FileNotFoundError):
            client.upload(tmp_path / "missing.bin")
    assert main(["--target", local_app.address, "upload", str(source), "--checksum", "--name", "n.txt"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["key"].endswith("-n.txt") and printed["size"] == "6000"
    assert printed["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def s3_bucket(moto: MotoServer) -> str:
    moto.client.create_bucket(Bucket="uploads-test")
    return "uploads-test"


def test_s3_uploads_round_trip(moto: MotoServer, s3_bucket: str, start_app: StartApp) -> None:
    app = start_app(s3_settings(moto.endpoint_url, s3_bucket, s3_key_prefix="srv", presign_expiry_seconds=300))
    small = os.urandom(1000)
    large = os.urandom(2 * PART + 123)
    for data, parts in ((small, 0), (large, 3)):
        reply = upload(
            app,
            messages(
                data, file_name="..\\..\\x\u0000y.bin", key_prefix="../../in", sha256=hashlib.sha256(data).hexdigest()
            ),
        )
        assert reply.key.startswith("srv/in/") and reply.key.endswith("-xy.bin")
        assert reply.uri == f"s3://{s3_bucket}/{reply.key}"
        assert reply.url == f"{moto.endpoint_url}/{s3_bucket}/{reply.key}"
        assert "X-Amz-Signature=" in reply.presigned_url
        assert reply.size == len(data) and reply.sha256 == hashlib.sha256(data).hexdigest()
        stored = moto.client.get_object(Bucket=s3_bucket, Key=reply.key)
        assert stored["Body"].read() == data
        assert stored["ETag"].endswith(f'-{parts}"') if parts else "-" not in stored["ETag"]
    assert in_progress_uploads(moto, s3_bucket) == []


def test_a_cancelled_call_aborts_the_multipart_upload(
    moto: MotoServer, s3_bucket: str, start_app: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    """...and is counted as CANCELLED, without an error in the log (the request stream's failure is the
    caller going away, not a bug)."""
    app = start_app(s3_settings(moto.endpoint_url, s3_bucket, s3_key_prefix="cancel"))
    cancelled = app.telemetry.metrics.requests.labels("/serving.v1.UploadService/Upload", "grpc", "CANCELLED")
    release = threading.Event()

    def requests() -> Iterator[upload_pb2.UploadRequest]:
        yield from messages(os.urandom(PART + MiB), file_name="c.bin")
        release.wait(60)

    with grpc.insecure_channel(app.address) as channel:
        call = upload_pb2_grpc.UploadServiceStub(channel).Upload.future(requests(), timeout=60)
        try:
            wait_for(
                lambda: [u for u in in_progress_uploads(moto, s3_bucket) if u["Key"].startswith("cancel/")],
                30,
                "the multipart upload to start",
            )
            call.cancel()
            wait_for(
                lambda: not [u for u in in_progress_uploads(moto, s3_bucket) if u["Key"].startswith("cancel/")],
                30,
                "the multipart upload to be aborted",
            )
            wait_for(lambda: cancelled._value.get() == 1, 30, "the call to be counted as CANCELLED")
        finally:
            release.set()
    assert not [k for k in object_keys(moto, s3_bucket) if k.startswith("cancel/")]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_s3_server_stopped_mid_upload(start_app: StartApp, tmp_path: Path, aws_env: None) -> None:
    victim = MotoServer(tmp_path / "victim.log")
    try:
        victim.client.create_bucket(Bucket="victim")
        app = start_app(s3_settings(victim.endpoint_url, "victim", s3_max_attempts=2))

        def requests() -> Iterator[upload_pb2.UploadRequest]:
            yield from messages(os.urandom(PART + MiB), file_name="v.bin")
            upload_id = wait_for(lambda: in_progress_uploads(victim, "victim"), 30, "the upload")[0]["UploadId"]
            wait_for(
                lambda: victim.client.list_parts(Bucket="victim", Key=_key(victim), UploadId=upload_id).get("Parts"),
                30,
                "part 1 to be stored",
            )
            victim.kill()
            yield from (upload_pb2.UploadRequest(chunk=c) for c in chunks_of(os.urandom(2 * PART)))

        details = expect_error(app, requests(), grpc.StatusCode.UNAVAILABLE)
        assert details.startswith("object storage: cannot reach bucket 'victim' (")
        assert "testing" not in details  # never the credentials
        # The endpoint comes back (empty: moto keeps nothing): no object, no upload, and the server works.
        victim = MotoServer(tmp_path / "victim.log", port=victim.port)
        victim.client.create_bucket(Bucket="victim")
        reply = upload(app, messages(b"after", file_name="after.txt"))
        assert object_keys(victim, "victim") == [reply.key]
        assert in_progress_uploads(victim, "victim") == []
    finally:
        victim.stop()


def _key(server: MotoServer) -> str:
    return in_progress_uploads(server, "victim")[0]["Key"]
