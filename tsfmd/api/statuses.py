"""The one mapping from tsfmd's domain errors to HTTP, shared by every API.

Each API shapes its own error body (TDgpt's JSON, problem+json, KServe's ErrorResponse),
but the status of a domain error and its Retry-After header are decided here once. It
imports nothing of the APIs, so every API module can import it at the top.
"""
from __future__ import annotations

from typing import Optional

from tsfmd.core import errors


class HttpError(Exception):
    """An answer about HTTP itself (a wrong method); domain errors live in tsfmd.core.errors."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


#: the one mapping from domain errors to HTTP statuses (most specific first)
STATUS_OF = (
    (errors.BadInput, 400),
    (errors.NotFound, 404),
    (errors.ClientGone, 499),  # nobody reads it; logged as nginx does
    (errors.ModelFault, 500),
    (errors.Overloaded, 503),
    (errors.Unavailable, 503),
    (errors.DeadlineExceeded, 504),
)


def status_of(exc: errors.ServeError) -> int:
    for kind, status in STATUS_OF:
        if isinstance(exc, kind):
            return status
    return 500


def retry_headers(retry_after: Optional[float], headers: Optional[dict] = None) -> dict:
    """`headers` plus Retry-After (whole seconds) when the answer says when to come back."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after))
    return headers
