"""Routes from `google.api.http` annotations: templates, matching, and a new RPC served with no code change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from server.dispatch import Dispatcher, HandlerRegistry
from server.errors import NotFound
from server.http.gateway import HttpGateway
from server.http.responses import MethodNotAllowed
from server.http.routes import Router, build_routes, http_rules
from server.http.templates import TemplateError, compile_template
from server.interceptors import ErrorInterceptor
from serving.v1 import predict_pb2, stream_pb2, task_pb2, upload_pb2

pytestmark = pytest.mark.integration

API_FILES = (predict_pb2, stream_pb2, task_pb2, upload_pb2)
API_SERVICES = [s.full_name for f in API_FILES for s in f.DESCRIPTOR.services_by_name.values()]

HTTP: Any = annotations_pb2.http  # its .pyi says FieldDescriptor, not the extension's own type


def test_templates_capture_decoded_variables_and_verbs() -> None:
    predict = compile_template("/v1/models/{model}:predict")
    assert predict.variables == ("model",) and predict.verb == "predict"
    assert predict.match("/v1/models/digits:predict") == {"model": "digits"}
    assert predict.match("/v1/models/my%2Fmodel%3Av2:predict") == {"model": "my/model:v2"}
    assert predict.match("/v1/models/digits") is None
    assert predict.match("/v1/models/a/b:predict") is None
    nested = compile_template("/v1/{name=projects/*/models/*}:get")
    assert nested.match("/v1/projects/p1/models/m1:get") == {"name": "projects/p1/models/m1"}
    assert nested.openapi_path == "/v1/{name}:get"
    deep = compile_template("/v1/files/{path=**}")
    assert deep.match("/v1/files/a/b/c.txt") == {"path": "a/b/c.txt"}
    dotted = compile_template("/v1/tasks/{task.id}")
    assert dotted.variables == ("task.id",) and dotted.match("/v1/tasks/t-1") == {"task.id": "t-1"}


@pytest.mark.parametrize("bad", ["v1/models", "/v1/{model", "/v1/{a{b}}", "/v1//x", "/v1/{1bad}", "/v1/x:bad verb"])
def test_malformed_templates_are_refused(bad: str) -> None:
    with pytest.raises(TemplateError):
        compile_template(bad)


def test_the_router_tries_verbs_first_and_tells_404_from_405() -> None:
    router = Router(build_routes(API_SERVICES))
    route, variables = router.match("GET", "/v1/tasks/abc:watch")
    assert (route.rpc, variables) == ("/serving.v1.TaskService/WatchTask", {"id": "abc"})
    route, variables = router.match("GET", "/v1/tasks/abc")
    assert (route.rpc, variables) == ("/serving.v1.TaskService/GetTask", {"id": "abc"})
    assert router.match("POST", "/v1/tasks:batchDelete")[0].rpc == "/serving.v1.TaskService/DeleteTasks"
    assert router.match("PATCH", "/v1/tasks/t1")[1] == {"task.id": "t1"}
    with pytest.raises(MethodNotAllowed) as not_allowed:
        router.match("PUT", "/v1/tasks/t1")
    assert not_allowed.value.allowed == ("DELETE", "GET", "PATCH")
    with pytest.raises(NotFound, match="no route for GET /v2/models"):
        router.match("GET", "/v2/models")


def test_every_method_of_the_api_is_annotated_and_routed() -> None:
    routed = {route.rpc for route in build_routes(API_SERVICES)}
    methods = [
        (service.full_name, method)
        for f in API_FILES
        for service in f.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    assert len(methods) == 19
    for service, method in methods:
        assert http_rules(method), f"{method.full_name} has no google.api.http annotation"
        assert f"/{service}/{method.name}" in routed


def _echo_file() -> descriptor_pb2.FileDescriptorProto:
    """A proto that exists only in this test: test.v1.EchoService with two annotated RPCs."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="test/v1/echo.proto", package="test.v1", syntax="proto3", dependency=["google/api/annotations.proto"]
    )
    mode = proto.enum_type.add(name="Mode")
    mode.value.add(name="MODE_UNSPECIFIED", number=0)
    mode.value.add(name="MODE_LOUD", number=1)
    message = proto.message_type.add(name="EchoRequest")
    F = descriptor_pb2.FieldDescriptorProto
    message.field.add(name="text", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, json_name="text")
    message.field.add(name="repeat_count", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL, json_name="repeatCount")
    message.field.add(name="tags", number=3, type=F.TYPE_STRING, label=F.LABEL_REPEATED, json_name="tags")
    message.field.add(
        name="mode", number=4, type=F.TYPE_ENUM, type_name=".test.v1.Mode", label=F.LABEL_OPTIONAL, json_name="mode"
    )
    service = proto.service.add(name="EchoService")
    echo = service.method.add(name="Echo", input_type=".test.v1.EchoRequest", output_type=".test.v1.EchoRequest")
    echo.options.Extensions[HTTP].CopyFrom(http_pb2.HttpRule(get="/v1/echo/{text}"))
    shout = service.method.add(name="Shout", input_type=".test.v1.EchoRequest", output_type=".test.v1.EchoRequest")
    shout.options.Extensions[HTTP].CopyFrom(http_pb2.HttpRule(post="/v1/echo/{text}:shout", body="*"))
    return proto


@pytest.fixture
def echo_gateway() -> Iterator[str]:
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        dependency = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(dependency)
        pool.Add(dependency)
    pool.Add(_echo_file())

    def shout(request, context):
        request.text = request.text.upper()
        return request

    registry = HandlerRegistry()
    registry.add_registered_method_handlers(
        "test.v1.EchoService",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
            "Shout": grpc.unary_unary_rpc_method_handler(shout),
        },
    )
    gateway = HttpGateway(
        "127.0.0.1:0",
        Dispatcher(registry, [ErrorInterceptor()]),
        registry.methods,
        max_body_bytes=1024,
        max_workers=2,
        pool=pool,
    )
    gateway.start()
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop(grace=1)


def test_a_new_annotated_rpc_gets_its_route_with_no_code_change(echo_gateway: str) -> None:
    reply = requests.get(f"{echo_gateway}/v1/echo/hi%20there?repeatCount=3&tags=a&tags=b&mode=MODE_LOUD", timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"text": "hi there", "repeatCount": "3", "tags": ["a", "b"], "mode": "MODE_LOUD"}
    # original field names work in the query string too
    assert requests.get(f"{echo_gateway}/v1/echo/x?repeat_count=2", timeout=10).json()["repeatCount"] == "2"
    shout = requests.post(f"{echo_gateway}/v1/echo/hey:shout", json={"repeat_count": "7", "tags": ["t"]}, timeout=10)
    assert shout.json() == {"text": "HEY", "repeatCount": "7", "tags": ["t"]}
    unknown = requests.get(f"{echo_gateway}/v1/echo/x?volume=11", timeout=10)
    assert unknown.status_code == 400
    assert unknown.json()["message"] == "query parameter 'volume': test.v1.EchoRequest has no field 'volume'"
    document = requests.get(f"{echo_gateway}/openapi.json", timeout=10).json()
    assert set(document["paths"]) >= {"/v1/echo/{text}", "/v1/echo/{text}:shout"}
    assert document["paths"]["/v1/echo/{text}"]["get"]["operationId"] == "EchoService_Echo"
    assert document["components"]["schemas"]["test.v1.EchoRequest"]["properties"]["repeatCount"]["format"] == "int64"
