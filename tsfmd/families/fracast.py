"""fracast: a compact forecasting model whose pretrained weights ship inside its wheel.

It is tsfmd's embedded default (`source: bundled`), so a machine with no network still
serves real forecasts. The package gives 9 quantiles (0.1 .. 0.9), a native 48-step block
that it extends by feeding its median back, and treats NaN as "not observed"; tsfmd uses
that to batch series of different lengths: shorter ones are left-padded with NaN, which
gives exactly the numbers of the series alone. It normalises each series by its minimum
and span (with a floor of 1e-5 on the span), so it is declared affine-equivariant: tsfmd
scales each series in float64 first, and the floor never bites.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tsfmd.families.base import (
    Capabilities, Family, Forecast, LoadSpec, ModelLoadError, SeriesInput, resolve_limit,
)
from tsfmd.families.checkpoint import LIBRARY_LOCK
from tsfmd.families.hub import resolve_model_dir

#: fracast refuses series with fewer finite points than this
MIN_CONTEXT = 8
#: native blocks are chained for longer horizons; past this the median feedback drifts
MAX_HORIZON = 1024
_WEIGHT_FILES = {"fp32": "model.safetensors", "w8": "model.int8.safetensors"}
_NOT_INSTALLED = "the fracast package is not installed (pip install fracast)"


class FracastFamily(Family):
    name = "fracast"
    option_values = {"weights": tuple(_WEIGHT_FILES)}
    license = "Apache-2.0"  # the fracast wheel's License-Expression, weights included

    @classmethod
    def weights_location(cls, spec: LoadSpec) -> Optional[Path]:
        """The one weights file `options.weights` picks (the wheel's own for "bundled")."""
        name = _WEIGHT_FILES.get(str(spec.options.get("weights", "fp32")), "model.safetensors")
        if spec.source == "bundled":
            found = importlib.util.find_spec("fracast")
            if found is None or not found.origin:
                return None
            return Path(found.origin).parent / "weights" / name
        directory = super().weights_location(spec)
        return None if directory is None else directory / name

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        if spec.source != "bundled":
            _weights_dir(spec, offline=True)
        elif importlib.util.find_spec("fracast") is None:
            raise ModelLoadError(_NOT_INSTALLED)

    def __init__(self, model, caps: Capabilities):
        self._model = model
        self._caps = caps

    @classmethod
    def load(cls, spec: LoadSpec) -> "FracastFamily":
        try:
            with LIBRARY_LOCK:
                from fracast import FracastModel
        except ImportError as exc:
            raise ModelLoadError(_NOT_INSTALLED) from exc
        weights = str(spec.options.get("weights", "fp32"))
        if weights not in _WEIGHT_FILES:
            raise ModelLoadError(f"options.weights must be fp32 or w8, got {weights!r}")
        if spec.dtype not in ("auto", "float32"):
            raise ModelLoadError(f"fracast runs in float32 only, not {spec.dtype}")
        if spec.source == "bundled":
            source = None  # the weights inside the installed wheel
        else:
            source = str(_weights_dir(spec))
        try:
            with LIBRARY_LOCK:
                model = FracastModel.from_pretrained(source, weights=weights, device=spec.device)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            where = "the bundled weights" if source is None else Path(source)
            raise ModelLoadError(f"cannot load fracast from {where}: {exc}") from exc
        caps = Capabilities(
            context_limit=resolve_limit(spec.context_limit, model.context_length),
            horizon_limit=resolve_limit(spec.horizon_limit, MAX_HORIZON),
            min_context=MIN_CONTEXT,
            quantile_levels=tuple(model.quantiles),
            affine_equivariant=True,
        )
        return cls(model, caps)

    def capabilities(self) -> Capabilities:
        return self._caps

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        longest = max(len(s.values) for s in batch)
        rows = np.full((len(batch), longest), np.nan, dtype=np.float32)
        for i, series in enumerate(batch):
            rows[i, longest - len(series.values):] = series.values
        quantiles = self._model.forecast_batch(rows, horizon=int(horizon)).astype(np.float64)
        median = quantiles[..., self._model.quantiles.index(0.5)]
        return Forecast(point=median, quantiles=quantiles)


def _weights_dir(spec: LoadSpec, offline: bool = False) -> Path:
    """The directory holding config.json and the weights file `options.weights` names."""
    weights = _WEIGHT_FILES.get(str(spec.options.get("weights", "fp32")), "model.safetensors")
    return resolve_model_dir(spec.source, spec.cache_dir, required=("config.json", weights),
                             offline=offline)
