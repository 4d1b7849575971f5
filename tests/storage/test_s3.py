"""S3ObjectStore against moto's S3 server over HTTP: parts, aborts, limits, checksums, errors, URLs."""

from __future__ import annotations

import hashlib
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc
import pytest
from botocore.exceptions import ClientError

from server.errors import ServingError
from server.storage.factory import open_object_store
from server.storage.s3_errors import storage_error
from server.storage.store import ObjectStore
from tests.support.s3_servers import (
    PART,
    MiB,
    MotoServer,
    TcpRelay,
    chunks_of,
    in_progress_uploads,
    object_keys,
    s3_settings,
)
from tests.support.servers import free_port, wait_for

pytestmark = pytest.mark.integration

MakeStore = Callable[..., ObjectStore]


def _expect(code: grpc.StatusCode, call: Callable[[], object]) -> str:
    with pytest.raises(ServingError) as caught:
        call()
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def test_small_object_is_one_put(moto: MotoServer, bucket: str, make_store: MakeStore) -> None:
    store = make_store(bucket, s3_key_prefix="pre")
    data = os.urandom(1000)
    key = store.new_key("../../a.bin", "in")
    stored = store.put(
        key, chunks_of(data, 300), content_type="application/x-test", sha256=hashlib.sha256(data).hexdigest()
    )
    assert key.startswith("pre/in/") and key.endswith("-a.bin")
    head = moto.client.head_object(Bucket=bucket, Key=key)
    assert "-" not in head["ETag"] and head["ContentType"] == "application/x-test"
    assert (stored.size, stored.sha256) == (1000, hashlib.sha256(data).hexdigest())
    assert stored.uri == f"s3://{bucket}/{key}"
    assert stored.url == f"{moto.endpoint_url}/{bucket}/{key}"
    assert store.get(key) == data and store.exists(key)
    assert store.key_of(stored.uri) == key
    assert store.put_bytes(store.new_key("b"), b"xyz").size == 3
    store.delete(key)
    assert not store.exists(key)


def test_multipart_above_the_part_size(moto: MotoServer, bucket: str, make_store: MakeStore) -> None:
    store = make_store(bucket)
    data = os.urandom(2 * PART + 3 * MiB + 5)
    key = store.new_key("big.bin")
    stored = store.put(key, chunks_of(data, MiB + 7), size=len(data))
    assert moto.client.head_object(Bucket=bucket, Key=key)["ETag"].endswith('-3"')
    first = moto.client.head_object(Bucket=bucket, Key=key, PartNumber=1)
    assert first["PartsCount"] == 3 and first["ContentLength"] == PART
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    with store.open(key) as body:
        assert body.read() == data
    assert in_progress_uploads(moto, bucket) == []


def test_exactly_one_part_and_empty_objects(moto: MotoServer, bucket: str, make_store: MakeStore) -> None:
    store = make_store(bucket)
    data = os.urandom(PART)
    key = store.new_key("one.bin")
    store.put(key, chunks_of(data))
    assert store.get(key) == data
    empty = store.new_key("empty")
    assert store.put(empty, iter(())).sha256 == hashlib.sha256(b"").hexdigest()
    assert store.get(empty) == b""


def test_a_stream_that_fails_midway_aborts(moto: MotoServer, bucket: str, make_store: MakeStore) -> None:
    store = make_store(bucket)
    during: list[list[dict]] = []

    def chunks() -> Iterator[bytes]:
        yield from chunks_of(os.urandom(PART + MiB))
        during.append(in_progress_uploads(moto, bucket))
        raise ConnectionResetError("caller went away")

    key = store.new_key("f.bin")
    with pytest.raises(ConnectionResetError):
        store.put(key, chunks())
    assert [u["Key"] for u in during[0]] == [key]  # the multipart upload had started
    assert in_progress_uploads(moto, bucket) == [] and object_keys(moto, bucket) == []


def test_limits_and_checksums_store_nothing(moto: MotoServer, bucket: str, make_store: MakeStore) -> None:
    store = make_store(bucket, max_upload_bytes=2 * PART)
    consumed = []

    def oversized() -> Iterator[bytes]:
        for chunk in chunks_of(os.urandom(4 * PART)):
            consumed.append(len(chunk))
            yield chunk

    message = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: store.put(store.new_key("x"), oversized()))
    assert message == f"upload exceeds the limit of {2 * PART} bytes (MAX_UPLOAD_BYTES); nothing stored"
    assert sum(consumed) == 2 * PART + MiB  # stopped at the first chunk past the limit
    data = os.urandom(PART + MiB)
    for size, sha256, code in [
        (len(data) + 1, None, grpc.StatusCode.INVALID_ARGUMENT),
        (None, hashlib.sha256(b"other").hexdigest(), grpc.StatusCode.DATA_LOSS),
    ]:
        _expect(
            code,
            lambda: store.put(store.new_key("x"), chunks_of(data), size=size, sha256=sha256),  # noqa: B023 (called at once)
        )
        _expect(
            code,
            lambda: store.put(store.new_key("x"), [b"small"], size=size and 6, sha256=sha256),  # noqa: B023 (called at once)
        )
    assert in_progress_uploads(moto, bucket) == [] and object_keys(moto, bucket) == []


def test_storage_errors_name_the_bucket_not_the_credentials(make_store: MakeStore) -> None:
    missing = make_store("no-such-bucket-here")
    message = _expect(grpc.StatusCode.FAILED_PRECONDITION, lambda: missing.put_bytes("k", b"x"))
    assert message == "object storage: bucket 'no-such-bucket-here' does not exist"
    down = make_store("some-bucket", s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_max_attempts=1)
    message = _expect(grpc.StatusCode.UNAVAILABLE, lambda: down.put_bytes("k", b"x"))
    assert message == (
        "object storage: cannot reach bucket 'some-bucket' (EndpointConnectionError) while storing the object;"
        " retry later"
    )
    denied = ClientError(
        cast(
            Any,
            {  # the parts of a reply that storage_error reads
                "Error": {
                    "Code": "InvalidAccessKeyId",
                    "Message": "key AKIASECRET unknown",
                    "AWSAccessKeyId": "AKIASECRET",
                },
                "ResponseMetadata": {"HTTPStatusCode": 403},
            },
        ),
        "PutObject",
    )
    error = storage_error(denied, "b1", "storing the object")
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION and "AKIASECRET" not in error.message
    assert error.message == (
        "object storage: access to bucket 'b1' denied (InvalidAccessKeyId) while storing the object; "
        "check the credentials and the bucket policy"
    )
    throttled = ClientError(
        cast(Any, {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}), "UploadPart"
    )
    assert storage_error(throttled, "b1", "uploading part 2").code == grpc.StatusCode.UNAVAILABLE


def test_endpoint_gone_mid_upload_aborts_once_it_is_back(moto: MotoServer, bucket: str, make_store: MakeStore) -> None:
    relay = TcpRelay(moto.port)
    store = make_store(bucket, s3_endpoint_url=relay.endpoint_url, s3_max_attempts=1)
    key = store.new_key("cut.bin")

    def chunks() -> Iterator[bytes]:
        yield from chunks_of(os.urandom(PART + MiB))
        upload = wait_for(lambda: in_progress_uploads(moto, bucket), 30, "the multipart upload")[0]
        wait_for(
            lambda: moto.client.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"]).get("Parts"),
            30,
            "part 1 to be stored",
        )
        relay.cut()
        yield from chunks_of(os.urandom(PART))

    try:
        message = _expect(grpc.StatusCode.UNAVAILABLE, lambda: store.put(key, chunks()))
        assert message.startswith(f"object storage: cannot reach bucket '{bucket}'")
        assert object_keys(moto, bucket) == []
        assert len(in_progress_uploads(moto, bucket)) == 1  # the abort could not reach S3 either
        relay.restore()
        store.put_bytes(store.new_key("next"), b"x")  # the next write retries the abort first
        assert in_progress_uploads(moto, bucket) == []
        assert len(object_keys(moto, bucket)) == 1
    finally:
        relay.cut()


def test_urls(moto: MotoServer, bucket: str, make_store: MakeStore) -> None:
    store = make_store(bucket, presign_expiry_seconds=60)
    stored = store.put_bytes(store.new_key("hello world.txt"), b"hello", content_type="text/plain")
    assert stored.url.endswith("-hello_world.txt")
    assert "X-Amz-Expires=60" in stored.presigned_url
    with urllib.request.urlopen(stored.presigned_url, timeout=10) as reply:
        assert reply.read() == b"hello"
    aws = open_object_store(s3_settings("", "my-bucket", aws_region="eu-west-1"))
    dotted = open_object_store(s3_settings("", "my.bucket", aws_region="eu-west-1"))
    fast = open_object_store(s3_settings("", "my-bucket", aws_s3_use_accelerate=True))
    try:
        assert aws.url("a/b c.png") == "https://my-bucket.s3.eu-west-1.amazonaws.com/a/b%20c.png"
        assert dotted.url("k") == "https://s3.eu-west-1.amazonaws.com/my.bucket/k"
        assert fast.url("k") == "https://my-bucket.s3-accelerate.amazonaws.com/k"
        assert aws.presigned_url("k") == ""
        _expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: aws.key_of("s3://other-bucket/k"))
    finally:
        for store in (aws, dotted, fast):
            store.close()


def test_settings_that_cannot_work_stop_the_start() -> None:
    with pytest.raises(SystemExit, match="exclude each other"):
        open_object_store(s3_settings("http://127.0.0.1:1", "b", aws_s3_use_accelerate=True))
    with pytest.raises(SystemExit, match="needs more than 10000 parts"):
        open_object_store(s3_settings("http://127.0.0.1:1", "b", max_upload_bytes=10_001 * PART))


def test_a_hung_endpoint_is_unavailable_within_the_timeouts(
    moto: MotoServer, bucket: str, make_store: MakeStore
) -> None:
    """moto frozen (SIGSTOP) mid-upload: the call answers UNAVAILABLE after S3_MAX_ATTEMPTS read
    timeouts, not botocore's minutes; once the store answers again the upload is aborted."""
    store = make_store(bucket, s3_read_timeout_seconds=0.5, s3_connect_timeout_seconds=0.5, s3_max_attempts=2)
    key = store.new_key("frozen.bin")
    took: list[float] = []

    def chunks() -> Iterator[bytes]:
        yield from chunks_of(os.urandom(PART + MiB))
        wait_for(lambda: in_progress_uploads(moto, bucket), 30, "the multipart upload")
        moto.process.send_signal(signal.SIGSTOP)
        took.append(time.monotonic())
        yield from chunks_of(os.urandom(PART))

    try:
        message = _expect(grpc.StatusCode.UNAVAILABLE, lambda: store.put(key, chunks()))
        took[0] = time.monotonic() - took[0]
        assert message.startswith(f"object storage: cannot reach bucket '{bucket}'"), message
        # Two attempts of 0.5 s for the part, and as many for the abort that cannot reach S3 either.
        assert took[0] < 8.0, took
    finally:
        moto.process.send_signal(signal.SIGCONT)
    store.put_bytes(store.new_key("next"), b"x")  # the next write retries the abort first
    assert in_progress_uploads(moto, bucket) == []
    assert object_keys(moto, bucket) != [] and key not in object_keys(moto, bucket)
