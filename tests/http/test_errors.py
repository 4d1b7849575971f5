"""The one error table over HTTP, metadata and deadlines, against scripted servicers behind the real shim."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from tests.support.http_fixtures import SCRIPTED_BODY_LIMIT, Scripted
from tests.support.servers import wait_for

pytestmark = pytest.mark.integration

# The table (grpc-gateway's): gRPC code -> HTTP status.
STATUSES = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "INTERNAL": 500,
    "DATA_LOSS": 500,
    "UNKNOWN": 500,
}
CODES = {
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


def get(scripted: Scripted, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{scripted.url}{path}", timeout=30, **kwargs)


def assert_error(reply: requests.Response, status: int, code: str, message: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json() == {"code": CODES[code], "message": message, "details": []}


@pytest.mark.parametrize("code", sorted(STATUSES))
def test_every_code_maps_to_its_http_status(scripted: Scripted, code: str) -> None:
    reply = get(scripted, f"/v1/tasks/abort-{code}")
    assert_error(reply, STATUSES[code], code, f"aborted {code}")
    assert ("WWW-Authenticate" in reply.headers) == (code == "UNAUTHENTICATED")
    if code == "UNAUTHENTICATED":
        assert reply.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "code", ["INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "DATA_LOSS"]
)
def test_raised_errors_and_set_codes_take_the_same_table(scripted: Scripted, code: str) -> None:
    assert_error(get(scripted, f"/v1/tasks/raise-{code}"), STATUSES[code], code, f"raised {code}")
    assert_error(get(scripted, f"/v1/tasks/setcode-{code}"), STATUSES[code], code, f"set {code}")


def test_a_bug_is_internal_without_details(scripted: Scripted) -> None:
    assert_error(get(scripted, "/v1/tasks/bug"), 500, "INTERNAL", "internal error; see the server log")


def test_unknown_path_wrong_method_malformed_json_and_large_body_share_the_shape(scripted: Scripted) -> None:
    assert_error(get(scripted, "/v1/nothing"), 404, "NOT_FOUND", "no route for GET /v1/nothing")
    reply = requests.put(f"{scripted.url}/v1/tasks/t1", json={}, timeout=10)
    assert_error(reply, 405, "UNIMPLEMENTED", "method PUT is not allowed for /v1/tasks/t1; allowed: DELETE, GET, PATCH")
    assert reply.headers["Allow"] == "DELETE, GET, PATCH"
    reply = requests.post(f"{scripted.url}/v1/tasks:batchDelete", data=b'{"all": tru', timeout=10)
    assert reply.status_code == 400 and reply.json()["code"] == 3
    assert reply.json()["message"].startswith("request body: malformed JSON: ")
    reply = requests.post(f"{scripted.url}/v1/tasks:batchDelete", json={"all": True, "everything": 1}, timeout=10)
    assert reply.status_code == 400 and 'no field named "everything"' in reply.json()["message"]
    big = b'{"all": true, "filter": {"model": "' + b"x" * SCRIPTED_BODY_LIMIT + b'"}}'
    reply = requests.post(f"{scripted.url}/v1/tasks:batchDelete", data=big, timeout=10)
    assert_error(
        reply,
        413,
        "RESOURCE_EXHAUSTED",
        f"request body is larger than the limit of {SCRIPTED_BODY_LIMIT} bytes (MAX_HTTP_BODY_BYTES)",
    )
    chunked = requests.post(f"{scripted.url}/v1/tasks:batchDelete", data=iter([big]), timeout=10)
    assert chunked.status_code == 413


def test_query_string_fields_enums_timestamps_and_int64(scripted: Scripted) -> None:
    query = (
        "filter.model=digits&filter.statuses=TASK_STATUS_QUEUED&filter.statuses=3"
        "&filter.created_after=2024-01-02T03:04:05Z&pageSize=5&page_token=abc"
    )
    reply = get(scripted, f"/v1/tasks?{query}")
    assert reply.status_code == 200, reply.text
    assert json.loads(reply.json()["nextPageToken"]) == {
        "filter": {
            "model": "digits",
            "statuses": ["TASK_STATUS_QUEUED", "TASK_STATUS_SUCCEEDED"],
            "createdAfter": "2024-01-02T03:04:05Z",
        },
        "pageSize": 5,
        "pageToken": "abc",
    }
    assert_error(
        get(scripted, "/v1/tasks?pageSize=many"),
        400,
        "INVALID_ARGUMENT",
        "query string: Failed to parse page_size field: invalid literal for int() with base 10: 'many'.",
    )
    assert_error(
        get(scripted, "/v1/tasks?pageSize=1&pageSize=2"),
        400,
        "INVALID_ARGUMENT",
        "query parameter 'pageSize': given more than once, but the field is not repeated",
    )
    assert_error(
        get(scripted, "/v1/tasks?filter=x"),
        400,
        "INVALID_ARGUMENT",
        "query parameter 'filter': is a message (serving.v1.TaskFilter); set its fields as 'filter.<field>'",
    )
    deleted = requests.post(f"{scripted.url}/v1/tasks:batchDelete", json={"all": True}, timeout=10)
    assert deleted.json() == {"deleted": str(2**53 + 1)}


def test_body_field_path_variable_and_query_together(scripted: Scripted) -> None:
    reply = requests.patch(
        f"{scripted.url}/v1/tasks/t-7?updateMask=status,metadata",
        json={"id": "ignored", "status": "TASK_STATUS_RUNNING", "model_version": "3"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "task": {
            "id": "t-7",
            "status": "TASK_STATUS_RUNNING",
            "modelVersion": "3",
            "metadata": {"update_mask": "status,metadata"},
        }
    }


def test_metadata_headers_and_peer_reach_the_servicer(scripted: Scripted) -> None:
    headers = {
        "Authorization": "Bearer k1",
        "X-Request-Id": "req-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "Grpc-Metadata-Tenant": "acme",
        "Grpc-Metadata-Blob-Bin": base64.b64encode(b"\x00\x01").decode(),
        "X-Not-Forwarded": "no",
    }
    metadata = get(scripted, "/v1/tasks/ok", headers=headers).json()["task"]["metadata"]
    assert metadata["authorization"] == "Bearer k1"
    assert metadata["x-request-id"] == "req-1"
    assert metadata["traceparent"] == headers["traceparent"]
    assert metadata["tenant"] == "acme"
    assert metadata["blob-bin"] == "0001"
    assert "x-not-forwarded" not in metadata
    assert metadata["transport"] == "http"
    assert metadata["route"] == "GET /v1/tasks/{id}"
    assert metadata["deadline"] == "none"
    assert metadata["peer"].startswith("ipv4:127.0.0.1:")
    bad = get(scripted, "/v1/tasks/ok", headers={"Grpc-Metadata-X-Bin": "not base64!"})
    assert_error(bad, 400, "INVALID_ARGUMENT", "header Grpc-Metadata-X-Bin: a -bin metadata value must be base64")


@pytest.mark.parametrize(
    "header, value, low, high",
    [
        ("Grpc-Timeout", "5S", 4.0, 5.0),
        ("Grpc-Timeout", "1500m", 1.0, 1.5),
        ("X-Request-Timeout", "2.5", 2.0, 2.5),
    ],
)
def test_timeout_headers_become_the_deadline(
    scripted: Scripted, header: str, value: str, low: float, high: float
) -> None:
    remaining = float(get(scripted, "/v1/tasks/ok", headers={header: value}).json()["task"]["metadata"]["deadline"])
    assert low < remaining <= high


def test_a_bad_timeout_header_is_invalid_argument(scripted: Scripted) -> None:
    assert_error(
        get(scripted, "/v1/tasks/ok", headers={"Grpc-Timeout": "soon"}),
        400,
        "INVALID_ARGUMENT",
        "header Grpc-Timeout: expected a gRPC timeout such as '5S' or '250m', got 'soon'",
    )


def test_a_passed_deadline_answers_504_and_ends_the_call(scripted: Scripted) -> None:
    reply = get(scripted, "/v1/tasks/wait", headers={"Grpc-Timeout": "200m"})
    assert_error(reply, 504, "DEADLINE_EXCEEDED", "deadline exceeded")
    wait_for(scripted.tasks.call_ended.is_set, 10, "the servicer's done callback")
    wait_for(scripted.tasks.saw_inactive.is_set, 10, "the servicer to see the call inactive")
