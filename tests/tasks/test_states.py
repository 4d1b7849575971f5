"""The state machine, durations, backoff, page tokens and webhook URL checks."""

from __future__ import annotations

import pytest

from server.config import parse_duration
from server.errors import FailedPrecondition, InvalidArgument
from server.tasks import records, status
from server.tasks.scheduler import backoff_delay
from server.tasks.webhooks import check_url, sign
from serving.v1 import task_pb2

S = status


@pytest.mark.parametrize(
    "old,new",
    [
        (S.QUEUED, S.RUNNING),
        (S.QUEUED, S.CANCELLED),
        (S.QUEUED, S.EXPIRED),
        (S.RUNNING, S.SUCCEEDED),
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.RUNNING),
        (S.SUCCEEDED, S.SUCCEEDED),
    ],
)
def test_allowed_transitions(old: int, new: int) -> None:
    status.check(old, new)


@pytest.mark.parametrize(
    "old,new,message",
    [
        (S.SUCCEEDED, S.RUNNING, "task is SUCCEEDED: a finished task cannot change to RUNNING"),
        (S.FAILED, S.QUEUED, "task is FAILED: a finished task cannot change to QUEUED"),
        (S.CANCELLED, S.SUCCEEDED, "task is CANCELLED: a finished task cannot change to SUCCEEDED"),
        (S.EXPIRED, S.RUNNING, "task is EXPIRED: a finished task cannot change to RUNNING"),
        (S.RUNNING, S.CANCELLED, "task is RUNNING: it cannot change to CANCELLED (allowed: SUCCEEDED, FAILED)"),
        (S.RUNNING, S.QUEUED, "task is RUNNING: it cannot change to QUEUED (allowed: SUCCEEDED, FAILED)"),
        (S.QUEUED, S.SUCCEEDED, "task is QUEUED: it cannot change to SUCCEEDED (allowed: RUNNING, CANCELLED, EXPIRED)"),
    ],
)
def test_refused_transitions_name_the_statuses(old: int, new: int, message: str) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        status.check(old, new)
    assert caught.value.message == message


def test_retry_goes_back_to_queued_only_for_workers() -> None:
    status.check(S.RUNNING, S.QUEUED, retry=True)
    with pytest.raises(FailedPrecondition):
        status.check(S.SUCCEEDED, S.QUEUED, retry=True)


def test_move_keeps_times() -> None:
    task = task_pb2.Task(status=S.QUEUED)
    status.move(task, S.RUNNING, now=records.timestamp_at(100.0))
    status.move(task, S.SUCCEEDED, now=records.timestamp_at(100.25))
    assert task.start_time.seconds == 100 and task.finish_time.ToNanoseconds() == 100_250_000_000
    assert task.running_time_ms == 250.0


@pytest.mark.parametrize(
    "text,seconds", [("90s", 90), ("15m", 900), ("12h", 43200), ("1d", 86400), ("250ms", 0.25), ("2.5", 2.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="not a duration: '12 hours'"):
        parse_duration("12 hours")


def test_backoff_is_exponential_jittered_and_capped() -> None:
    for attempt, planned in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (40, 1.0)]:
        delays = [backoff_delay(attempt, 0.1, 1.0) for _ in range(200)]
        assert all(planned / 2 <= d <= planned for d in delays)
        assert max(delays) - min(delays) > planned / 10  # jitter spreads them


def test_page_tokens_are_bound_to_their_filter() -> None:
    task_filter = task_pb2.TaskFilter(model="digits")
    token = records.encode_token(records.Cursor(123, "abc"), task_filter)
    assert records.decode_token(token, task_filter) == records.Cursor(123, "abc")
    with pytest.raises(InvalidArgument, match="page_token: it was made for a different filter"):
        records.decode_token(token, task_pb2.TaskFilter(model="other"))
    with pytest.raises(InvalidArgument, match="page_token: not a token returned by ListTasks"):
        records.decode_token("garbage!", task_filter)


def test_trace_context_uses_the_task_id() -> None:
    task_id = records.new_id()
    trace_id, traceparent = records.trace_context(task_id)
    assert trace_id == task_id
    version, trace, span, flags = traceparent.split("-")
    assert (version, trace, flags) == ("00", task_id, "01") and len(span) == 16
    other, _ = records.trace_context("my-own-id")
    assert len(other) == 32 and other != "my-own-id"


@pytest.mark.parametrize(
    "url,message",
    [
        ("ftp://example.com/x", "must be an http:// or https:// URL"),
        ("http:///nohost", "must be an http:// or https:// URL"),
        ("http://127.0.0.1:9/x", "resolves to the non-public address 127.0.0.1"),
        ("http://localhost:9/x", "resolves to the non-public address"),
        ("http://10.1.2.3/x", "resolves to the non-public address 10.1.2.3"),
        ("http://169.254.169.254/latest", "resolves to the non-public address 169.254.169.254"),
        ("http://[::1]:8080/x", "resolves to the non-public address ::1"),
    ],
)
def test_webhook_urls_are_checked(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match="webhook_url: ") as caught:
        check_url(url, allow_private=False)
    assert message in caught.value.message


def test_private_targets_allowed_when_configured() -> None:
    check_url("http://127.0.0.1:9/x", allow_private=True)


def test_signature_is_hmac_sha256_of_the_body() -> None:
    import hashlib
    import hmac

    assert sign(b"{}", "k") == "sha256=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()
