"""/openapi.json and /docs of a real tsfmd, and Schemathesis run against the live daemon.

Schemathesis (its Python API, 4.x) reads the live /openapi.json and sends the requests it
generates from it, schema-valid and not, to a real tsfmd on loopback: no answer may be a
5xx, break the documented schema, status or media type, or be a 4xx without a message.
Bounded: a few examples per operation, so the whole run stays well under a minute.
"""
from __future__ import annotations

from collections import Counter

import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance)

from conftest import start_tsfmd
from tsfmd.api import operations
from tsfmd.api.openapi import document

SERVED = "fracast-fc"
#: generated cases per operation (positive and negative): bounded for a 2-core CI
EXAMPLES = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("openapi")
    running = start_tsfmd(root, f"  {SERVED}:\n    family: fracast\n    source: bundled\n"
                                "    device: cpu\n",
                          extra_server=f"  state_dir: {root}\n")
    yield running
    running.stop()


def test_the_document_is_openapi_31_with_every_registered_operation(server):
    doc = server.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    for op in operations.operations():
        assert op.method in doc["paths"][op.path], op.path
    for path in ("/v1/models/{key}/forecast", "/v1/models", "/healthz", "/readyz",
                 "/v1/status", "/openapi.json"):
        assert path in doc["paths"]
    forecast = doc["paths"]["/v1/models/{key}/forecast"]["post"]
    body = forecast["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ForecastBody"}
    assert "$defs" not in str(doc)  # every definition moved into components
    schemas = doc["components"]["schemas"]
    for name in ("ForecastBody", "SeriesIn", "Parameters", "ForecastAnswer", "Problem"):
        assert name in schemas, name
    problem = forecast["responses"]["400"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"}
    assert doc == document()  # served as built


def test_the_schema_is_the_validator(server):
    """A limit of the pydantic model shows in the document and in the answer alike."""
    schema = document()["components"]["schemas"]["ForecastBody"]
    assert schema["properties"]["inputs"]["maxItems"] == 1000
    too_many = {"inputs": [{"target": [1.0] * 8}] * 1001}
    r = server.post(f"/v1/models/{SERVED}/forecast", too_many)
    assert r.status_code == 400 and r.json()["field"] == "inputs"


def test_docs_page_is_offline(server):
    r = server.get("/docs")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    page = r.text
    assert "openapi.json" in page
    # nothing fetched from elsewhere: no absolute URL in a src, href or fetch
    for marker in ('src="http', "src='http", 'href="http', "fetch(\"http", "//cdn"):
        assert marker not in page


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance,
          status_code_conformance]


def test_schemathesis_finds_no_5xx_and_no_schema_break(server):
    live = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    statuses = {}
    for result in live.get_all_operations():
        operation = result.ok()
        statuses[operation.label] = seen = Counter()
        run_cases(operation, seen)
    print("statuses per operation:", statuses)
    # /openapi.json itself Schemathesis leaves out
    assert len(statuses) >= 6, statuses
    forecast = statuses["POST /v1/models/{key}/forecast"]
    assert forecast[200] and forecast[400], forecast  # forecasts ran, and were refused


def run_cases(operation, seen: Counter) -> None:
    """Schemathesis's generated cases for one operation, schema-valid and not (hypothesis,
    bounded, repeatable); `seen` counts the statuses answered."""
    run_mode(operation, operation.as_strategy(GenerationMode.POSITIVE), seen)
    try:
        run_mode(operation, operation.as_strategy(GenerationMode.NEGATIVE), seen)
    except Unsatisfiable:
        pass  # an operation without parameters or body has nothing to get wrong


def run_mode(operation, cases, seen: Counter) -> None:
    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        if "key" in (case.path_parameters or {}):
            case.path_parameters["key"] = SERVED  # a model that serves, so forecasts run
        response = case.call(timeout=60)
        seen[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        if 400 <= response.status_code < 500:
            answer = response.json()
            assert answer.get("detail") or answer.get("error"), response.text

    check()


def test_unknown_keys_are_problems_too(server):
    r = requests.post(f"{server.url}/v1/models/%20nope/forecast", json={}, timeout=30)
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/problem+json"
