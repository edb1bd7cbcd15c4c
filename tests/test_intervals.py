"""The shared quantile -> interval mapping used by every family (tsfmd/core/intervals.py)."""
from statistics import NormalDist

import numpy as np
import pytest

from tsfmd.core.intervals import band_levels, median_and_band, quantile_at

LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
Z = NormalDist().inv_cdf


def normal_quantiles(mu, sigma):
    return np.array([[mu + sigma * Z(p) for p in LEVELS]])


def test_band_levels():
    assert band_levels(0.9) == pytest.approx((0.05, 0.95))
    with pytest.raises(ValueError):
        band_levels(1.0)


def test_native_level_is_returned_exactly():
    q = normal_quantiles(3.0, 2.0)
    assert quantile_at(LEVELS, q, 0.8) == pytest.approx(q[0, 7])
    assert quantile_at(LEVELS, q, 0.5) == pytest.approx(3.0)


def test_inside_the_grid_interpolates_linearly_in_level():
    q = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])
    assert quantile_at(LEVELS, q, 0.25) == pytest.approx(1.5)


def test_tails_of_a_normal_forecast_are_recovered_exactly():
    # Quantiles of N(3, 2^2) on 0.1..0.9: the fitted normal tail must give N's own 2.5/97.5%.
    q = normal_quantiles(3.0, 2.0)
    median, lower, upper = median_and_band(LEVELS, q, 0.95)
    assert median == pytest.approx(3.0)
    assert lower == pytest.approx(3.0 - 2.0 * 1.959964, rel=1e-5)
    assert upper == pytest.approx(3.0 + 2.0 * 1.959964, rel=1e-5)


def test_wider_conf_always_gives_a_wider_band_not_a_clamped_one():
    rng = np.random.default_rng(0)
    q = np.sort(rng.normal(size=(5, 7, 9)), axis=-1)
    widths = []
    for conf in (0.5, 0.8, 0.9, 0.95, 0.99):
        _, low, up = median_and_band(LEVELS, q, conf)
        assert (low <= up).all()
        widths.append(up - low)
    for narrow, wide in zip(widths, widths[1:]):
        assert (wide >= narrow - 1e-12).all()
    assert (widths[-1] > widths[2]).all()  # 0.99 beyond the 0.1..0.9 grid is wider than 0.8


def test_skew_is_kept_on_each_side():
    q = np.array([[-1.0, -0.8, -0.6, -0.3, 0.0, 1.0, 2.0, 3.0, 5.0]])  # long right tail
    median, lower, upper = median_and_band(LEVELS, q, 0.95)
    assert upper - median > median - lower


def test_crossing_quantiles_are_sorted_first():
    q = np.array([[5.0, 1.0, 2.0, 3.0, 4.0, 4.5, 6.0, 7.0, 0.0]])
    median, lower, upper = median_and_band(LEVELS, q, 0.9)
    assert lower <= median <= upper
