"""TDgpt's imputation wire format, on the route of a model whose tasks include "impute".

What TDgpt's anode sends (`algo/imputat/moment.py`) and its MOMENT service answers
(`tsfmservice/moment-server.py`, port 6066, route /imputation in TDgpt 3.4):

  POST {"input": [v0, v1, ...], "ts": [t0, t1, ...], "precision": "ms", "freq": "1L"}

`ts` are the timestamps of `input` in `precision` units (ms, us or ns; default ms). A point
is missing when its timestamp is absent from the regular grid `freq` spans, or when its
value is null. `freq` is pandas' old spelling, an optional count and one of D (day),
H (hour), T (minute), S (second), L (millisecond), U (microsecond): "H", "10S", "1L"; the
grid starts at the first timestamp floored to one unit of `freq` and ends at the last one.
Without `freq`, the smallest gap between timestamps is the step (and `notes` says so).

  200 {"status": "success", "ts": [grid], "target": [values], "mask": [0 or 1 each]}

`ts` is the whole grid in `precision` units, `target` its values (observed points exactly
as sent, missing ones filled by the model) and `mask` 1 where a value was imputed. The
anode copies these into its reply to taosd. Differences from moment-server.py, on purpose:
`ts` are integers (it sends floats for ms and us); a timestamp off the grid or a duplicate
one is a 400 naming it (it drops the first silently and fails on the second); observed
values come back bit for bit (it sends them through a scaler and back).
"""
from __future__ import annotations

import json
import re
from typing import Any, List, Optional, Tuple

import numpy as np

from tsfmd.api.statuses import HttpError
from tsfmd.core.errors import BadInput
from tsfmd.core.imputation import MAX_POINTS, impute_series
from tsfmd.daemon.waitress_hooks import ARRIVED

#: nanoseconds per unit of `precision`
PRECISION_NS = {"ms": 10**6, "us": 10**3, "ns": 1}
#: nanoseconds per unit of `freq` (pandas' old aliases, as moment-server.py parses them)
FREQ_NS = {"D": 86_400 * 10**9, "H": 3_600 * 10**9, "T": 60 * 10**9, "S": 10**9,
           "L": 10**6, "U": 10**3}
_FREQ = re.compile(r"^(\d*)([DHTSLU])$")
_INT64_MAX = 2**63 - 1


def serves_imputation(handle) -> bool:
    """Whether the model behind `handle` answers TDgpt's imputation body on its route."""
    return handle.caps is not None and "impute" in handle.caps.tasks


def imputation_reply(handle, admission, request) -> dict:
    """The 200 body for one imputation request (a Flask request), or a domain error."""
    if request.method != "POST":
        raise HttpError(
            405, f"{request.path} serves model {handle.key}: POST a JSON imputation request "
            "({'input', 'ts', 'precision', 'freq'})", {"Allow": "POST"})
    grids: List[Grid] = []

    def build(caps):
        grids.append(parse_body(decode(request.get_data(cache=False))))
        return [grids[0].values]

    filled = impute_series(handle, admission, build,
                           request.environ.get("waitress.client_disconnected"),
                           request.environ.get(ARRIVED))
    return grids[0].reply(filled[0])


class Grid:
    """A series on its regular time grid: NaN where TDgpt's data has no value."""

    def __init__(self, start_ns: int, step_ns: int, values: np.ndarray, precision: str,
                 notes: List[str]):
        self.start_ns, self.step_ns, self.values = start_ns, step_ns, values
        self.precision, self.notes = precision, notes

    def timestamps(self) -> List[int]:
        factor = PRECISION_NS[self.precision]
        return [(self.start_ns + k * self.step_ns) // factor for k in range(self.values.size)]

    def reply(self, filled: np.ndarray) -> dict:
        reply = {
            "status": "success",
            "ts": self.timestamps(),
            "target": [float(v) for v in filled],
            "mask": np.isnan(self.values).astype(int).tolist(),
        }
        if self.notes:
            reply["notes"] = list(self.notes)
        return reply


def decode(raw: bytes) -> Any:
    """The JSON body; integers stay exact (a timestamp in ns has 19 digits)."""
    if not raw:
        raise BadInput("the body is empty: send a JSON object with 'input' and 'ts'")
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadInput("the body nests JSON too deeply: 'input' and 'ts' are flat lists") \
            from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"the body is not valid JSON: {exc}") from exc


def parse_body(body: Any) -> Grid:
    """TDgpt's imputation body as a series on its time grid, or BadInput saying why not."""
    if not isinstance(body, dict):
        raise BadInput("the body must be a JSON object with 'input', 'ts', 'precision', "
                       "'freq'")
    for name in ("input", "ts"):
        if not isinstance(body.get(name), list) or not body[name]:
            raise BadInput(f"'{name}' must be a non-empty list: 'input' the values, 'ts' "
                           "their timestamps")
    values = _values(body["input"])
    precision = body.get("precision", "ms")
    if precision not in PRECISION_NS:
        raise BadInput(f"'precision' must be one of ms, us, ns (the timestamps' unit), got "
                       f"{precision!r}")
    stamps = _timestamps(body["ts"], len(values), PRECISION_NS[precision])
    order = np.argsort(stamps, kind="stable")
    stamps, values = stamps[order], values[order]
    twice = np.flatnonzero(np.diff(stamps) == 0)
    if twice.size:
        first = int(order[twice[0] + 1])
        raise BadInput(f"'ts'[{first}] repeats the timestamp {body['ts'][first]}: each point "
                       "needs its own timestamp")
    notes: List[str] = []
    step, unit, label = _step(body.get("freq"), stamps, PRECISION_NS[precision], notes)
    start = int(stamps[0]) // unit * unit  # the first timestamp floored, as moment-server
    offset = stamps - start
    off_grid = np.flatnonzero(offset % step != 0)
    if off_grid.size:
        first = int(order[off_grid[0]])
        raise BadInput(
            f"'ts'[{first}] = {body['ts'][first]} is not on the grid of {label} that starts "
            f"at {start // PRECISION_NS[precision]}: imputation fills a regular grid, send "
            "the freq the data was sampled at")
    length = int(offset[-1] // step) + 1
    if length > MAX_POINTS:
        raise BadInput(
            f"the grid from the first to the last timestamp at this freq has {length} points; "
            f"tsfmd imputes at most {MAX_POINTS}: send a shorter time range or a coarser freq")
    grid = np.full(length, np.nan)
    grid[(offset // step).astype(np.int64)] = values
    return Grid(start, step, grid, precision, notes)


def _values(raw: list) -> np.ndarray:
    values = np.empty(len(raw), dtype=np.float64)
    for i, item in enumerate(raw):
        if item is None:
            values[i] = np.nan  # a null value is a missing point too
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            raise BadInput(f"'input'[{i}] must be a number or null, got {type(item).__name__}")
        else:
            try:
                values[i] = float(item)
            except OverflowError:  # an integer literal of hundreds of digits
                values[i] = np.inf
    bad = np.flatnonzero(np.isinf(values))
    if bad.size:
        raise BadInput(f"'input' has values beyond a 64-bit float at positions "
                       f"{bad[:10].tolist()}")
    return values


def _timestamps(raw: list, count: int, factor: int) -> np.ndarray:
    """`ts` in nanoseconds, exact (int64)."""
    if len(raw) != count:
        raise BadInput(f"'ts' has {len(raw)} timestamps but 'input' has {count} values")
    stamps = []
    for i, item in enumerate(raw):
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise BadInput(f"'ts'[{i}] must be an integer timestamp, got {item!r}"[:200])
        ns = item * factor
        if not 0 <= ns <= _INT64_MAX:
            raise BadInput(f"'ts'[{i}] = {item} is outside the range of timestamps "
                           "(1970 to 2262)")
        stamps.append(ns)
    return np.asarray(stamps, dtype=np.int64)


def _step(freq: Optional[Any], stamps: np.ndarray, factor: int,
          notes: List[str]) -> Tuple[int, int, str]:
    """The grid's step and the unit its start is floored to (both in nanoseconds), and
    words for the grid."""
    if freq is None:
        gaps = np.diff(stamps)
        step = int(gaps.min()) if gaps.size else factor
        label = f"the smallest gap between timestamps, {step // factor} {_unit_word(factor)}"
        notes.append(f"no 'freq' sent: the grid steps by {label}")
        return step, factor, label
    match = _FREQ.match(freq) if isinstance(freq, str) else None
    if match is None or int(match.group(1) or 1) == 0:
        raise BadInput(f"'freq' must be a count and one of D, H, T, S, L, U (day, hour, "
                       f"minute, second, ms, us), e.g. 'H', '10S', '1L'; got {freq!r}")
    unit = FREQ_NS[match.group(2)]
    step = int(match.group(1) or 1) * unit
    if step > _INT64_MAX:
        raise BadInput(f"'freq' {freq} is longer than the whole range of timestamps")
    if step % factor:
        raise BadInput(f"'freq' {freq} is finer than the timestamps' precision "
                       f"({_unit_word(factor)}): its grid points have no timestamp")
    return step, unit, f"freq {freq}"


def _unit_word(factor: int) -> str:
    return {v: k for k, v in PRECISION_NS.items()}[factor]
