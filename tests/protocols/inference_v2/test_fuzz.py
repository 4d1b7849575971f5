"""Generated bad input against the Open Inference Protocol: never a server error, always a named one.

Derandomized hypothesis runs (repeatable in CI) send malformed and nearly
right requests to the real App: REST infer bodies (JSON, with and without a
binary part) and gRPC ModelInfer messages (any datatype, shape, contents or
raw bytes). Every answer must be a success or a client error with a message:
never HTTP 5xx, never INTERNAL or UNKNOWN. The server keeps serving after each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference import open_inference_pb2 as pb
from inference import open_inference_pb2_grpc
from server.protocols.inference_v2.tensors import DATATYPES
from tests.support.servers import MODEL_DIR

pytestmark = pytest.mark.integration

EXAMPLES = 150
SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

# Mostly nearly right (the digits model's own input name, datatype and shape), sometimes anything.
names = st.one_of(st.just("image"), st.sampled_from(["image", "digit", "probabilities", "", "x"]))
datatypes = st.one_of(st.just("FP32"), st.sampled_from([*DATATYPES, "FLOAT", "", "fp32"]))
dims = st.one_of(st.integers(-2, 9), st.sampled_from([0, 2**31, 2**62, 2**63 - 1]))
shapes = st.one_of(st.integers(0, 3).map(lambda n: [n, 8, 8, 1]), st.lists(dims, max_size=6))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=20,
)
data = st.one_of(json_values, st.lists(st.floats(0, 1, width=32), min_size=0, max_size=70))


@st.composite
def rest_tensors(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    shape = draw(st.one_of(shapes, json_values))
    rows = shape[0] if isinstance(shape, list) and len(shape) == 4 and shape[1:] == [8, 8, 1] else None
    right_size = (
        st.lists(st.floats(0, 1, width=32), min_size=64 * rows, max_size=64 * rows) if rows is not None else data
    )
    tensor = {
        "name": draw(names),
        "datatype": draw(datatypes),
        "shape": shape,
        "data": draw(st.one_of(right_size, data)),
    }
    for key in draw(st.sets(st.sampled_from(["name", "datatype", "shape", "data"]), max_size=2)):
        if draw(st.integers(0, 3)) == 0:
            del tensor[key]
    if draw(st.booleans()):
        tensor["parameters"] = draw(
            st.one_of(
                json_values, st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-5, 300), json_scalars)})
            )
        )
    return tensor


@st.composite
def rest_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    payload = draw(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"inputs": st.lists(rest_tensors(), max_size=3)},
                optional={
                    "id": json_scalars,
                    "parameters": json_values,
                    "outputs": st.lists(
                        st.fixed_dictionaries({"name": names}, optional={"parameters": json_values}), max_size=3
                    ),
                    "model_name": json_scalars,
                    "model_version": json_scalars,
                },
            ),
        )
    )
    body = json.dumps(payload).encode()
    binary = draw(st.binary(max_size=300))
    headers = {}
    if binary or draw(st.booleans()):
        length = draw(
            st.one_of(
                st.just(len(body)),
                st.integers(-3, len(body) + 400).map(str),
                st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=4),
            )
        )
        headers["Inference-Header-Content-Length"] = str(length)
        body += binary
    return body, headers


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(st.one_of(st.just("digits"), st.sampled_from(["digits", "digits_decoder", "", "nope"]))),
        model_version=draw(st.one_of(st.just(""), st.sampled_from(["", "1", "2", "x", "²", "0"]))),
        id=draw(st.text(max_size=4)),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(1, 2)) if draw(st.integers(0, 4)) else 0):
        tensor = request.inputs.add(name=draw(names), datatype=draw(datatypes))
        shape = draw(
            st.one_of(shapes, st.lists(st.integers(-2, 9) | st.sampled_from([0, 2**62, 2**63 - 1]), max_size=6))
        )
        tensor.shape.extend(shape)
        if raw:
            fitting = 4 * int(np.prod(shape)) if len(shape) == 4 and shape[1:] == [8, 8, 1] else 0
            request.raw_input_contents.append(
                draw(st.one_of(st.binary(min_size=fitting, max_size=fitting), st.binary(max_size=600)))
            )
        else:
            field = draw(
                st.sampled_from(
                    [
                        "fp32_contents",
                        "int_contents",
                        "int64_contents",
                        "bytes_contents",
                        "bool_contents",
                        "uint64_contents",
                        "fp64_contents",
                    ]
                )
            )
            values = {
                "fp32_contents": st.floats(width=32),
                "fp64_contents": st.floats(),
                "int_contents": st.integers(-(2**31), 2**31 - 1),
                "int64_contents": st.integers(-(2**63), 2**63 - 1),
                "uint64_contents": st.integers(0, 2**64 - 1),
                "bool_contents": st.booleans(),
                "bytes_contents": st.binary(max_size=5),
            }[field]
            getattr(tensor.contents, field).extend(draw(st.lists(values, max_size=70)))
    if draw(st.booleans()):
        output = request.outputs.add(name=draw(names))
        if draw(st.booleans()):
            output.parameters["classification"].int64_param = draw(st.integers(-3, 20))
    return request


@pytest.fixture(scope="module")
def app() -> Iterator[object]:
    from server.app import App
    from server.config import Settings

    app = App(
        Settings(
            _env_file=None,
            grpc_server_address="127.0.0.1:0",
            http_server_address="127.0.0.1:0",
            metrics_address="",
            access_log_path="",
            model_dir=MODEL_DIR,
            max_http_body_bytes=100_000,
        )
    )
    try:
        app.start()
        yield app
    finally:
        app.stop(grace=1)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def test_rest_infer_answers_every_generated_body_with_a_client_error_or_success(app, session) -> None:
    url = f"http://{app.http_address}/v2/models/digits/infer"

    @FUZZ
    @given(rest_bodies())
    def check(sent: tuple[bytes, dict[str, str]]) -> None:
        body, headers = sent
        reply = session.post(url, data=body, headers=headers, timeout=30)
        assert reply.status_code < 500, (reply.status_code, reply.text, body[:300], headers)
        if reply.status_code >= 400:
            assert reply.json()["error"], reply.text

    check()
    assert session.get(f"http://{app.http_address}/v2/health/ready", timeout=10).json() == {"ready": True}


def test_grpc_model_infer_answers_every_generated_message_with_a_client_error_or_success(app) -> None:
    with grpc.insecure_channel(app.address) as channel:
        stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)

        @FUZZ
        @given(grpc_requests())
        def check(request: pb.ModelInferRequest) -> None:
            try:
                stub.ModelInfer(request, timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() not in SERVER_ERRORS, (exc.code(), exc.details(), request)
                assert exc.details(), request

        check()
        x = np.zeros((1, 8, 8, 1), np.float32)
        request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[x.tobytes()])
        request.inputs.add(name="image", datatype="FP32", shape=x.shape)
        assert stub.ModelInfer(request, timeout=30).outputs[0].shape == [1, 10]
