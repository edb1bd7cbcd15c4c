"""The HTTP face of tsfmd: a Flask app built by `create_app(models, ...)`.

Where a request goes:
  POST /<model route>   -> forecast (protocol.parse_request -> ModelHandle.submit -> reply),
                           or imputation for a model that imputes (tsfmd/api/imputation.py)
  GET  /<model route>   -> 405, as TDgpt's reference service answers its status probe
  GET  /v1/models       -> every model with status, limits and capabilities
  GET  /healthz         -> the process answers
  GET  /readyz          -> 200 when every required model is ready, else 503 naming them
  GET  /v1/status       -> the daemon itself: registry, reload counts, requests in flight
  GET  /metrics         -> Prometheus' text format (tsfmd/api/metrics.py)
  GET  /, /ui/<file>    -> the web page (tsfmd/api/ui/)
Every error is a JSON body {"status": "error", "error": "<what is wrong>"}.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Callable, Optional

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from tsfmd.core import errors
from tsfmd.core.admission import Admission
from tsfmd.api import ui
from tsfmd.api.kserve import kserve_blueprint
from tsfmd.api.forecasting import forecast_series
from tsfmd.api.imputation import imputation_reply, serves_imputation
from tsfmd.api.metrics import metrics_blueprint, note_model
from tsfmd.api.native import native_api
from tsfmd.api.statuses import HttpError, retry_headers, status_of
from tsfmd.api.tdgpt import decode_body, parse_request, success_reply
from tsfmd.core.models import READY, Models
from tsfmd.daemon.waitress_hooks import ARRIVED
from tsfmd.daemon.wire import too_large_message

access_log = logging.getLogger("tsfmd.access")
log = logging.getLogger("tsfmd.app")


def json_response(payload: dict, status: int = 200, headers: dict = None) -> Response:
    body = json.dumps(payload, allow_nan=False)
    return Response(body, status=status, headers=headers or {}, mimetype="application/json")


def error_response(status: int, message: str, headers: dict = None) -> Response:
    return json_response({"status": "error", "error": message}, status, headers)


def create_app(
    models: Models,
    max_request_bytes: int = 16 * 1024 * 1024,
    daemon_status: Optional[Callable[[], dict]] = None,
    admission: Optional[Admission] = None,
) -> Flask:
    """`admission` bounds the request threads forecasts may hold (the daemon passes one for
    its `server.threads`); without one each model is bounded by its own queue and batch."""
    admission = admission or Admission()
    app = Flask("tsfmd")
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.extensions["tsfmd.admission"] = admission  # the one budget every API admits through

    @app.before_request
    def _start_timer():
        g.started = time.monotonic()
        _refuse_encoded_body()

    @app.after_request
    def _log_request(response):
        elapsed = time.monotonic() - g.get("started", time.monotonic())
        # with auth on, the client's name from the tokens file (tsfmd/api/auth.py)
        client = f" client={g.client}" if g.get("client") else ""
        access_log.info(
            "%s %s %d %.3fs %s%s", request.method, request.path, response.status_code,
            elapsed, request.remote_addr or "-", client,
        )
        return response

    @app.errorhandler(errors.ServeError)
    def _serve_error(exc: errors.ServeError):
        return error_response(status_of(exc), exc.message, retry_headers(exc.retry_after))

    @app.errorhandler(HttpError)
    def _http_only_error(exc: HttpError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc):
        return error_response(413, too_large_message(max_request_bytes))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    app.register_blueprint(metrics_blueprint(models, admission, daemon_status))

    @app.get("/healthz")
    def healthz():
        return json_response({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        # Ready means "what must serve serves": models marked `required: false` that are
        # not ready are listed, and do not make readiness fail.
        handles = models.table.handles.values()
        waiting = {h.key: _state(h) for h in handles if h.status != READY and h.spec.required}
        optional = {h.key: _state(h) for h in handles
                    if h.status != READY and not h.spec.required}
        if waiting:
            return json_response(
                {"status": "not ready", "not_ready": waiting, "optional_not_ready": optional},
                503)
        ready = sorted(h.key for h in handles if h.status == READY)
        return json_response(
            {"status": "ready", "models": ready, "optional_not_ready": optional})

    @app.get("/v1/status")
    def status():
        return json_response(daemon_status() if daemon_status else {"summary": models.table.summary()})

    @app.get("/v1/models")
    def list_models():
        described = []
        for h in models.table.handles.values():
            info = h.describe()
            if info.get("batching") is not None:
                info["batching"]["admission"] = admission.describe(h.key, h.executor)
            described.append(info)
        return json_response({"models": described})

    app.register_blueprint(native_api(models, admission, max_request_bytes))
    app.register_blueprint(ui.blueprint)  # the web page at / and its files under /ui/
    app.register_blueprint(kserve_blueprint(models, admission))

    # "/" itself is the web page's: no registry route may be "/" (core/registry.py)
    @app.route("/<path:path>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def model_route(path: str):
        route = "/" + path.rstrip("/")
        handle = models.route(route)
        if handle is None:
            served = ", ".join(sorted(models.table.routes)) or "none"
            raise errors.NotFound(f"no model is served at {route}; served routes: {served}")
        note_model(handle.key, route)  # /metrics labels its answer with the model
        if serves_imputation(handle):  # TDgpt's imputation body (MOMENT's), not a forecast
            return json_response(imputation_reply(handle, admission, request))
        if request.method != "POST":
            raise HttpError(
                405, f"{route} serves model {handle.key}: POST a JSON forecast request",
                {"Allow": "POST"},
            )
        # waitress's hang-up probe (see server.py, channel_request_lookahead)
        gone = request.environ.get("waitress.client_disconnected")
        arrived = request.environ.get(ARRIVED)  # the deadline counts from here
        served = forecast_series(
            handle, admission, lambda caps: [parse_request(_json_body(), caps, handle.key)],
            gone, arrived)
        return json_response(
            success_reply(served.requests[0], served.forecasts[0], 0, served.caps))

    return app


def _refuse_encoded_body() -> None:
    """tsfmd reads bodies as sent: a compressed one would be parsed as garbage JSON."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise HttpError(
            415, f"Content-Encoding {encoding!r} is not supported: send the JSON body "
            "uncompressed (identity)", {"Accept-Encoding": "identity"})


def _json_body():
    # get_data raises RequestEntityTooLarge past the limit; decode_body answers every
    # other problem (deep nesting, numbers beyond float64) as BadInput
    return decode_body(request.get_data(cache=False))


def _state(handle) -> str:
    return f"{handle.status}: {handle.reason}" if handle.reason else handle.status
