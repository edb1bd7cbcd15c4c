"""TDgpt's model-service wire protocol: check a request body, shape the reply.

Body (POST JSON): `input` (numbers, oldest first), `next_len` (int > 0), and optionally
`ts`, `conf_interval`, `past_dynamic_real`, `dynamic_real`. Fields TDgpt may add later are
ignored. Every problem becomes a `BadInput` whose message says what is wrong; the
daemon answers it as a 4xx JSON body and keeps serving.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np

from tsfmd.errors import BadInput
from tsfmd.families.base import Capabilities, Forecast, SeriesInput
from tsfmd.intervals import median_and_band, quantile_at

#: at most this share of `input` may be missing (null/NaN) and still be filled
MAX_MISSING_SHARE = 0.1


def bad(message: str) -> BadInput:
    return BadInput(message)


@dataclass
class ForecastRequest:
    """A checked request: a finite series ready for a family, plus what to answer."""

    series: SeriesInput
    horizon: int
    conf: Optional[float] = None
    notes: List[str] = field(default_factory=list)


def parse_request(body: Any, caps: Capabilities, model: str) -> ForecastRequest:
    """Validate TDgpt's JSON body against the model's capabilities."""
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON object, got {_json_type(body)}")
    if "input" not in body:
        raise bad("missing field 'input': the history to forecast from, a list of numbers")
    if "next_len" not in body:
        raise bad("missing field 'next_len': how many future points to forecast")
    horizon = _horizon(body["next_len"], caps, model)
    notes: List[str] = []
    values = _series(body["input"], notes)
    if values.size < caps.min_context:
        raise bad(
            f"'input' has {values.size} usable points; model {model} needs at least "
            f"{caps.min_context}"
        )
    _check_ts(body.get("ts"), len(body["input"]))
    conf = _conf(body.get("conf_interval"))
    past = _covariates(body, "past_dynamic_real", len(body["input"]), caps.past_covariates, model)
    future = _covariates(
        body, "dynamic_real", len(body["input"]) + horizon, caps.future_covariates, model
    )
    if values.size > caps.context_limit:
        dropped = values.size - caps.context_limit
        notes.append(
            f"input has {values.size} points; kept the most recent {caps.context_limit} "
            f"(the context limit of {model})"
        )
        values = values[dropped:]
        past = past[:, dropped:] if past is not None else None
        future = future[:, dropped:] if future is not None else None
    series = SeriesInput(values=values, past_covariates=past, future_covariates=future)
    return ForecastRequest(series=series, horizon=horizon, conf=conf, notes=notes)


def success_reply(
    request: ForecastRequest, forecast: Forecast, row: int, caps: Capabilities
) -> dict:
    """The 200 body for one series of a (possibly batched) forecast."""
    h = request.horizon
    reply: dict = {"status": "success"}
    if forecast.quantiles is not None and caps.intervals:
        native = forecast.quantiles[row, :h]
        if request.conf is not None:
            median, lower, upper = median_and_band(caps.quantile_levels, native, request.conf)
            reply["output"] = _floats(median)
            reply["lower"] = _floats(lower)
            reply["upper"] = _floats(upper)
        else:
            reply["output"] = _floats(quantile_at(caps.quantile_levels, native, 0.5))
    else:
        reply["output"] = _floats(forecast.point[row, :h])
    if request.notes:
        reply["notes"] = list(request.notes)
    return reply


def _floats(values: np.ndarray) -> list:
    return [float(v) for v in np.asarray(values, dtype=np.float64)]


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def _horizon(value: Any, caps: Capabilities, model: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"'next_len' must be a positive integer, got {_json_type(value)}")
    if isinstance(value, float) and not value.is_integer():
        raise bad(f"'next_len' must be a positive integer, got {value}")
    horizon = int(value)
    if horizon <= 0:
        raise bad(f"'next_len' must be a positive integer, got {horizon}")
    if horizon > caps.horizon_limit:
        raise bad(
            f"'next_len' is {horizon}; model {model} forecasts at most {caps.horizon_limit} points"
        )
    return horizon


def _series(raw: Any, notes: List[str]) -> np.ndarray:
    """The history as float64; short gaps of null/NaN are filled, anything else refused."""
    if not isinstance(raw, list):
        raise bad(f"'input' must be a list of numbers, got {_json_type(raw)}")
    if not raw:
        raise bad("'input' is empty: send the history to forecast from")
    values = np.empty(len(raw), dtype=np.float64)
    for i, item in enumerate(raw):
        if item is None:
            values[i] = np.nan
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            raise bad(f"'input'[{i}] must be a number, got {_json_type(item)} ({item!r:.40})")
        else:
            values[i] = float(item)
    if np.isinf(values).any():
        where = np.flatnonzero(np.isinf(values))[:10].tolist()
        raise bad(f"'input' contains infinite values at positions {where}")
    missing = np.flatnonzero(np.isnan(values))
    if missing.size:
        if missing.size == values.size:
            raise bad("'input' has no numbers: every value is null or NaN")
        if missing.size > MAX_MISSING_SHARE * values.size:
            raise bad(
                f"'input' has {missing.size} of {values.size} values missing (null or NaN); "
                f"tsfmd fills at most {int(MAX_MISSING_SHARE * 100)}%: clean the series first"
            )
        known = np.flatnonzero(~np.isnan(values))
        values[missing] = np.interp(missing, known, values[known])
        shown = missing[:10].tolist()
        more = "" if missing.size <= 10 else f" and {missing.size - 10} more"
        notes.append(
            f"filled {missing.size} missing input value(s) at positions {shown}{more} by "
            "linear interpolation (nearest value at the ends)"
        )
    return values


def _check_ts(ts: Any, length: int) -> None:
    """`ts` is informational (newer TDgpt sends it); only check it is well formed."""
    if ts is None or ts == []:
        return
    if not isinstance(ts, list) or any(
        isinstance(t, bool) or not isinstance(t, (int, float)) for t in ts
    ):
        raise bad("'ts' must be a list of timestamps (integers)")
    if len(ts) != length:
        raise bad(f"'ts' has {len(ts)} timestamps but 'input' has {length} values")


def _conf(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"'conf_interval' must be a number between 0 and 1, got {_json_type(value)}")
    if not 0.0 < value < 1.0:
        raise bad(f"'conf_interval' must be between 0 and 1 (exclusive), e.g. 0.95, got {value}")
    return float(value)


def _covariates(body: dict, name: str, length: int, supported: bool, model: str):
    """A [k, length] array, None when absent or empty, or a 400 saying what is wrong."""
    raw = body.get(name)
    if raw is None or raw == [] or (isinstance(raw, list) and all(r == [] for r in raw)):
        return None
    if not isinstance(raw, list) or not all(isinstance(r, list) for r in raw):
        raise bad(f"'{name}' must be a list of lists of numbers (one list per covariate)")
    if not supported:
        raise bad(f"model {model} cannot use covariates: remove '{name}' or pick a model that can")
    rows = []
    for k, row in enumerate(raw):
        if len(row) != length:
            expected = "as long as 'input'" if name == "past_dynamic_real" else (
                "as long as 'input' plus 'next_len'"
            )
            raise bad(f"'{name}'[{k}] has {len(row)} values; it must be {expected} ({length})")
        try:
            values = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError):
            raise bad(f"'{name}'[{k}] must contain only numbers") from None
        if any(isinstance(v, bool) for v in row) or not np.isfinite(values).all():
            raise bad(f"'{name}'[{k}] must contain only finite numbers")
        rows.append(values)
    return np.stack(rows)
