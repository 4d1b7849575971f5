"""HTTP routes built from the `google.api.http` annotations of the served RPCs.

Every method of every registered service that carries an `HttpRule` (and each
of its `additional_bindings`) becomes a `Route`; nothing is written per RPC.
`Router.match` finds the route for a method and raw path: the more specific
templates (with a `:verb`, then with more literal segments) are tried first, a
path that matches only under other HTTP methods is a 405, anything else a 404.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from server.errors import NotFound
from server.http.responses import MethodNotAllowed
from server.http.templates import PathTemplate, compile_template


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str
    template: PathTemplate
    method: MethodDescriptor
    body: str
    response_body: str
    binding: int

    @property
    def rpc(self) -> str:
        """The full gRPC method name, `/package.Service/Method`."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def client_streaming(self) -> bool:
        return self.method.client_streaming

    @property
    def server_streaming(self) -> bool:
        return self.method.server_streaming

    @property
    def operation_id(self) -> str:
        name = f"{self.method.containing_service.name}_{self.method.name}"
        return f"{name}_{self.binding}" if self.binding else name

    def new_request(self) -> Message:
        return message_factory.GetMessageClass(self.method.input_type)()


def http_rules(method: MethodDescriptor) -> list[http_pb2.HttpRule]:
    """The method's `google.api.http` rule and its additional bindings (empty when unannotated)."""
    options = method.GetOptions()
    http: Any = annotations_pb2.http  # its .pyi says FieldDescriptor, not the extension's own type
    if not options.HasExtension(http):
        return []
    rule: http_pb2.HttpRule = options.Extensions[http]
    return [rule, *rule.additional_bindings]


def _verb_and_path(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError("an HttpRule without a pattern")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), getattr(rule, kind)


def routes_of(service: ServiceDescriptor) -> list[Route]:
    """Every HTTP binding of a service's annotated methods, in declaration order."""
    routes = []
    for method in service.methods:
        for index, rule in enumerate(http_rules(method)):
            http_method, path = _verb_and_path(rule)
            routes.append(Route(http_method, compile_template(path), method, rule.body, rule.response_body, index))
    return routes


def build_routes(services: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None) -> list[Route]:
    """Routes for the named services (full names) whose descriptors are in `pool`.

    Services the pool does not know (such as ones registered without
    descriptors) and unannotated methods get no route.
    """
    pool = pool or descriptor_pool.Default()
    routes = []
    for name in services:
        try:
            service = pool.FindServiceByName(name)
        except KeyError:
            continue
        routes.extend(routes_of(service))
    return routes


class Router:
    """Finds the route and path variables for an HTTP method and raw path."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = sorted(routes, key=lambda r: r.template.specificity, reverse=True)

    def match(self, http_method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        allowed = []
        for route in self.routes:
            variables = route.template.match(raw_path)
            if variables is None:
                continue
            if route.http_method == http_method:
                return route, variables
            allowed.append(route.http_method)
        if allowed:
            raise MethodNotAllowed(http_method, raw_path, allowed)
        raise NotFound(f"no route for {http_method} {raw_path}")
