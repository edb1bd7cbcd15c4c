"""The model-family interface: what every family of forecasting model offers tsfmd.

A family object owns one loaded model. Everything that crosses this interface is plain
data (numpy arrays, numbers, strings, dataclasses of those), never a Flask object or a
global, so a family can later run in a worker process with its own environment, or behind
a distributed serving engine, without changing.

To add a family: subclass `Family`, implement `load`, `capabilities` and `forecast`, and
name it in `tsfmd/families/__init__.py`. `tsfmd/families/fracast.py` is the shortest example.
A family that fills gaps instead of forecasting (MOMENT) declares `tasks=("impute",)` and
implements `impute`; its `forecast` raises Unsupported.
"""
from __future__ import annotations

import abc
import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Hashable, List, Mapping, Optional, Sequence

import numpy as np

from tsfmd.core.errors import Unsupported


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the text says why in words an operator can act on."""


class UnsupportedInput(Unsupported, ValueError):
    """The request asks for something this model cannot do (answered as HTTP 400)."""


@dataclass(frozen=True)
class LoadSpec:
    """What a family needs to load one model: plain values from the registry entry."""

    key: str
    source: str  # local directory, hub id, or a family-specific word such as "bundled"
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" (already resolved from "auto")
    dtype: str = "auto"  # "auto" lets the family pick its best default for the device
    context_limit: Optional[int] = None  # registry cap on context kept; None = model's own
    horizon_limit: Optional[int] = None  # registry cap on next_len; None = model's own
    cache_dir: Optional[str] = None  # where hub downloads go (the server's state dir)
    options: Mapping[str, Any] = field(default_factory=dict)  # family-specific settings


@dataclass(frozen=True)
class Capabilities:
    """What a loaded model can do; reported by /v1/models and enforced by request checks."""

    context_limit: int  # longest history used; longer input keeps the most recent points
    horizon_limit: int  # longest next_len accepted
    min_context: int = 1  # shortest history the model accepts
    quantile_levels: tuple = ()  # native quantile levels, empty when the model has none
    past_covariates: bool = False  # accepts past-only covariates (past_dynamic_real)
    future_covariates: bool = False  # accepts known-future covariates (dynamic_real)
    point_forecast: str = "median"  # "median" or "mean": what `output` is for this model
    #: the model normalises each series (and each covariate) by its own location and
    #: spread, so f(a*x + b) = a*f(x) + b: tsfmd then scales and shifts every series in
    #: float64 before the model's float32 sees it, and maps the forecast back
    #: (tsfmd/core/scaling.py). False: the family gets the values as sent, within float32.
    affine_equivariant: bool = False
    #: context plus horizon must fit this many positions (Time-MoE): each request keeps
    #: at most position_limit - next_len points, decided for its own horizon; None: no such
    position_limit: Optional[int] = None
    #: 0: requests of any horizons may share a forward pass (each answer is cut to its own
    #: horizon). n > 0: only requests with equal ceil(next_len / n) may, for a model whose
    #: first steps change with the steps asked for (Chronos-2 decodes output patches of n
    #: steps that attend to each other; Time-MoE picks its head by the steps left: n = 1).
    horizon_block: int = 0
    #: what the model does: "forecast" (every route of TDgpt's forecast protocol) and/or
    #: "impute" (TDgpt's imputation body on the model's route, Family.impute)
    tasks: tuple = ("forecast",)
    #: the precision the weights actually run in ("float32", "bfloat16", "int8", ...) when
    #: the family says; /v1/models shows it in place of the registry's "auto"
    dtype: Optional[str] = None
    #: batching by work: the most points (each request's context plus horizon, summed over
    #: the requests of one forward pass) a pass should hold on the device the model loaded
    #: on. Past it a bigger pass costs more per forecast than it saves (measured by the
    #: family; the registry's batching.max_batch_points overrides it). None: no such
    #: measure, batches are bounded by batching.max_batch alone
    batch_points: Optional[int] = None

    @property
    def intervals(self) -> bool:
        return len(self.quantile_levels) > 0

    def batch_group(self, horizon: int) -> Optional[Hashable]:
        """Requests whose horizons give different groups never share a forward pass."""
        if self.horizon_block <= 0:
            return None
        return math.ceil(int(horizon) / self.horizon_block)


@dataclass
class SeriesInput:
    """One series to forecast: its history and, where allowed, its covariates.

    `past_covariates` has shape [k, len(values)]; `future_covariates` has shape
    [m, len(values) + horizon] (known for the history and the forecast window).
    """

    values: np.ndarray
    past_covariates: Optional[np.ndarray] = None
    future_covariates: Optional[np.ndarray] = None
    #: where 0 of the request's own units lies in `values` when tsfmd scaled the series
    #: (Capabilities.affine_equivariant); None: `values` are in the request's own units
    zero: Optional[float] = None


@dataclass
class Forecast:
    """A family's answer for a batch of B series and horizon H.

    `point` is [B, H]: the model's point forecast (median or mean, see Capabilities).
    `quantiles` is [B, H, Q] at `Capabilities.quantile_levels`, or None.
    """

    point: np.ndarray
    quantiles: Optional[np.ndarray] = None


class Family(abc.ABC):
    """One loaded model of one family. Create it with `load`, then call `forecast`."""

    #: the registry's `family:` name
    name: str = ""
    #: the `options:` this family takes: name -> the values allowed (a tuple) or their type.
    #: None leaves options to the family's own load; {} takes none.
    option_values: Optional[Mapping[str, Any]] = None
    #: the licence of the family's published weights (SPDX-style, as model cards write it),
    #: shown by /v1/models when the checkpoint's own card or config.json names none;
    #: None: not known (shown as "unknown")
    license: Optional[str] = None
    #: the files a hub download fetches (`tsfmd pull`, the daemon): glob patterns; None: all
    hub_patterns: Optional[Sequence[str]] = None
    #: what the family's models do, known before any load: `tsfmd adapters install` writes
    #: forecast adapters only for "forecast"; a loaded model says it in Capabilities.tasks
    tasks: tuple = ("forecast",)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> List[str]:
        """What is wrong with a registry entry's `options:`, one line each. tsfmd refuses to
        load an entry with any, and `tsfmd check` names them."""
        return option_problems(cls.option_values, options)

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        """Raise ModelLoadError when `spec.source` has no loadable files on this machine.
        Looks offline and loads no weights (`tsfmd check`). The default asks for a
        config.json; a family that knows its files checks those."""
        from tsfmd.families.hub import resolve_model_dir  # sources imports this module

        resolve_model_dir(spec.source, spec.cache_dir, offline=True)

    @classmethod
    def weights_location(cls, spec: LoadSpec) -> Optional[Path]:
        """The checkpoint directory (or the one weights file) `spec` loads, found offline;
        None when it is not on this machine. /v1/models reads licence and sizes there."""
        from tsfmd.families.hub import cached_snapshot, is_hub_id

        local = Path(spec.source).expanduser()
        if local.is_dir():
            return local
        return cached_snapshot(spec.source, spec.cache_dir) if is_hub_id(spec.source) else None

    @classmethod
    @abc.abstractmethod
    def load(cls, spec: LoadSpec) -> "Family":
        """Load the model described by `spec`; raise ModelLoadError with a clear reason."""

    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """Limits and features of the loaded model."""

    @abc.abstractmethod
    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        """Forecast `horizon` steps for every series in `batch`.

        Series may have different lengths; each is at least `min_context` and at most
        `context_limit` long and finite (tsfmd checks before calling). The answer for a
        series must not depend on the other series in the batch, nor on the batch's
        horizon beyond what `Capabilities.horizon_block` declares.
        """

    def impute(self, batch: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Fill the gaps of every series in `batch` (models whose tasks include "impute").

        Each array is float64 with NaN where a point is missing and at least one observed
        point; the answer has one array per series, as long as it, with every point finite
        and every observed point exactly as given. Series may be longer than
        `context_limit`: the family imputes them window by window.
        """
        raise Unsupported(f"family {self.name or type(self).__name__} does not impute")

    def warm_up(self) -> None:
        """Run one small forecast (or imputation) so the first real request is not slow."""
        caps = self.capabilities()
        length = max(caps.min_context, min(64, caps.context_limit))
        values = np.sin(np.arange(length, dtype=np.float32) / 4.0)
        if "forecast" not in caps.tasks:
            gappy = values.astype(np.float64)
            gappy[length // 2] = np.nan
            self.impute([gappy])
            return
        self.forecast([SeriesInput(values=values)], min(8, caps.horizon_limit))

    def close(self) -> None:
        """Release what the model holds (GPU memory, worker processes)."""


def option_problems(allowed: Optional[Mapping[str, Any]], options: Mapping[str, Any]) -> List[str]:
    """Options not in `allowed` (name -> tuple of values, or a type); None allows any."""
    if allowed is None:
        return []
    problems = []
    for name, value in options.items():
        rule = allowed.get(name)
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            problems.append(f"options.{name}: unknown option (this family takes: {known})")
        elif isinstance(rule, tuple) and value not in rule:
            choices = ", ".join(str(v) for v in rule)
            problems.append(f"options.{name}: must be one of {choices}, got {value!r}")
        elif isinstance(rule, type) and not isinstance(value, rule):
            problems.append(f"options.{name}: must be a {rule.__name__}, got {value!r}")
    return problems


def resolve_limit(configured: Optional[int], native: int) -> int:
    """The registry may tighten a model's own limit, never widen it."""
    return native if configured is None else min(int(configured), int(native))
