"""gRPC health checking (grpc.health.v1) as grpcio-health-checking serves it, with messages on its errors."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2

from server.errors import cut


class HealthServicer(health.HealthServicer):
    """The library's servicer; an unknown service name is NOT_FOUND saying which (the library sets no message)."""

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        response = super().Check(request, context)
        code = getattr(context, "code", lambda: None)()
        if code == grpc.StatusCode.NOT_FOUND:
            context.set_details(cut(f"service: '{request.service}' is not a name health checking knows"))
        return response
