"""Errors as RFC 9457 problem details (`application/problem+json`), for the APIs beside TDgpt's.

A problem names its kind (`type`, a link into the /docs page), its `title` (the HTTP
status phrase), `status`, `detail` (the sentence a user reads) and, for a wrong request,
`field`: where in the body it is wrong, e.g. "inputs[3].target[17]". `error` repeats the
detail for clients that read tsfmd's plain {"error"} answers. Statuses come from statuses.py's
STATUS_OF, the one mapping from domain errors to HTTP; 503s carry Retry-After.
"""
from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Optional

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from tsfmd.api.statuses import HttpError, retry_headers, status_of
from tsfmd.core import errors

MEDIA_TYPE = "application/problem+json"
#: Retry-After of a 503 whose cause names no time (a model that failed to load serves only
#: after its files are there and the registry is reloaded: look again in a minute)
DEFAULT_RETRY_S = 60

log = logging.getLogger("tsfmd.problem")

#: the kind of each domain error, most specific first (Unsupported is a BadInput)
_KINDS = (
    (errors.Unsupported, "unsupported"),
    (errors.BadInput, "bad-input"),
    (errors.NotFound, "not-found"),
    (errors.ClientGone, "client-gone"),
    (errors.ModelFault, "model-fault"),
    (errors.Overloaded, "overloaded"),
    (errors.Unavailable, "unavailable"),
    (errors.DeadlineExceeded, "deadline"),
)

#: what each kind means, for the docs page (and a reader of `type`)
KIND_MEANING = {
    "bad-input": "the request is wrong: `field` says where; fix it before retrying",
    "unsupported": "the model cannot do what the request asks (covariates, an option)",
    "not-found": "no model has that key",
    "client-gone": "the client hung up before the forecast ran",
    "model-fault": "the model ran but its answer is unusable (not the request's fault)",
    "overloaded": "the model is busy: retry after Retry-After seconds",
    "unavailable": "the model is loading or failed to load: retry after Retry-After",
    "deadline": "the forecast did not finish within the model's batching.timeout_s",
    "http": "the HTTP request itself is wrong (method, media type, size)",
    "internal": "a bug in tsfmd: please report it",
}


def problem(status: int, detail: str, kind: str, field: Optional[str] = None,
            retry_after: Optional[int] = None, headers: Optional[dict] = None) -> Response:
    """A problem+json answer."""
    body = {"type": f"/docs#problem-{kind}", "title": _title(status), "status": status,
            "detail": detail, "error": detail}
    if field:
        body["field"] = field
    return Response(json.dumps(body), status=status, headers=retry_headers(retry_after, headers),
                    mimetype=MEDIA_TYPE)


def from_error(exc: errors.ServeError) -> Response:
    kind = next((name for cls, name in _KINDS if isinstance(exc, cls)), "internal")
    status = status_of(exc)
    retry = exc.retry_after
    if status == 503 and retry is None:
        retry = DEFAULT_RETRY_S
    return problem(status, exc.message, kind, getattr(exc, "field", None), retry)


def answer_errors_as_problems(blueprint: Blueprint, max_request_bytes: int) -> None:
    """Every error raised while serving `blueprint`'s routes answers as problem+json."""
    from tsfmd.daemon.wire import too_large_message

    blueprint.register_error_handler(errors.ServeError, from_error)
    blueprint.register_error_handler(
        HttpError, lambda exc: problem(exc.status, exc.message, "http", headers=exc.headers))
    blueprint.register_error_handler(
        RequestEntityTooLarge,
        lambda exc: problem(413, too_large_message(max_request_bytes), "http"))
    blueprint.register_error_handler(
        HTTPException,
        lambda exc: problem(exc.code or 500, exc.description or exc.name, "http"))

    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return problem(500, f"internal error: {type(exc).__name__}: {exc}", "internal")

    blueprint.register_error_handler(Exception, unexpected)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Closed Request" if status == 499 else "Error"
