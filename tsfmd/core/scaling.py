"""Scale and shift each series in float64 before a model's float32 sees it, and undo it after.

Models compute in float32 (about 7 significant digits, largest value 3.4e38). Cast
straight to float32, a counter at 1.7e9 with a daily swing of 1 is a flat line, a sine
times 1e-12 sits under the models' floors on the spread, and 1e39 is infinity. Every
family served today normalises each series by its own location and spread first, so its
forecast does not change when the series is scaled and shifted beforehand:
f(a*x + b) = a*f(x) + b for a > 0. tsfmd uses that (Capabilities.affine_equivariant):

    y = (x / 2**e - c) / s        c: the median, s: the largest |x / 2**e - c|
    x = (c + s * y) * 2**e

in float64. 2**e (e from the largest |x|) brings every value into (-1, 1) exactly, so no
step overflows, even next to 1.8e308; y then lies in [-1, 1] around the series' median,
which keeps the bulk of a series (not one outlier) where float32 resolves it best. A
constant series has no spread: y is all zeros and its forecast is the constant (as the
Time-MoE reference service answers), for every quantile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

#: float32's relative precision: spreads smaller than this share of the scale are lost
FLOAT32_EPS = float(np.finfo(np.float32).eps)
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class SeriesScale:
    """The affine map between one series' own units (x) and what the model reads (y)."""

    center: float  # c, in units of 2**exponent
    spread: float  # s, in units of 2**exponent; 0 for a constant series
    exponent: int  # e

    @classmethod
    def of(cls, values: np.ndarray) -> "SeriesScale":
        """The map for a finite float64 series (at least one value)."""
        values = np.asarray(values, dtype=np.float64)
        largest = float(np.max(np.abs(values)))
        exponent = math.frexp(largest)[1] if largest > 0 else 0
        unit = np.ldexp(values, -exponent)  # exact: a power of two; now |unit| < 1
        center = float(np.median(unit))
        spread = float(np.max(np.abs(unit - center)))
        return cls(center=center, spread=spread, exponent=exponent)

    @property
    def constant(self) -> bool:
        return self.spread == 0.0

    def apply(self, values: np.ndarray) -> np.ndarray:
        """x -> y (float64, within [-1, 1] for the series it was made from)."""
        unit = np.ldexp(np.asarray(values, dtype=np.float64), -self.exponent)
        if self.constant:
            return np.zeros_like(unit)
        return (unit - self.center) / self.spread

    def undo(self, scaled: np.ndarray) -> np.ndarray:
        """y -> x; values beyond float64's range come back infinite (the caller checks)."""
        scaled = np.asarray(scaled, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            unit = self.center + self.spread * scaled if not self.constant else (
                np.full_like(scaled, self.center)
            )
            return np.ldexp(unit, self.exponent)

    def zero(self) -> Optional[float]:
        """Where 0 of the series' own units lies in y (None for a constant series)."""
        if self.constant:
            return None
        return float(self.apply(np.zeros(1))[0])


def flattening_outliers(scaled: np.ndarray) -> np.ndarray:
    """Positions of the few values that make float32 see the rest of `scaled` as flat.

    Empty unless the bulk's typical deviation from the median is nonzero but below
    float32's precision of the largest deviation (a sine next to one 1e39: the model
    sees a flat line and a spike); then the positions float32 still tells apart."""
    scaled = np.asarray(scaled, dtype=np.float64)
    deviation = np.abs(scaled - np.median(scaled))
    typical, largest = float(np.median(deviation)), float(np.max(deviation))
    if not 0.0 < typical < FLOAT32_EPS * largest:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(deviation > FLOAT32_EPS * largest)
