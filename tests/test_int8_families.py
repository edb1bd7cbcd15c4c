"""`dtype: int8` for Chronos-Bolt, Chronos-2, TimesFM 2.5 and 2.0 on CPU (families/quantize.py):
the median forecasts of tiny random checkpoints are finite, shaped and near float32's, the
feed-forward linears really are int8 and attention's float32, and a GPU is refused at load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tinymodels
from tinymodels import error_in_std, random_series
from tsfmd.families.base import LoadSpec, ModelLoadError
from tsfmd.families.chronos import Chronos2Family, ChronosBoltFamily
from tsfmd.families.quantize import ATTENTION, is_int8_linear
from tsfmd.families.timesfm import TimesFm25Family
from tsfmd.families.timesfm2 import TimesFm20Family

#: the largest error in each series' std these tiny random checkpoints stay within
#: (measured worst with per-row input scales: bolt < 0.0001, chronos-2 0.0002, timesfm-2.5
#: 0.013, timesfm-2.0 0.008; one scale per input gave timesfm-2.0 0.060); a real
#: checkpoint's is its own
BOUND = 0.05
FAMILIES = {
    "chronos-bolt": (ChronosBoltFamily, tinymodels.chronos_bolt),
    "chronos-2": (Chronos2Family, tinymodels.chronos2),
    "timesfm-2.5": (TimesFm25Family, tinymodels.timesfm25),
    "timesfm-2.0": (TimesFm20Family, tinymodels.timesfm20),  # shares 2.5's loader
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8-ckpt")
    return {name: build(root / name) for name, (_, build) in FAMILIES.items()}


def load(name, source, dtype, device="cpu"):
    family = FAMILIES[name][0]
    return family.load(LoadSpec(key="q", source=str(source), dtype=dtype, device=device))


def median_forecast(fam, rows, horizon):
    with torch.inference_mode():
        return fam.forecast(rows, horizon).point


@pytest.mark.parametrize("name", list(FAMILIES))
def test_int8_forecasts_are_finite_shaped_and_near_float32(checkpoints, name):
    rows = random_series(64, seed=5)
    fp32 = load(name, checkpoints[name], "float32")
    int8 = load(name, checkpoints[name], "int8")
    assert int8.capabilities().dtype == "int8" and fp32.capabilities().dtype == "float32"
    want = median_forecast(fp32, rows, 16)
    got = median_forecast(int8, rows, 16)
    assert got.shape == (64, 16) and np.isfinite(got).all()
    per_series = error_in_std(got, want, rows)
    assert 0 < per_series.max() <= BOUND


@pytest.mark.parametrize("name", list(FAMILIES))
def test_int8_quantizes_the_linears_outside_attention(checkpoints, name):
    fam = load(name, checkpoints[name], "int8")
    model = getattr(fam, "_pipeline", None)
    model = model.model if model is not None else fam._model
    kinds = {}
    for qualified, layer in model.named_modules():
        is_attention = any(part in qualified.lower() for part in ATTENTION)
        if isinstance(layer, torch.nn.Linear):
            kinds.setdefault(is_attention, set()).add("float")
        elif is_int8_linear(layer):
            kinds.setdefault(is_attention, set()).add("int8")
    assert kinds[False] >= {"int8"} and "int8" not in kinds.get(True, set())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_int8_on_a_gpu_is_refused_at_load_with_the_reason(checkpoints, name):
    with pytest.raises(ModelLoadError, match="int8 runs on CPU only; device cuda"):
        load(name, checkpoints[name], "int8", device="cuda")
