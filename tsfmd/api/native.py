"""tsfmd's native API: `POST /v1/models/{key}/forecast` in the payload of Amazon's Chronos-2
SageMaker endpoint, so its clients work unchanged.

Request: {"inputs": [{"target": [...], "item_id"?, "start"?, "past_covariates"?: {name:
[...]}, "future_covariates"?: {name: [...]}}], "parameters": {"prediction_length"?: H (1),
"freq"?, "quantile_levels"?: [...] ([0.1, 0.5, 0.9])}}. Answer: {"predictions": [{"mean":
[...], "0.1": [...], ..., "item_id"?, "start"?}]}, one per input, in order.

As the endpoint does: `mean` is the median (the 0.5 quantile) of a model with quantiles,
and the point forecast of one without; each level is keyed by Python's str(level), e.g.
"0.1"; `start` needs `freq` (and `freq` a `start` on every input) and is echoed advanced
to the first forecast step (start + len(target) * freq); past covariates are as long as
`target`, future ones `prediction_length` long, and a name in both is a known-future
covariate (a future one needs its past values too). Beyond it: any level in (0, 1) is
served from the model's native quantiles (tails extended as for TDgpt's bands,
tsfmd/core/intervals.py); null in `target` is a missing value filled as TDgpt's `input`.
Covariate names map to rows in sorted order, so the same names give the same rows in
every series. Categorical (string) covariates and cross-learning are refused, by name.

The request schema is the pydantic model below: it validates requests and is the
/openapi.json schema (tsfmd/api/openapi.py), so the two never disagree. Errors are
problem+json (tsfmd/api/problem.py) naming the field that is wrong.
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta
from typing import Any, Dict, List, Optional

import numpy as np
from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tsfmd.api import operations
from tsfmd.api.forecasting import forecast_series
from tsfmd.api.openapi import docs_api
from tsfmd.api.problem import answer_errors_as_problems
from tsfmd.api.statuses import HttpError
from tsfmd.api.tdgpt import MAX_MISSING_SHARE, decode_body  # one rule for missing values
from tsfmd.core.admission import Admission
from tsfmd.core.errors import BadInput, NotFound, Unsupported
from tsfmd.core.intervals import quantile_at
from tsfmd.core.request import ForecastRequest, finite, in_request_units, prepare
from tsfmd.daemon.waitress_hooks import ARRIVED
from tsfmd.families.base import Capabilities, SeriesInput

#: Amazon's endpoint takes at most this many series a request
MAX_SERIES = 1000
DEFAULT_LEVELS = (0.1, 0.5, 0.9)

_Number = float  # strict validation: a JSON integer or float, never a string or boolean


class SeriesIn(BaseModel):
    """One series to forecast."""

    model_config = ConfigDict(extra="forbid")
    target: List[Optional[_Number]] = Field(
        ..., min_length=1, description="the history, oldest first; null marks a missing "
        "value (at most 10% of them, filled by linear interpolation)")
    item_id: Optional[str] = Field(None, description="echoed in the answer; unique")
    start: Optional[str] = Field(
        None, description="ISO timestamp of target[0] (YYYY-MM-DD or YYYY-MM-DDThh:mm:ss); "
        "needs parameters.freq")
    past_covariates: Optional[Dict[str, List[_Number]]] = Field(
        None, description="name -> values as long as target (numbers)")
    future_covariates: Optional[Dict[str, List[_Number]]] = Field(
        None, description="name -> prediction_length values; the name must also be in "
        "past_covariates (a known-future covariate)")


class Parameters(BaseModel):
    """How to forecast every series of the request."""

    model_config = ConfigDict(extra="forbid")
    prediction_length: int = Field(1, ge=1, description="steps to forecast")
    quantile_levels: List[float] = Field(
        list(DEFAULT_LEVELS), description="levels in (0, 1) to answer, each keyed by "
        "str(level); levels beyond the model's native ones get fitted normal tails")
    freq: Optional[str] = Field(
        None, description="fixed-length pandas frequency of the series, e.g. 1h, 15min, "
        "D, 30s; needs a start on every input")
    batch_size: Optional[int] = Field(
        None, ge=1, description="accepted for Amazon's clients; tsfmd batches by its "
        "registry's batching settings")
    predict_batches_jointly: bool = Field(
        False, description="cross-learning across series; tsfmd forecasts each series on "
        "its own, so only false is served")


EXAMPLE = {
    "inputs": [{"target": [1.0, 2.0, 3.0, 2.0, 0.5, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0],
                "item_id": "product_A", "start": "2024-01-01T01:00:00"}],
    "parameters": {"prediction_length": 4, "freq": "1h", "quantile_levels": [0.1, 0.5, 0.9]},
}


class ForecastBody(BaseModel):
    """The request of Amazon's Chronos-2 SageMaker endpoint."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})
    inputs: List[SeriesIn] = Field(..., min_length=1, max_length=MAX_SERIES)
    parameters: Parameters = Field(default_factory=Parameters)


class Prediction(BaseModel):
    """The forecast of one input: `mean`, one list per quantile level, item_id, start."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: Dict[str, List[float]]
    mean: List[float]
    item_id: Optional[str] = None
    start: Optional[str] = None


class ForecastAnswer(BaseModel):
    predictions: List[Prediction]
    notes: Optional[List[str]] = Field(
        None, description="what tsfmd did to the inputs (filled gaps, context cut), "
        "each naming its input")


KEY_PARAMETER = {"name": "key", "in": "path", "required": True,
                 "description": "the model's registry key, as GET /v1/models lists",
                 "schema": {"type": "string"}}

operations.register(operations.Operation(
    method="post", path="/v1/models/{key}/forecast", tag="native",
    summary="Forecast many series (Amazon Chronos-2 endpoint payload)",
    description=__doc__.split("\n\n")[1], request=ForecastBody,
    responses={200: ForecastAnswer, 400: None, 404: None, 405: None, 413: None, 415: None,
               503: None, 504: None},
    parameters=(KEY_PARAMETER,)))


def native_api(models, admission: Optional[Admission] = None,
               max_request_bytes: int = 16 * 1024 * 1024) -> Blueprint:
    """The native API's routes, answering every error as problem+json."""
    admission = admission or Admission()
    api = Blueprint("native", __name__)
    answer_errors_as_problems(api, max_request_bytes)
    api.register_blueprint(docs_api())  # /openapi.json and /docs, errors as problems too

    @api.route("/v1/models/<key>/forecast", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def forecast(key: str) -> Response:
        handle = models.table.handles.get(key)
        if handle is None:
            known = ", ".join(sorted(models.table.handles)) or "none"
            raise NotFound(f"no model has the key {key!r}; models: {known}")
        if request.method != "POST":
            raise HttpError(405, f"POST a forecast request to /v1/models/{key}/forecast",
                            {"Allow": "POST"})
        gone = request.environ.get("waitress.client_disconnected")
        body: Dict[str, Any] = {}

        def build(caps: Capabilities) -> List[ForecastRequest]:
            body["checked"] = checked = parse(request.get_data(cache=False))
            return series_requests(checked, caps, key)

        served = forecast_series(handle, admission, build, gone,
                                 request.environ.get(ARRIVED))
        answer = reply(body["checked"], served.requests, served.forecasts, served.caps)
        return Response(json.dumps(answer, allow_nan=False), mimetype="application/json")

    return api


def parse(raw: bytes) -> ForecastBody:
    """The body checked against the schema, or a BadInput naming the field that is wrong."""
    data = decode_body(raw)
    try:
        return ForecastBody.model_validate(data, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = field_path(first["loc"])
        raise BadInput(_readable(where, first), field=where or None) from None


def field_path(loc) -> str:
    """('inputs', 3, 'target', 17) -> 'inputs[3].target[17]'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _readable(where: str, error: dict) -> str:
    value = error.get("input")
    if error["type"] == "float_type" and isinstance(value, str) and "covariates" in where:
        return (f"{where} is the string {value[:40]!r}: tsfmd takes numeric covariates "
                "only; encode a categorical covariate as numbers")
    if error["type"] == "extra_forbidden":
        return f"{where} is not a field tsfmd knows: remove it (check its spelling)"
    if error["type"] == "missing":
        return f"{where} is required"
    shown = "" if isinstance(value, (dict, list)) else f", got {value!r}"[:80]
    return f"{where or 'the body'}: {error['msg']}{shown}"


def series_requests(body: ForecastBody, caps: Capabilities, model: str) -> List[ForecastRequest]:
    """One ForecastRequest per input, checked against the model's capabilities."""
    params = body.parameters
    horizon = params.prediction_length
    if horizon > caps.horizon_limit:
        raise BadInput(f"prediction_length is {horizon}; model {model} forecasts at most "
                       f"{caps.horizon_limit} steps", field="parameters.prediction_length")
    for i, level in enumerate(params.quantile_levels):
        if not 0.0 < level < 1.0:
            raise BadInput(f"quantile levels must lie in (0, 1), got {level}",
                           field=f"parameters.quantile_levels[{i}]")
    if params.quantile_levels and not caps.intervals and \
            "quantile_levels" in params.model_fields_set:
        raise Unsupported("it gives a point forecast only: ask for no quantile_levels "
                          "(the answer is `mean`) or pick a model with quantiles",
                          field="parameters.quantile_levels")
    if params.predict_batches_jointly:
        raise Unsupported("tsfmd forecasts each series on its own (no cross-learning): "
                          "send predict_batches_jointly false",
                          field="parameters.predict_batches_jointly")
    step = _step(params.freq)
    seen: Dict[str, int] = {}
    requests = []
    for i, series in enumerate(body.inputs):
        where = f"inputs[{i}]"
        if series.item_id is not None:
            if series.item_id in seen:
                raise BadInput(f"item_id {series.item_id!r} also names inputs"
                               f"[{seen[series.item_id]}]: item ids must be unique",
                               field=f"{where}.item_id")
            seen[series.item_id] = i
        _check_start(series, step, where)
        notes: List[str] = []
        values = filled(series.target, f"{where}.target", notes)
        if values.size < caps.min_context:
            raise BadInput(f"{where}.target has {values.size} values; model {model} needs at "
                           f"least {caps.min_context}", field=f"{where}.target")
        past, future = _covariates(series, horizon, caps, where)
        try:
            prepared = prepare(SeriesInput(values=values, past_covariates=past,
                                           future_covariates=future),
                               horizon, caps, model, None, [f"{where}: {n}" for n in notes])
        except BadInput as exc:
            raise BadInput(f"{where}: {exc.message}", field=exc.field or where) from None
        prepared.notes = [n if n.startswith(where) else f"{where}: {n}"
                          for n in prepared.notes]
        requests.append(prepared)
    return requests


def filled(target: List[Optional[float]], where: str, notes: List[str]) -> np.ndarray:
    """The target as float64 with short gaps (null, NaN) filled; infinities refused."""
    values = np.array([np.nan if v is None else v for v in target], dtype=np.float64)
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        raise BadInput(f"{where}[{infinite[0]}] is infinite", field=f"{where}[{infinite[0]}]")
    missing = np.flatnonzero(np.isnan(values))
    if missing.size == 0:
        return values
    if missing.size > MAX_MISSING_SHARE * values.size:
        raise BadInput(f"{where} has {missing.size} of {values.size} values missing (null); "
                       f"tsfmd fills at most {int(MAX_MISSING_SHARE * 100)}%", field=where)
    known = np.flatnonzero(~np.isnan(values))
    values[missing] = np.interp(missing, known, values[known])
    notes.append(f"filled {missing.size} missing value(s) at {missing[:10].tolist()} by "
                 "linear interpolation")
    return values


def _covariates(series: SeriesIn, horizon: int, caps: Capabilities, where: str):
    """(past-only rows [k, n], known-future rows [m, n + horizon]) by sorted name."""
    past = series.past_covariates or {}
    future = series.future_covariates or {}
    length = len(series.target)
    for name in sorted(future):
        if name not in past:
            raise BadInput(f"future covariate {name!r} needs its past values too: add it to "
                           f"{where}.past_covariates", field=f"{where}.future_covariates.{name}")
    for group, values, size in (("past_covariates", past, length),
                                ("future_covariates", future, horizon)):
        for name in sorted(values):
            row = values[name]
            field = f"{where}.{group}.{name}"
            if len(row) != size:
                expected = "len(target)" if group == "past_covariates" else "prediction_length"
                raise BadInput(f"{field} has {len(row)} values; it must have {expected} "
                               f"({size})", field=field)
            bad = [k for k, v in enumerate(row) if not math.isfinite(v)]
            if bad:
                raise BadInput(f"{field}[{bad[0]}] is not a finite number",
                               field=f"{field}[{bad[0]}]")
    past_only = sorted(set(past) - set(future))
    known = sorted(future)
    for names, able, group in ((past_only, caps.past_covariates, "past_covariates"),
                               (known, caps.future_covariates, "future_covariates")):
        if names and not able:
            raise Unsupported(f"it takes no {group.replace('_', ' ')}: remove {where}.{group} "
                              "or pick a model that takes them", field=f"{where}.{group}")
    past_rows = np.array([past[n] for n in past_only], dtype=np.float64) if past_only else None
    future_rows = (np.array([list(past[n]) + list(future[n]) for n in known], dtype=np.float64)
                   if known else None)
    return past_rows, future_rows


_FREQ = re.compile(r"^\s*(\d*)\s*(us|ms|s|S|sec|min|T|h|H|D)\s*$")
_UNIT = {"us": timedelta(microseconds=1), "ms": timedelta(milliseconds=1),
         "s": timedelta(seconds=1), "S": timedelta(seconds=1), "sec": timedelta(seconds=1),
         "min": timedelta(minutes=1), "T": timedelta(minutes=1), "h": timedelta(hours=1),
         "H": timedelta(hours=1), "D": timedelta(days=1)}


def _step(freq: Optional[str]) -> Optional[timedelta]:
    if freq is None:
        return None
    match = _FREQ.match(freq)
    if not match or match.group(1) == "0" * len(match.group(1)) and match.group(1):
        raise BadInput(f"freq {freq!r} is not a fixed-length frequency tsfmd can advance "
                       "start by: use e.g. 1h, 15min, D, 30s, 100ms", field="parameters.freq")
    return int(match.group(1) or 1) * _UNIT[match.group(2)]


def _check_start(series: SeriesIn, step: Optional[timedelta], where: str) -> None:
    if series.start is None:
        if step is not None:
            raise BadInput(f"parameters.freq is given, so {where}.start is needed",
                           field=f"{where}.start")
        return
    if step is None:
        raise BadInput(f"{where}.start is given, so parameters.freq is needed",
                       field="parameters.freq")
    _first_step(series, step, where)


def _first_step(series: SeriesIn, step: timedelta, where: str) -> str:
    """The timestamp of the first forecast step: start + len(target) * freq."""
    try:
        return (datetime.fromisoformat(series.start) + len(series.target) * step).isoformat()
    except (ValueError, OverflowError) as exc:
        raise BadInput(f"{where}.start {series.start[:40]!r} is not an ISO timestamp "
                       f"(YYYY-MM-DD or YYYY-MM-DDThh:mm:ss) that tsfmd can advance: {exc}",
                       field=f"{where}.start") from None


def reply(body: ForecastBody, requests: List[ForecastRequest], forecasts, caps) -> dict:
    """The answer of Amazon's endpoint: one prediction per input, in order."""
    params = body.parameters
    levels = list(dict.fromkeys(params.quantile_levels)) if caps.intervals else []
    step = _step(params.freq)
    predictions, notes = [], []
    for i, (series, req, forecast) in enumerate(zip(body.inputs, requests, forecasts)):
        h = req.horizon
        try:
            one: Dict[str, Any] = {}
            if forecast.quantiles is not None and caps.intervals:
                native = in_request_units(req, forecast.quantiles[0, :h])
                one["mean"] = _floats(req, quantile_at(caps.quantile_levels, native, 0.5))
                for level in levels:
                    one[str(level)] = _floats(req, quantile_at(caps.quantile_levels, native,
                                                               level))
            else:
                one["mean"] = _floats(req, in_request_units(req, forecast.point[0, :h]))
        except BadInput as exc:
            raise BadInput(f"inputs[{i}]: {exc.message}", field=f"inputs[{i}]") from None
        if series.item_id is not None:
            one["item_id"] = series.item_id
        if series.start is not None and step is not None:
            one["start"] = _first_step(series, step, f"inputs[{i}]")
        predictions.append(one)
        notes.extend(req.notes)
    answer: Dict[str, Any] = {"predictions": predictions}
    if notes:
        answer["notes"] = notes
    return answer


def _floats(req: ForecastRequest, values) -> List[float]:
    return [float(v) for v in finite(req, np.asarray(values, dtype=np.float64))]
