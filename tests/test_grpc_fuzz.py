"""Generated bad input against every gRPC method the server serves: never INTERNAL or UNKNOWN, never a hang.

For each method of each service (serving.v1, TensorFlow Serving's, the Open
Inference Protocol's, health), a derandomized hypothesis run (repeatable in
CI) sends messages built from the method's request descriptor, with strings
biased towards names the server knows ("digits", "image", ...) so that many
requests are nearly right, every field type at its edges (int64 extremes,
NaN, out-of-range Timestamps, unknown enum numbers, nested messages, maps), and
about one in five times bytes that are no message at all. Request streams get
one to three such messages. Every call must end within its deadline with a
status other than INTERNAL, UNKNOWN or DATA_LOSS, with a message; afterwards the
server still answers health SERVING, exits 0 on SIGTERM, and has logged no traceback. The server runs as a subprocess
(`python -m server`) with the in-memory task store and no task workers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.servers import ServerProcess, health_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES_PER_METHOD = 100  # 35 methods: 3,500 calls in all
SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
CALL_TIMEOUT_S = 10.0
FUZZ = settings(
    max_examples=EXAMPLES_PER_METHOD, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
KNOWN_STRINGS = [
    "digits",
    "digits_decoder",
    "image",
    "probabilities",
    "digit",
    "1",
    "2",
    "stable",
    "t1",
    "serving_default",
    "predict",
    "",
    "x" * 300,
    "http://127.0.0.1:9/hook",
    "http://[::1",
    "s3://b/k",
    "file:///etc/passwd",
    "../../x",
    "FP32",
    "INT32",
    "BYTES",
    "models",
]


def _services() -> list[tuple[str, MethodDescriptor]]:
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    from inference import open_inference_pb2
    from serving.v1 import predict_pb2, stream_pb2, task_pb2, upload_pb2

    methods = []
    for module in (
        predict_pb2,
        stream_pb2,
        task_pb2,
        upload_pb2,
        prediction_service_pb2,
        model_service_pb2,
        open_inference_pb2,
        health_pb2,
        reflection_pb2,
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods.append((f"/{service.full_name}/{method.name}", method))
    return methods


METHODS = _services()


def _scalars(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.one_of(st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64), st.sampled_from([0.0, 1.0]))
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.one_of(st.integers(-3, 10), st.sampled_from([-(2**63), 2**63 - 1, 253402300800, -62135596801]))
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.one_of(st.integers(0, 10), st.just(2**64 - 1))
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.one_of(st.integers(-3, 10), st.sampled_from([-(2**31), 2**31 - 1]))
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.one_of(st.integers(0, 10), st.just(2**32 - 1))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(KNOWN_STRINGS), st.text(max_size=12))
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=300), st.just(b"\x00" * 256), st.just(b"\x89PNG\r\n\x1a\n"))
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.just(99))
    raise AssertionError(f"no strategy for {field.full_name}")


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Any:
    """A message of `descriptor` with some fields set to edge values, nested messages to depth 3."""
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if draw(st.integers(0, 2)) != 0:  # a third of the fields are set
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            for _ in range(draw(st.integers(1, 2))):
                key = draw(_scalars(key_field))
                if value_field.message_type is not None:
                    if depth < 3:
                        getattr(message, field.name)[key].CopyFrom(draw(messages(value_field.message_type, depth + 1)))
                else:
                    getattr(message, field.name)[key] = draw(_scalars(value_field))
            continue
        count = draw(st.integers(1, 3)) if field.is_repeated else 1
        for _ in range(count):
            if field.message_type is not None:
                if depth >= 3:
                    break
                value = draw(messages(field.message_type, depth + 1))
                if field.is_repeated:
                    getattr(message, field.name).add().CopyFrom(value)
                else:
                    getattr(message, field.name).CopyFrom(value)
            elif field.is_repeated:
                getattr(message, field.name).append(draw(_scalars(field)))
            else:
                setattr(message, field.name, draw(_scalars(field)))
    return message


def payloads(method: MethodDescriptor) -> st.SearchStrategy[bytes]:
    """The bytes of one request: a generated message, or (one in five) bytes that are no message."""
    garbage = st.one_of(st.binary(min_size=1, max_size=64), st.just(b"\x0a\xff\xff\xff"))
    valid = messages(method.input_type).map(lambda m: m.SerializeToString())
    return st.one_of(valid, valid, valid, valid, garbage)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("fuzz")
    proc = ServerProcess(
        folder / "server.log",
        env={
            "TASK_WORKERS": "0",
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "UPLOAD_DIR": str(folder / "uploads"),
            "REDIS_ADDRESS": "",
            "TFSERVING_GRPC": "true",
            "INFERENCE_V2": "true",
        },
    )
    try:
        proc.wait_serving(120)
        yield proc
    finally:
        if proc.process.poll() is None:
            proc.stop()


def _check(code: grpc.StatusCode, details: str, name: str) -> None:
    assert code not in SERVER_ERRORS, f"{name}: {code.name} {details!r}"
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{name}: no answer within {CALL_TIMEOUT_S}s"
    if code != grpc.StatusCode.OK:
        assert details, f"{name}: {code.name} without a message"


CALLS: list[str] = []  # every call made, for the count checked at the end


def call_once(channel: grpc.Channel, name: str, method: MethodDescriptor, requests: list[bytes]) -> None:
    CALLS.append(name)
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    try:
        if method.client_streaming:
            multi = (channel.stream_stream if method.server_streaming else channel.stream_unary)(name, **identity)
            reply = multi(iter(requests), timeout=CALL_TIMEOUT_S)
            if method.server_streaming:
                for _ in reply:
                    pass
        elif method.server_streaming:
            stream = channel.unary_stream(name, **identity)(requests[0], timeout=CALL_TIMEOUT_S)
            next(stream, None)  # a watch may stay open: its first answer (or status) is what is checked
            stream.cancel()
        else:
            channel.unary_unary(name, **identity)(requests[0], timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.CANCELLED and method.server_streaming and not method.client_streaming:
            return  # cancelled by this test after its first answer
        _check(exc.code(), exc.details() or "", name)


@pytest.mark.parametrize("name,method", METHODS, ids=[name for name, _ in METHODS])
def test_generated_requests_never_get_a_server_error(
    fuzzed_server: ServerProcess, name: str, method: MethodDescriptor
) -> None:
    many = (
        st.lists(payloads(method), min_size=1, max_size=3)
        if method.client_streaming
        else payloads(method).map(lambda p: [p])
    )

    with grpc.insecure_channel(fuzzed_server.target) as channel:

        @FUZZ
        @given(requests=many)
        def run(requests: list[bytes]) -> None:
            call_once(channel, name, method, requests)

        run()
    assert health_status(fuzzed_server.target) == "SERVING", fuzzed_server.log()[-3000:]


def test_after_the_fuzz_the_server_exits_on_sigterm(fuzzed_server: ServerProcess) -> None:
    if len(set(CALLS)) == len(METHODS):  # the whole module ran (not a selection of it)
        assert len(CALLS) >= 3000, len(CALLS)
    assert health_status(fuzzed_server.target) == "SERVING"
    fuzzed_server.signal(signal.SIGTERM)
    assert fuzzed_server.process.wait(60) == 0, Path(fuzzed_server.log_path).read_text()[-3000:]
    log = fuzzed_server.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[log.find("Traceback") - 500 :][:4000]
