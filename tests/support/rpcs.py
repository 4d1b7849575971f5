"""Every RPC of the API from its descriptors, callable by full name with an empty request."""

from __future__ import annotations

import importlib
import re
import urllib.request
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from tests.support.servers import ROOT

API_MODULES = sorted(p.stem for p in (ROOT / "generated" / "serving" / "v1").glob("*_pb2.py"))
_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")  # {name} or {name=tasks/*}
KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


@dataclass(frozen=True)
class Rpc:
    """One method of the API."""

    name: str  # /package.Service/Method
    descriptor: MethodDescriptor

    @property
    def kind(self) -> str:
        return KINDS[(self.descriptor.client_streaming, self.descriptor.server_streaming)]

    def empty_request(self) -> Any:
        return message_factory.GetMessageClass(self.descriptor.input_type)()

    def http_route(self) -> tuple[str, str, bool]:
        """(HTTP method, a concrete path, whether it takes a body) from the `google.api.http` annotation."""
        http: Any = annotations_pb2.http  # its .pyi says FieldDescriptor, not the extension's own type
        rule: http_pb2.HttpRule = self.descriptor.GetOptions().Extensions[http]
        kind = rule.WhichOneof("pattern")
        verb, template = (rule.custom.kind, rule.custom.path) if kind == "custom" else (kind, getattr(rule, kind))
        path = _VARIABLE.sub(lambda m: (m.group(2) or "x").replace("**", "x").replace("*", "x"), template)
        return verb.upper(), path, bool(rule.body)

    def call(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = (), timeout: float = 10) -> Any:
        """Call over gRPC with an empty request; raises grpc.RpcError on a failed status."""
        response_class = message_factory.GetMessageClass(self.descriptor.output_type)
        multicallable = getattr(channel, self.kind)(
            self.name,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        argument = iter([self.empty_request()]) if self.descriptor.client_streaming else self.empty_request()
        result = multicallable(argument, timeout=timeout, metadata=metadata)
        return list(result) if self.descriptor.server_streaming else result


def api_rpcs() -> list[Rpc]:
    """Every method of every service in the API's descriptors (serving.v1.*_pb2)."""
    rpcs = []
    for module_name in API_MODULES:
        module = importlib.import_module(f"serving.v1.{module_name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rpcs.append(Rpc(f"/{service.full_name}/{method.name}", method))
    return rpcs


def grpc_rpcs() -> list[Rpc]:
    """`api_rpcs()`, TensorFlow Serving's gRPC API and the Open Inference Protocol's, also served on the
    gRPC port (not over the shim's routes); the protocol's probes, which need no key, are left out."""
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    from inference import open_inference_pb2
    from server.security.auth import PROBE_METHODS

    rpcs = api_rpcs()
    for module in (prediction_service_pb2, model_service_pb2, open_inference_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                name = f"/{service.full_name}/{method.name}"
                if name not in PROBE_METHODS:
                    rpcs.append(Rpc(name, method))
    return rpcs


def scrape(app: Any) -> str:
    """The App's /metrics page from its metrics port."""
    url = f"http://127.0.0.1:{app.telemetry.metrics_server.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
