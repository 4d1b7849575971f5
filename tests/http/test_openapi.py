"""Schemathesis against /openapi.json of the running App: no 5xx, and every answer as documented.

Each operation gets a bounded number of generated examples (`MAX_EXAMPLES`,
derandomized so CI runs are repeatable). Checks: no server error, documented
status code and content type, and response bodies valid against the schema.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.http.openapi import openapi_document
from server.http.routes import build_routes
from tests.http.test_routes import API_SERVICES
from tests.support.http_fixtures import Served

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schemathesis.serializer("application/x-ndjson")  # type: ignore[arg-type]  # a JSON value, sent as one line
def _ndjson(context: schemathesis.SerializationContext, value: Any) -> dict[str, Any]:
    """A streamed request body: one generated message as one NDJSON line."""
    if isinstance(value, bytes):
        return {"data": value}
    return {"data": json.dumps(value, default=str).encode() + b"\n"}


# The document the App serves, built here from the same descriptors (pytest
# collects one test per operation before any server runs); the first test
# checks that the served document is this one.
DOCUMENT = openapi_document(build_routes([*API_SERVICES, "grpc.health.v1.Health"]))
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_served_document_is_the_one_tested(served: Served) -> None:
    assert requests.get(f"{served.url}/openapi.json", timeout=30).json() == json.loads(json.dumps(DOCUMENT))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_the_promises_of_its_openapi_document(case: schemathesis.Case, served: Served) -> None:
    case.call_and_validate(base_url=served.url, checks=CHECKS, timeout=30)
