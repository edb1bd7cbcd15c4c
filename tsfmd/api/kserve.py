"""KServe's open time-series protocol beside TDgpt's: one Flask Blueprint.

  POST /v1/timeseries/forecast  -> {"model": <registry key>, "inputs": [series...],
                                    "options": {"horizon": H, "quantiles"?: [...]}}
  GET  /v1/timeseries/models    -> ["<registry key>", ...]: the models ready to forecast
                                   (KServe's answer is the bare list of names)

The schema is KServe's (tsfmd/api/kserve_schema.py). A KServe model name is a tsfmd registry
key. The series of one request go through the model's executor concurrently (at most as many
at once as one batch holds), so they share forward passes like any concurrent requests.
Quantile levels are any in (0, 1): off the model's native grid they come from
tsfmd/core/intervals.py (interpolated inside it, a fitted tail outside). A model without
quantiles (Time-MoE) refuses `quantiles` as KServe's own server does for a level it cannot
give: 400 with type "invalid_quantile". `mean_forecast` is what TDgpt's `output` is: the
median for quantile models, the model's point forecast otherwise.

Errors are KServe's ErrorResponse, {"error": {"code": "<status>", "message", "param",
"type"}}, with the HTTP status of tsfmd/api/statuses.py's STATUS_OF. A series that fails alone
after its model ran (a non-finite answer, a forecast beyond float64) fails only its own
output: the answer is 200 with status "partial" and that output's status "error"; when
every series fails the answer is that error. Overload, a deadline or an unready model fail
the whole request (503/504, Retry-After where known): none of its series is answered.
"""
from __future__ import annotations

import calendar
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import List, Optional, Sequence

import numpy as np
from flask import Blueprint, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from tsfmd.api import statuses as http
from tsfmd.api.statuses import retry_headers
from tsfmd.api.forecasting import forecast_series
from tsfmd.api.kserve_schema import (
    KServeError, KServeErrorResponse, KServeForecastRequest, KServeForecastResponse,
    KServeModelList, KServeTimeSeriesType,
)
from tsfmd.api.operations import Operation, register
from tsfmd.api.tdgpt import decode_body
from tsfmd.core import errors
from tsfmd.core.admission import Admission
from tsfmd.core.intervals import quantile_at
from tsfmd.core.models import READY, ModelHandle, Models
from tsfmd.core.request import ForecastRequest, finite, in_request_units, prepare
from tsfmd.daemon.waitress_hooks import ARRIVED
from tsfmd.daemon.wire import too_large_message
from tsfmd.families.base import Capabilities, Forecast, SeriesInput

log = logging.getLogger("tsfmd.kserve")

FORECAST_PATH = "/v1/timeseries/forecast"
MODELS_PATH = "/v1/timeseries/models"
_ANY_METHOD = ["GET", "POST", "PUT", "DELETE", "PATCH"]

#: the `type` of an error answer, by domain error (most specific first); a request field
#: KServe names its own kind for (options.horizon, ...) says so through `Refused.kind`
ERROR_TYPES = (
    (errors.BadInput, "BadRequestError"),  # KServe's create_error_response default
    (errors.NotFound, "model_not_found"),
    (errors.ClientGone, "client_gone"),
    (errors.ModelFault, "model_error"),
    (errors.Overloaded, "overloaded"),
    (errors.Unavailable, "model_not_ready"),
    (errors.DeadlineExceeded, "timeout"),
)
#: errors that belong to one series of a request, not to the request as a whole
_PER_SERIES = (errors.BadInput, errors.ModelFault)


class Refused(errors.BadInput):
    """A request field KServe's protocol has its own error kind for."""

    def __init__(self, message: str, field: str, kind: str = "BadRequestError"):
        super().__init__(message, field)
        self.kind = kind


def kserve_blueprint(models: Models, admission: Admission) -> Blueprint:
    """The two routes over the daemon's models and its admission budget."""
    bp = Blueprint("kserve", __name__)

    @bp.route(FORECAST_PATH, methods=_ANY_METHOD)
    def forecast():
        if request.method != "POST":
            raise http.HttpError(405, f"{FORECAST_PATH} takes POST with a KServe forecast "
                                      "request", {"Allow": "POST"})
        return _forecast(models, admission)

    @bp.route(MODELS_PATH, methods=_ANY_METHOD)
    def list_models():
        if request.method != "GET":
            raise http.HttpError(405, f"{MODELS_PATH} takes GET", {"Allow": "GET"})
        # as KServe lists the models it has loaded; each one's state is in GET /v1/models
        names = KServeModelList(sorted(key for key, handle in models.table.handles.items()
                                       if handle.status == READY))
        return Response(names.model_dump_json(), mimetype="application/json")

    @bp.errorhandler(errors.ServeError)
    def _serve_error(exc: errors.ServeError):
        return error_answer(http.status_of(exc), exc.message, _kind(exc),
                            getattr(exc, "field", None), exc.retry_after)

    @bp.errorhandler(http.HttpError)
    def _http_only(exc):
        return error_answer(exc.status, exc.message, _http_kind(exc.status), headers=exc.headers)

    @bp.errorhandler(RequestEntityTooLarge)
    def _too_large(exc):
        limit = request.max_content_length or 0
        return error_answer(413, too_large_message(limit), _http_kind(413))

    @bp.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        return error_answer(status, exc.description or exc.name, _http_kind(status))

    @bp.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_answer(500, f"internal error: {type(exc).__name__}: {exc}",
                            "internal_error")

    return bp


def error_answer(status: int, message: str, kind: str, param: Optional[str] = None,
                 retry_after: Optional[int] = None, headers: Optional[dict] = None) -> Response:
    """KServe's ErrorResponse with `status` as HTTP status and as error.code."""
    body = KServeErrorResponse(error=_error(status, message, kind, param))
    return Response(body.model_dump_json(), status=status,
                    headers=retry_headers(retry_after, headers), mimetype="application/json")


def _error(status: int, message: str, kind: str, param: Optional[str] = None) -> KServeError:
    # KServe's own error constructor writes param "" when no field is at fault
    return KServeError(code=str(status), message=message, param=param or "", type=kind)


def _kind(exc: errors.ServeError) -> str:
    if isinstance(exc, Refused):
        return exc.kind
    return next((kind for cls, kind in ERROR_TYPES if isinstance(exc, cls)), "internal_error")


def _http_kind(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


# -- one forecast request -------------------------------------------------------------------

@dataclass
class _Checked:
    """A request checked against its model: what was asked, when each forecast starts, and
    each series as the core runs it."""

    asked: KServeForecastRequest
    starts: List[str]
    requests: List[ForecastRequest]


def _forecast(models: Models, admission: Admission) -> Response:
    raw = request.get_data(cache=False)
    if not raw:
        raise Refused("the body is empty: send a KServe forecast request (JSON with 'model', "
                      "'inputs' and 'options')", "")
    body = decode_body(raw)
    handle = _handle(models, body)
    checked: List[_Checked] = []

    def build(caps: Capabilities) -> List[ForecastRequest]:
        checked.append(_checked(_validated(body), caps, handle.key))
        return checked[0].requests

    served = forecast_series(handle, admission, build,
                             request.environ.get("waitress.client_disconnected"),
                             request.environ.get(ARRIVED), per_series=_PER_SERIES)
    outcomes = served.forecasts
    answer, failures = _answer(checked[0], served.caps, outcomes)
    if len(failures) == len(outcomes):  # no series has a forecast: answer as its error
        raise failures[0]
    return Response(answer.model_dump_json(), mimetype="application/json")


def _handle(models: Models, body) -> ModelHandle:
    """The model the body names: looked up before the body is checked, so admission can
    refuse an over-budget request before the work of validating it."""
    name = body.get("model") if isinstance(body, dict) else None
    if not isinstance(name, str):
        _validated(body)  # says what is wrong with the body
        raise Refused("'model' must name a model", "model")
    handle = models.table.handles.get(name)
    if handle is None:
        served = ", ".join(sorted(models.table.handles)) or "none"
        missing = errors.NotFound(f"no model {name!r}; served models: {served} "
                                  f"(GET {MODELS_PATH})")
        missing.field = "model"  # the request field at fault, for error.param
        raise missing
    return handle


#: the error kind KServe names for a wrong value of these request fields
_FIELD_KINDS = {"frequency": "invalid_frequency", "horizon": "invalid_horizon",
                "quantiles": "invalid_quantile"}


def _validated(body) -> KServeForecastRequest:
    try:
        return KServeForecastRequest.model_validate(body)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = _field_name(problem["loc"])
        kind = next((_FIELD_KINDS[p] for p in problem["loc"] if p in _FIELD_KINDS),
                    "BadRequestError")
        raise Refused(f"{field or 'the body'}: {problem['msg']}", field, kind) from None


def _field_name(loc: Sequence) -> str:
    """pydantic's location ('inputs', 0, 'series') as a path: inputs[0].series."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif "[" not in str(part):  # union branches are named like 'list[float]': skip
            text += f".{part}" if text else str(part)
    return text


def _checked(asked: KServeForecastRequest, caps: Capabilities, model: str) -> _Checked:
    """Every series checked against the model and prepared as the core runs it."""
    horizon = asked.options.horizon
    if horizon <= 0:
        raise Refused(f"options.horizon must be a positive integer, got {horizon}",
                      "options.horizon", "invalid_horizon")
    if horizon > caps.horizon_limit:
        raise Refused(f"options.horizon is {horizon}; model {model} forecasts at most "
                      f"{caps.horizon_limit} steps", "options.horizon", "invalid_horizon")
    _check_quantiles(asked.options.quantiles, caps, model)
    if not asked.inputs:
        raise Refused("'inputs' is empty: send at least one series", "inputs")
    starts, requests = [], []
    for i, series in enumerate(asked.inputs):
        values = _values(series, i, caps, model)
        starts.append(start_of_forecast(series.start_timestamp, series.frequency.value,
                                        values.size, f"inputs[{i}].start_timestamp"))
        requests.append(prepare(SeriesInput(values=values), horizon, caps, model))
    return _Checked(asked, starts, requests)


def _check_quantiles(levels: Optional[List[float]], caps: Capabilities, model: str) -> None:
    if not levels:
        return
    if not caps.intervals:
        raise Refused(f"model {model} gives point forecasts only, no quantiles: leave out "
                      "options.quantiles or pick a model with quantiles",
                      "options.quantiles", "invalid_quantile")
    for level in levels:
        if not (math.isfinite(level) and 0.0 < level < 1.0):
            raise Refused(f"options.quantiles: every level must lie between 0 and 1 "
                          f"(exclusive), got {level}", "options.quantiles", "invalid_quantile")


def _values(series, i: int, caps: Capabilities, model: str) -> np.ndarray:
    where = f"inputs[{i}]"
    if series.type != KServeTimeSeriesType.UNIVARIATE:
        raise Refused(f"{where}.type: only univariate_time_series is supported: send each "
                      "variable as its own series", f"{where}.type",
                      "unsupported_time_series_type")
    if any(isinstance(v, list) for v in series.series):
        raise Refused(f"{where}.series: a univariate series is a flat list of numbers",
                      f"{where}.series")
    values = np.asarray(series.series, dtype=np.float64)
    if not np.isfinite(values).all():
        at = np.flatnonzero(~np.isfinite(values))[:10].tolist()
        raise Refused(f"{where}.series holds values that are not finite numbers at "
                      f"positions {at}", f"{where}.series")
    if values.size < caps.min_context:
        raise Refused(f"{where}.series has {values.size} points; model {model} needs at "
                      f"least {caps.min_context}", f"{where}.series")
    return values


# -- the answer -----------------------------------------------------------------------------

def _answer(checked: _Checked, caps: Capabilities, outcomes: Sequence):
    """KServe's ForecastResponse, one output per series, and the per-series errors."""
    asked = checked.asked
    outputs, failures, read, made = [], [], 0, 0
    for i, (series, req, outcome) in enumerate(zip(asked.inputs, checked.requests, outcomes)):
        output = {"type": "time_series_forecast", "id": str(uuid.uuid4())}
        try:
            if isinstance(outcome, errors.ServeError):
                raise outcome
            content = _series_forecast(series, checked.starts[i], req, outcome, caps,
                                       asked.options.quantiles)
        except _PER_SERIES as exc:
            failures.append(exc)
            failed = _error(http.status_of(exc), exc.message, _kind(exc), f"inputs[{i}]")
            outputs.append({**output, "status": "error", "content": [], "error": failed})
            continue
        outputs.append({**output, "status": "completed", "content": [content], "error": None})
        read += int(req.series.values.size)
        made += req.horizon
    status = "partial" if failures else "completed"
    answer = KServeForecastResponse(
        id=str(uuid.uuid4()), created_at=int(time.time()), status=status, error=None,
        model=asked.model, outputs=outputs,
        usage={"prompt_tokens": read, "completion_tokens": made, "total_tokens": read + made},
    )
    return answer, failures


def _series_forecast(series, start: str, req: ForecastRequest, forecast: Forecast,
                     caps: Capabilities, levels: Optional[List[float]]) -> dict:
    """One series' forecast in the request's units: TDgpt's `output` as mean_forecast, and
    each asked level from the native quantiles (tails extended as for TDgpt's bands)."""
    h = req.horizon
    native = None
    if forecast.quantiles is not None and caps.intervals:
        native = in_request_units(req, forecast.quantiles[0, :h])
        point = quantile_at(caps.quantile_levels, native, 0.5)
    else:
        point = in_request_units(req, forecast.point[0, :h])
    quantiles = None
    if levels is not None:
        quantiles = {str(level): _floats(req, quantile_at(caps.quantile_levels, native, level))
                     for level in levels}
    return {"type": series.type, "name": series.name, "mean_forecast": _floats(req, point),
            "frequency": series.frequency, "start_timestamp": start, "quantiles": quantiles}


def _floats(req: ForecastRequest, values) -> List[float]:
    return [float(v) for v in finite(req, np.asarray(values, dtype=np.float64))]


# -- timestamps -----------------------------------------------------------------------------

#: frequency -> (unit, steps of it): KServe's FREQUENCY_MAP, with months counted by calendar
_STEP = {"S": ("seconds", 1), "second": ("seconds", 1), "T": ("minutes", 1),
         "minute": ("minutes", 1), "H": ("hours", 1), "hour": ("hours", 1),
         "D": ("days", 1), "day": ("days", 1), "W": ("weeks", 1), "week": ("weeks", 1),
         "M": ("months", 1), "month": ("months", 1), "Q": ("months", 3),
         "quarter": ("months", 3), "Y": ("months", 12), "year": ("months", 12)}


def start_of_forecast(start: Optional[str], frequency: str, points: int, field: str) -> str:
    """The time of the first forecast step: `start` plus `points` steps of `frequency`, in
    the form `start` came in ("2024-01-01T00:00:00Z" gives "...Z"); "" without a start.
    A start that is not ISO 8601 is refused naming `field`."""
    if start is None:
        return ""
    zulu = start.endswith(("Z", "z"))
    try:  # Python 3.10's fromisoformat does not read a trailing Z
        first = datetime.fromisoformat(start[:-1] + "+00:00" if zulu else start)
    except ValueError:
        raise Refused(f"{field} must be an ISO 8601 time such as 2024-01-01T00:00:00Z, "
                      f"got {start[:40]!r}", field) from None
    unit, steps = _STEP[frequency]
    try:
        if unit == "months":
            moved = _plus_months(first, steps * points)
        else:
            moved = first + timedelta(**{unit: steps * points})
    except OverflowError:
        raise Refused(f"{field} plus the series' {points} steps of {frequency} lies beyond "
                      "the year 9999", field) from None
    text = moved.isoformat()
    return text[:-len("+00:00")] + "Z" if zulu and text.endswith("+00:00") else text


def _plus_months(when: datetime, months: int) -> datetime:
    """`when` moved by whole months, the day clamped to the month's end (Jan 31 + 1 = Feb 28)."""
    year, month = divmod(when.year * 12 + when.month - 1 + months, 12)
    if not 1 <= year <= 9999:
        raise OverflowError("beyond the calendar")
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return when.replace(year=year, month=month + 1, day=day)


# -- the operations table (tsfmd/api/operations.py builds /openapi.json from it) ------------

_ERRORS = {status: KServeErrorResponse for status in (400, 404, 405, 413, 415, 500, 503, 504)}

register(
    Operation(
        method="post", path=FORECAST_PATH, tag="kserve",
        summary="Forecast many series (KServe's open time-series protocol)",
        request=KServeForecastRequest,
        responses={200: KServeForecastResponse, **_ERRORS},
        error_media_type="application/json",
        description=(
            "KServe's time-series forecast request and answer. `model` is a tsfmd registry "
            "key (GET /v1/timeseries/models). Quantile levels anywhere in (0, 1) are served; "
            "a model without quantiles answers 400 invalid_quantile when asked for some. "
            "Errors are KServe's ErrorResponse with the HTTP status in error.code."),
    ),
    Operation(
        method="get", path=MODELS_PATH, tag="kserve",
        summary="The models the KServe time-series API serves (their names)",
        responses={200: KServeModelList, 405: KServeErrorResponse},
        error_media_type="application/json",
        description="The registry keys of the models ready to forecast, as KServe lists "
                    "its loaded time-series models: a JSON array of names. Every model's "
                    "state is in GET /v1/models.",
    ),
)
