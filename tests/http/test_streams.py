"""NDJSON response streams, request streams and streamed multipart uploads, against scripted servicers."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
import requests

from server.http.multipart import UPLOAD_CHUNK
from tests.support.http_fixtures import SCRIPTED_BODY_LIMIT, Scripted
from tests.support.servers import wait_for

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
BOUNDARY = "gateway-test-boundary"


def lines(reply: requests.Response) -> list[dict]:
    return [json.loads(line) for line in reply.iter_lines() if line]


def test_a_server_stream_is_flushed_message_by_message(scripted: Scripted) -> None:
    with requests.get(f"{scripted.url}/v1/tasks/step:watch", stream=True, timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["Content-Type"] == "application/x-ndjson"
        received = reply.iter_lines()
        # The second message is only produced after the test has read the first.
        first = json.loads(next(received))
        assert first == {"result": {"task": {"id": "step", "status": "TASK_STATUS_QUEUED"}}}
        scripted.tasks.proceed.set()
        rest = [json.loads(line) for line in received if line]
    assert rest == [{"result": {"task": {"id": "step", "status": "TASK_STATUS_SUCCEEDED"}}}]


def test_a_stream_that_fails_ends_with_an_error_line(scripted: Scripted) -> None:
    reply = requests.get(f"{scripted.url}/v1/tasks/fail-after-one:watch", timeout=30)
    assert reply.status_code == 200
    assert lines(reply) == [
        {"result": {"task": {"id": "fail-after-one", "status": "TASK_STATUS_QUEUED"}}},
        {"error": {"code": 14, "message": "the store went away", "details": []}},
    ]


def test_a_stream_that_fails_before_its_first_message_is_a_plain_error(scripted: Scripted) -> None:
    reply = requests.get(f"{scripted.url}/v1/tasks/missing:watch", timeout=30)
    assert reply.status_code == 404
    assert reply.json() == {"code": 5, "message": "task 'missing' not found", "details": []}


def test_a_client_that_goes_away_cancels_the_stream(scripted: Scripted) -> None:
    host, port = scripted.gateway.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /v1/tasks/hang:watch HTTP/1.1\r\nHost: test\r\n\r\n")
        received = b""
        while b"TASK_STATUS_QUEUED" not in received:
            chunk = sock.recv(4096)
            assert chunk, "the connection closed before the first message"
            received += chunk
    # The connection is closed with the stream still open: the call must end.
    wait_for(scripted.tasks.call_ended.is_set, 10, "the servicer to see the call end")


def multipart_body(
    fields: list[tuple[str, str]], blocks: Iterator[bytes], before_block: Callable[[int], None] = lambda i: None
) -> Iterator[bytes]:
    """A multipart form produced piece by piece (sent chunked), the file last."""
    for name, value in fields:
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/x-test\r\n\r\n"
    ).encode()
    for index, block in enumerate(blocks):
        before_block(index)
        yield block
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def blocks(count: int) -> Iterator[bytes]:
    for index in range(count):
        yield hashlib.sha256(str(index).encode()).digest() * (MiB // 32)


def upload(scripted: Scripted, body: Iterator[bytes]) -> requests.Response:
    return requests.post(
        f"{scripted.url}/v1/uploads",
        data=body,
        timeout=60,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


def test_a_multipart_upload_is_streamed_to_the_servicer(scripted: Scripted) -> None:
    seen_before_the_end: list[bool] = []

    def before_block(index: int) -> None:
        if index == 8:  # the servicer must have its first chunk long before the body ends
            seen_before_the_end.append(scripted.uploads.first_chunk.wait(10))

    expected = hashlib.sha256(b"".join(blocks(16))).hexdigest()
    reply = upload(scripted, multipart_body([("key_prefix", "in/")], blocks(16), before_block))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "key": "big.bin",
        "contentType": "application/x-test",
        "size": str(16 * MiB),
        "sha256": expected,
    }
    assert seen_before_the_end == [True]
    assert scripted.uploads.metadata.key_prefix == "in/"
    assert max(scripted.uploads.chunk_sizes) <= UPLOAD_CHUNK + 64 * 1024
    assert sum(scripted.uploads.chunk_sizes) == 16 * MiB


def test_a_large_upload_does_not_pile_up_in_memory(scripted: Scripted) -> None:
    size = 64 * MiB
    tracemalloc.start()
    try:
        reply = upload(scripted, multipart_body([], blocks(size // MiB)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.status_code == 200, reply.text
    assert reply.json()["size"] == str(size)
    assert peak < 24 * MiB, f"peak traced memory {peak / MiB:.1f} MiB for a {size // MiB} MiB upload"


def test_a_multipart_upload_needs_one_file_after_the_fields(scripted: Scripted) -> None:
    no_file = iter(
        [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="key_prefix"\r\n\r\nx\r\n--{BOUNDARY}--\r\n'.encode()]
    )
    reply = upload(scripted, no_file)
    assert reply.status_code == 400
    assert reply.json()["message"] == "multipart form: no file part; send the file with -F file=@name"
    late_field = b"".join(multipart_body([], blocks(1)))[: -len(f"--{BOUNDARY}--\r\n")]
    late_field += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="task_id"\r\n\r\nt\r\n--{BOUNDARY}--\r\n'.encode()
    )
    reply = upload(scripted, iter([late_field]))
    assert reply.status_code == 400
    assert reply.json()["message"] == "multipart form: one file per upload, with every other field before it"
    unknown = upload(scripted, multipart_body([("colour", "red")], blocks(1)))
    assert unknown.status_code == 400
    assert unknown.json()["message"] == "form field 'colour': serving.v1.UploadMetadata has no field 'colour'"


def test_a_request_stream_of_ndjson_lines(scripted: Scripted) -> None:
    data = b"hello, ndjson"
    body = (
        b"\n".join(
            json.dumps(line).encode()
            for line in [
                {"metadata": {"fileName": "a.txt", "contentType": "text/plain"}},
                {"chunk": base64.b64encode(data[:5]).decode()},
                {"chunk": base64.b64encode(data[5:]).decode()},
            ]
        )
        + b"\n"
    )
    reply = requests.post(f"{scripted.url}/v1/uploads", data=body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert reply.json()["key"] == "a.txt"


def test_a_bad_line_fails_a_request_stream_naming_the_line(scripted: Scripted) -> None:
    body = b'{"metadata": {"fileName": "a.txt"}}\n{"chunk": "aGk="}\n{"chunk": 5, "oops": 1}\n'
    reply = requests.post(f"{scripted.url}/v1/uploads", data=body, timeout=30)
    assert reply.status_code == 400
    assert reply.json()["message"].startswith("request line 3: ")
    long_line = b'{"chunk": "' + b"A" * (SCRIPTED_BODY_LIMIT + 4) + b'"}\n'
    reply = requests.post(f"{scripted.url}/v1/uploads", data=b'{"metadata": {}}\n' + long_line, timeout=30)
    assert reply.status_code == 413
    assert reply.json() == {
        "code": 8,
        "details": [],
        "message": f"a request line is larger than the limit of {SCRIPTED_BODY_LIMIT} bytes (MAX_HTTP_BODY_BYTES)",
    }


def test_multipart_is_only_for_predict_and_upload(scripted: Scripted) -> None:
    reply = requests.post(f"{scripted.url}/v1/tasks:batchDelete", files={"file": ("a", b"x")}, timeout=30)
    assert reply.status_code == 400
    assert reply.json()["message"] == (
        "/serving.v1.TaskService/DeleteTasks: multipart forms are accepted only by Predict and Upload; send JSON"
    )
