"""A forecast request as the core runs it, whatever API it came through.

`prepare` turns a checked series (float64, finite) and its horizon into a `ForecastRequest`:
the context a model reads for that horizon (its context limit, and for models with a
position limit, context + horizon within it), and for models that normalise each series
(Capabilities.affine_equivariant) the series scaled and shifted in float64 so magnitudes
float32 cannot hold forecast like any other (tsfmd/core/scaling.py). `in_request_units`
maps a model's answer back and refuses what is not finite. Each API (TDgpt's JSON, later
others) checks its own wire format and shapes its own reply around these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from tsfmd.core.errors import BadInput, ModelFault
from tsfmd.core.scaling import FLOAT32_MAX, SeriesScale, flattening_outliers
from tsfmd.families.base import Capabilities, SeriesInput

#: the SQL word (TDgpt's FORECAST option) for the horizon: messages a SQL user reads name it
ROWS = "rows (next_len)"


@dataclass
class ForecastRequest:
    """A checked request: a finite series ready for a family, plus what to answer."""

    series: SeriesInput
    horizon: int
    conf: Optional[float] = None
    notes: List[str] = field(default_factory=list)
    model: str = "the model"
    #: how `series` was scaled for the model (None: it is in the request's own units)
    scale: Optional[SeriesScale] = None


def prepare(series: SeriesInput, horizon: int, caps: Capabilities, model: str,
            conf: Optional[float] = None, notes: Optional[List[str]] = None) -> ForecastRequest:
    """The request a model runs: the context kept for `horizon`, scaled where the model
    normalises each series (covariates are cut with it)."""
    notes = [] if notes is None else notes
    values, past, future = series.values, series.past_covariates, series.future_covariates
    keep, why = _context_kept(caps, horizon, model)
    if values.size > keep:
        dropped = values.size - keep
        notes.append(f"input has {values.size} points; kept the most recent {keep} ({why})")
        values = values[dropped:]
        past = past[:, dropped:] if past is not None else None
        future = future[:, dropped:] if future is not None else None
    series = SeriesInput(values=values, past_covariates=past, future_covariates=future)
    scale = None
    if caps.affine_equivariant:
        series, scale = _scaled(series, notes)
    else:
        _check_float32(series, model)
    return ForecastRequest(series=series, horizon=horizon, conf=conf, notes=notes,
                           model=model, scale=scale)


def _context_kept(caps: Capabilities, horizon: int, model: str):
    """How many recent points the model reads for this horizon, and why that many."""
    keep, why = caps.context_limit, f"the context limit of {model}"
    if caps.position_limit is not None and caps.position_limit - horizon < keep:
        keep = max(1, caps.position_limit - horizon)
        why = (f"model {model} reads at most {caps.position_limit} positions: the context "
               f"plus {ROWS} {horizon}")
    return keep, why


def _scaled(series: SeriesInput, notes: List[str]):
    """The series (and each covariate) scaled in float64 for the model, and the map back."""
    scale = SeriesScale.of(series.values)
    values = scale.apply(series.values)
    outliers = flattening_outliers(values)
    if outliers.size:
        more = "" if outliers.size <= 10 else f" and {outliers.size - 10} more"
        notes.append(
            f"the values at positions {outliers[:10].tolist()}{more} lie so far from the rest "
            "that the model, computing in float32, sees the other points as flat"
        )
    return SeriesInput(
        values=values,
        past_covariates=_scaled_rows(series.past_covariates),
        future_covariates=_scaled_rows(series.future_covariates),
        zero=scale.zero(),
    ), scale


def _scaled_rows(rows: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Each covariate on its own scale: the models normalise every covariate separately."""
    if rows is None:
        return None
    return np.stack([SeriesScale.of(row).apply(row) for row in rows])


def _check_float32(series: SeriesInput, model: str) -> None:
    """A model that reads its input as given gets only what float32 can hold."""
    parts = [("input", series.values), ("past_dynamic_real", series.past_covariates),
             ("dynamic_real", series.future_covariates)]
    for name, values in parts:
        if values is None:
            continue
        too_large = np.flatnonzero(np.abs(values).ravel() > FLOAT32_MAX)
        if too_large.size:
            raise BadInput(
                f"'{name}' holds values beyond what model {model} can read (32-bit floats, "
                f"largest about 3.4e38), e.g. {values.ravel()[too_large[0]]:g}: rescale it"
            )


def in_request_units(request: ForecastRequest, values: np.ndarray) -> np.ndarray:
    """A model's answer for `request` in the request's own units (float64)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ModelFault(
            f"model {request.model} produced non-finite values (NaN or infinity) for this "
            "series; no forecast can be given (the model, not the request, is at fault)"
        )
    if request.scale is None:
        return values
    return finite(request, request.scale.undo(values))


def finite(request: ForecastRequest, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise BadInput(
            f"the forecast of model {request.model} for this series goes beyond the range of "
            "a 64-bit float (about 1.8e308): send the series in smaller units"
        )
    return values
