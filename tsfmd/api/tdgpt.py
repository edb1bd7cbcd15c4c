"""TDgpt's model-service wire protocol: check a request body, shape the reply.

Body (POST JSON): `input` (numbers, oldest first), `next_len` (int > 0), and optionally
`ts`, `conf_interval`, `past_dynamic_real`, `dynamic_real`. Fields TDgpt may add later are
ignored. Every problem becomes a `BadInput` whose message says what is wrong; the
daemon answers it as a 4xx JSON body and keeps serving. A SQL user never sees the JSON
names: TDgpt's FORECAST option `rows` becomes `next_len` and `conf` (a percentage) becomes
`conf_interval`, so messages name both, e.g. "rows (next_len) is 5000".

Numbers stay float64 until the model: for a model that normalises each series itself
(Capabilities.affine_equivariant) the series is scaled and shifted in float64 first and
the forecast mapped back (tsfmd/core/request.py, tsfmd/core/scaling.py), so magnitudes float32 cannot hold (1e39, a
counter at 1.7e9 with a small swing, a sine times 1e-12) forecast like any other series.
A number beyond float64 itself (1e309, an integer of 400 digits) is refused when the body
is decoded; a forecast that would leave float64's range is refused after the model ran,
and a model answer that is not finite is a ModelFault.
"""
from __future__ import annotations

import json
import math
from typing import Any, List, Optional

import numpy as np

from tsfmd.core.errors import BadInput
from tsfmd.core.intervals import median_and_band, quantile_at
from tsfmd.core.request import ROWS, ForecastRequest, finite, in_request_units, prepare
from tsfmd.families.base import Capabilities, Forecast, SeriesInput

#: at most this share of `input` may be missing (null/NaN) and still be filled
MAX_MISSING_SHARE = 0.1


#: integer literals longer than this are read as floats: no exact int is needed past it,
#: and Python refuses int() of more than 4300 digits
_EXACT_INT_DIGITS = 18
#: the SQL word (TDgpt's FORECAST option) for conf_interval, which a SQL user may get wrong
CONF = "conf (conf_interval)"


def bad(message: str) -> BadInput:
    return BadInput(message)


def decode_body(raw: bytes) -> Any:
    """The JSON body, or a BadInput saying why it cannot be read (never another error)."""
    if not raw:
        raise bad("the body is empty: send a JSON object with 'input' and 'next_len'")
    try:
        return json.loads(raw, parse_float=_float_literal, parse_int=_int_literal)
    except RecursionError:
        raise bad(
            "the body nests JSON arrays or objects too deeply to read: 'input' is a flat "
            "list of numbers"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"the body is not valid JSON: {exc}") from exc


def _float_literal(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise bad(
            f"the body holds the number {_clip(text)}, beyond the range of a 64-bit float "
            "(largest about 1.8e308)"
        )
    return value


def _int_literal(text: str):
    digits = len(text.lstrip("-"))
    return int(text) if digits <= _EXACT_INT_DIGITS else _float_literal(text)


def _clip(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else f"{text[:12]}...({len(text)} characters)"


def parse_request(body: Any, caps: Capabilities, model: str) -> ForecastRequest:
    """Validate TDgpt's JSON body against the model's capabilities."""
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON object, got {_json_type(body)}")
    if "input" not in body:
        raise bad("missing field 'input': the history to forecast from, a list of numbers")
    if "next_len" not in body:
        raise bad(f"missing field 'next_len': {ROWS}, how many future points to forecast")
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
    return prepare(SeriesInput(values=values, past_covariates=past, future_covariates=future),
                   horizon, caps, model, conf, notes)


def success_reply(
    request: ForecastRequest, forecast: Forecast, row: int, caps: Capabilities
) -> dict:
    """The 200 body for one series of a (possibly batched) forecast.

    A model answer that is not finite is a ModelFault; a forecast that is finite for the
    model but leaves float64's range once scaled back is refused as BadInput."""
    h = request.horizon
    reply: dict = {"status": "success"}
    if forecast.quantiles is not None and caps.intervals:
        native = in_request_units(request, forecast.quantiles[row, :h])
        if request.conf is not None:
            median, lower, upper = median_and_band(caps.quantile_levels, native, request.conf)
            reply["output"] = _floats(request, median)
            reply["lower"] = _floats(request, lower)
            reply["upper"] = _floats(request, upper)
        else:
            reply["output"] = _floats(request, quantile_at(caps.quantile_levels, native, 0.5))
    else:
        reply["output"] = _floats(request, in_request_units(request, forecast.point[row, :h]))
    if request.notes:
        reply["notes"] = list(request.notes)
    return reply


def _floats(request: ForecastRequest, values: np.ndarray) -> list:
    """JSON numbers; an interval's tail may still overflow where its quantiles did not."""
    return [float(v) for v in finite(request, np.asarray(values, dtype=np.float64))]


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def _shown(value: Any) -> str:
    """A short view of a wrong value (containers by kind only: they may be huge or deep)."""
    if isinstance(value, str):
        return f"{_json_type(value)} ({value[:40]!r})"
    return _json_type(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _horizon(value: Any, caps: Capabilities, model: str) -> int:
    if not _is_number(value):
        raise bad(f"{ROWS} must be a positive integer, got {_shown(value)}")
    if isinstance(value, float) and not value.is_integer():
        raise bad(f"{ROWS} must be a positive integer, got {value}")
    horizon = int(value)
    if horizon <= 0:
        raise bad(f"{ROWS} must be a positive integer, got {horizon}")
    if horizon > caps.horizon_limit:
        raise bad(
            f"{ROWS} is {horizon}; model {model} forecasts at most {caps.horizon_limit} points"
        )
    return horizon


def _series(raw: Any, notes: List[str]) -> np.ndarray:
    """The history as float64; short gaps of null/NaN are filled, anything else refused."""
    if not isinstance(raw, list):
        raise bad(f"'input' must be a list of numbers, got {_shown(raw)}")
    if not raw:
        raise bad("'input' is empty: send the history to forecast from")
    values = np.empty(len(raw), dtype=np.float64)
    for i, item in enumerate(raw):
        if item is None:
            values[i] = np.nan
        elif not _is_number(item):
            raise bad(f"'input'[{i}] must be a number, got {_shown(item)}")
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
    if not isinstance(ts, list) or not all(_is_number(t) for t in ts):
        raise bad("'ts' must be a list of timestamps (integers)")
    if len(ts) != length:
        raise bad(f"'ts' has {len(ts)} timestamps but 'input' has {length} values")


def _conf(value: Any) -> Optional[float]:
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value):
        raise bad(f"{CONF} must be a number between 0 and 1, got {_shown(value)}")
    if not 0.0 < value < 1.0:
        raise bad(
            f"{CONF} must be between 0 and 1 (exclusive), e.g. 0.95 (conf=95 in SQL), "
            f"got {value}"
        )
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
                f"as long as 'input' plus {ROWS}"
            )
            raise bad(f"'{name}'[{k}] has {len(row)} values; it must be {expected} ({length})")
        if not all(_is_number(v) for v in row):
            raise bad(f"'{name}'[{k}] must contain only numbers")
        values = np.asarray(row, dtype=np.float64)
        if not np.isfinite(values).all():
            raise bad(f"'{name}'[{k}] must contain only finite numbers")
        rows.append(values)
    return np.stack(rows)
