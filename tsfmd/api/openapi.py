"""The OpenAPI 3.1 document at /openapi.json, and the offline docs page at /docs.

The document is built from tsfmd/api/operations.py's table alone: each operation's pydantic
models give their JSON Schemas (pydantic's `models_json_schema`, which also tells apart
two models of the same name from different modules), with every `$defs` entry moved into
`components/schemas`. The request models are the ones that validate requests, so what is
documented is what is checked. TDgpt's per-model routes (POST <route> in TDgpt's wire
format) are not in it: their paths come from the registry; README documents them.

/docs is a small page of tsfmd's own (tsfmd/data/docs.html, no CDN, no external network)
that renders the document and can send a request from it.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Dict, List, Optional

from flask import Blueprint, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from tsfmd.api import operations
from tsfmd.api.problem import KIND_MEANING
from tsfmd.version import __version__

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details; `field` names where the request is wrong",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "a link to the kind's meaning in /docs"},
        "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string", "minLength": 1},
        "field": {"type": "string", "description": "e.g. inputs[3].target[17]"},
        "error": {"type": "string", "description": "the detail again"},
    },
}
ERROR_SCHEMA = {
    "type": "object", "description": "tsfmd's plain error answer",
    "required": ["status", "error"],
    "properties": {"status": {"const": "error"}, "error": {"type": "string", "minLength": 1}},
}
_ERROR_REFS = {"application/problem+json": "#/components/schemas/Problem",
               "application/json": "#/components/schemas/Error"}
_REF = "#/components/schemas/{model}"


def document() -> Dict[str, Any]:
    """The OpenAPI 3.1 document of every registered operation."""
    ops = operations.operations()
    wanted = []
    for op in ops:
        if op.request is not None:
            wanted.append((op.request, "validation"))
        wanted.extend((m, "serialization") for m in op.responses.values() if m is not None)
    wanted = list(dict.fromkeys(wanted))
    refs, defs = models_json_schema(wanted, ref_template=_REF) if wanted else ({}, {})
    schemas = dict(defs.get("$defs", {}))
    schemas.update(Problem=PROBLEM_SCHEMA, Error=ERROR_SCHEMA)
    paths: Dict[str, Dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tsfmd", "version": __version__, "description": _description()},
        "paths": paths,
        "components": {"schemas": schemas},
        "tags": [{"name": tag} for tag in sorted({op.tag for op in ops})],
    }


def _operation(op: operations.Operation, refs) -> Dict[str, Any]:
    entry: Dict[str, Any] = {
        "summary": op.summary, "tags": [op.tag],
        "operationId": f"{op.method.lower()}{_slug(op.path)}",
        "responses": {str(status): _response(op, status, model, refs)
                      for status, model in sorted(op.responses.items())},
    }
    if op.description:
        entry["description"] = op.description
    if op.parameters:
        entry["parameters"] = [dict(p) for p in op.parameters]
    if op.request is not None:
        entry["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": refs[(op.request, "validation")]}}}
    return entry


def _response(op, status: int, model, refs) -> Dict[str, Any]:
    if model is not None:
        return {"description": _phrase(status),
                "content": {"application/json": {"schema": refs[(model, "serialization")]}}}
    if status >= 400:
        media = op.error_media_type
        return {"description": _phrase(status),
                "content": {media: {"schema": {"$ref": _ERROR_REFS[media]}}}}
    return {"description": _phrase(status)}


def _slug(path: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in path.replace("{", "").replace("}", ""))


def _phrase(status: int) -> str:
    from tsfmd.api.problem import _title

    return _title(status)


def _description() -> str:
    kinds = "\n".join(f"- `/docs#problem-{k}`: {v}" for k, v in KIND_MEANING.items())
    return ("Time-series foundation models served by tsfmd. TDgpt's per-model routes "
            "(POST <route>, TDgpt's wire format) are not listed here: the registry names "
            "them. Errors of the native API are application/problem+json; their `type`:\n"
            + kinds)


# -- the daemon's own GET routes ---------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Health(_Open):
    status: str = Field(..., description='"ok" while the process answers')


class Readiness(_Open):
    status: str = Field(..., description='"ready" or "not ready"')
    models: Optional[List[str]] = None
    not_ready: Optional[Dict[str, str]] = None
    optional_not_ready: Dict[str, str] = Field(default_factory=dict)


class ModelInfo(_Open):
    key: str
    family: str
    status: str = Field(..., description="loading, ready or failed")
    routes: List[str]
    context_limit: Optional[int] = None
    horizon_limit: Optional[int] = None


class ModelList(BaseModel):
    models: List[ModelInfo]


class DaemonStatus(_Open):
    """The daemon: registry, reloads, requests in flight (fields grow over versions)."""


class OpenAPIDocument(_Open):
    openapi: str


operations.register(
    operations.Operation("get", "/healthz", "The process answers", "admin",
                         responses={200: Health}, error_media_type="application/json"),
    operations.Operation("get", "/readyz", "Every required model serves", "admin",
                         responses={200: Readiness, 503: Readiness},
                         error_media_type="application/json"),
    operations.Operation("get", "/v1/models", "Every model: state, limits, capabilities",
                         "admin", responses={200: ModelList},
                         error_media_type="application/json"),
    operations.Operation("get", "/v1/status", "The daemon: registry, reloads, in flight",
                         "admin", responses={200: DaemonStatus},
                         error_media_type="application/json"),
    operations.Operation("get", "/openapi.json", "This document", "docs",
                         responses={200: OpenAPIDocument}),
    operations.Operation("get", "/docs", "A page that renders this document (HTML)", "docs",
                         responses={200: None}),
)


def docs_api() -> Blueprint:
    """/openapi.json and /docs."""
    api = Blueprint("docs", __name__)

    @api.get("/openapi.json")
    def openapi_json() -> Response:
        return Response(json.dumps(document()), mimetype="application/json")

    @api.get("/docs")
    def docs_page() -> Response:
        page = resources.files("tsfmd").joinpath("data/docs.html").read_text("utf-8")
        return Response(page, mimetype="text/html")

    return api
