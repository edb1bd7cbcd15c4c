"""Turn a model's native quantiles into the interval TDgpt asks for, for every family.

A request's `conf_interval` c asks for the band between the quantiles (1-c)/2 and (1+c)/2.

* Inside the model's native levels: linear interpolation in the level between the two
  nearest native quantiles.
* Outside them (Chronos-Bolt and fracast know only 0.1..0.9, so c = 0.95 needs 0.025 and
  0.975): a normal tail fitted to the two outermost native quantiles on that side. With
  z = the standard normal quantile function, the upper tail is
      q(p) = q(p_top) + s * (z(p) - z(p_top)),  s = (q(p_top) - q(p_next)) / (z(p_top) - z(p_next))
  and the lower tail mirrors it. It meets the native quantile at the edge, keeps the
  model's own spread and skew on each side, and widens monotonically as c grows, instead
  of clamping to the edge (which makes a 95% band look like an 80% one).

Native quantiles are sorted along the level axis first, so crossing quantiles from a
model can never give lower > upper. `output` is the median from the same curve.
"""
from __future__ import annotations

from statistics import NormalDist
from typing import Sequence, Tuple

import numpy as np

_Z = NormalDist().inv_cdf


def band_levels(conf: float) -> Tuple[float, float]:
    """The quantile levels that bound a central interval of probability `conf`."""
    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf_interval must be between 0 and 1 (exclusive), got {conf}")
    return (1.0 - conf) / 2.0, (1.0 + conf) / 2.0


def quantile_at(levels: Sequence[float], quantiles: np.ndarray, level: float) -> np.ndarray:
    """The forecast at quantile `level` from native `quantiles` [..., Q] at `levels`."""
    grid = np.asarray(levels, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or quantiles.shape[-1] != grid.size:
        raise ValueError("quantiles must have one column per native level")
    if not 0.0 < level < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {level}")
    order = np.argsort(grid)
    grid = grid[order]
    q = np.sort(np.asarray(quantiles, dtype=np.float64)[..., order], axis=-1)
    if grid.size == 1:
        return q[..., 0]
    if level < grid[0]:
        return _tail(q[..., 0], q[..., 1], grid[0], grid[1], level)
    if level > grid[-1]:
        return _tail(q[..., -1], q[..., -2], grid[-1], grid[-2], level)
    upper = int(np.searchsorted(grid, level, side="left"))
    if grid[upper] == level:
        return q[..., upper]
    lower = upper - 1
    weight = (level - grid[lower]) / (grid[upper] - grid[lower])
    return q[..., lower] * (1.0 - weight) + q[..., upper] * weight


def _tail(edge, inner, edge_level, inner_level, level):
    """Extend beyond the outermost native level with a normal fitted to two quantiles."""
    scale = (edge - inner) / (_Z(edge_level) - _Z(inner_level))
    return edge + scale * (_Z(level) - _Z(edge_level))


def median_and_band(
    levels: Sequence[float], quantiles: np.ndarray, conf: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, lower, upper) for a central band of probability `conf`."""
    low, high = band_levels(conf)
    return (
        quantile_at(levels, quantiles, 0.5),
        quantile_at(levels, quantiles, low),
        quantile_at(levels, quantiles, high),
    )
