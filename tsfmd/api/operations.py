"""The table of HTTP operations tsfmd documents, shared by every API module.

Each API module (tsfmd/api/native.py, kserve.py, ...) describes its routes here with the
same pydantic models that validate its requests, and registers them once at import:
`register(Operation(...), ...)`. The OpenAPI document at /openapi.json is built from this
table alone, so what is documented is what is validated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional


@dataclass(frozen=True)
class Operation:
    """One documented route: its method, path, and the schemas of its body and answers."""

    method: str  # "get", "post", ...
    path: str  # an OpenAPI path template, e.g. "/v1/models/{key}/forecast"
    summary: str
    tag: str  # groups operations in the docs page, e.g. "native", "kserve", "admin"
    request: Optional[Any] = None  # a pydantic model class of the JSON body, or None
    # status -> a pydantic model class of the JSON answer, or None for a non-JSON answer
    responses: Mapping[int, Optional[Any]] = field(default_factory=dict)
    # media type of error answers: RFC 9457 problem+json, or tsfmd's {"status","error"} JSON
    error_media_type: str = "application/problem+json"
    description: str = ""
    parameters: tuple = ()  # OpenAPI parameter objects (dicts) for path and query parts


_OPERATIONS: Dict[tuple, Operation] = {}


def register(*operations: Operation) -> None:
    """Add operations to the table (idempotent: the same method and path replace)."""
    for op in operations:
        _OPERATIONS[(op.method.lower(), op.path)] = op


def operations() -> List[Operation]:
    """Every registered operation, in a stable order (by path, then method)."""
    return [op for _, op in sorted(_OPERATIONS.items())]
