"""`dtype: int8` for Time-MoE on CPU: finite, shaped forecasts near float32's on the tiny
checkpoint, refused on a GPU at load with the reason, and shown as used in /v1/models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from tinymodels import error_in_std, random_series
from tsfmd.families.base import LoadSpec, ModelLoadError
from tsfmd.families.timemoe.family import INT8_BOUND, TimeMoeFamily

TINY = FIXTURES / "timemoe" / "tiny"


def load(dtype: str, device: str = "cpu") -> TimeMoeFamily:
    return TimeMoeFamily.load(LoadSpec(key="t", source=str(TINY), dtype=dtype, device=device))


def test_int8_forecasts_are_finite_shaped_and_within_the_bound_of_float32():
    rows = random_series(64)
    with torch.inference_mode():
        want = load("float32").forecast(rows, 24).point
        fam = load("int8")
        got = fam.forecast(rows, 24).point
    assert fam.capabilities().dtype == "int8"
    assert got.shape == (64, 24) and np.isfinite(got).all()
    per_series = error_in_std(got, want, rows)
    assert per_series.max() <= INT8_BOUND
    assert per_series.max() > 0  # really quantized: not float32 under another name


def test_int8_weights_replace_the_float_feed_forwards():
    model = load("int8").model
    ffn = model.layers[0].ffn
    assert ffn.gate_up.numel() == 0 and len(ffn.int8_experts) == ffn.num_experts
    assert ffn.int8_experts[0][0].weight().dtype == torch.qint8
    assert ffn.shared.gate_up.weight().qscheme() == torch.per_channel_affine
    assert model.layers[0].attn.wqkv.weight.dtype == torch.float32  # attention as today


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_int8_off_the_cpu_is_refused_at_load_with_the_reason(device):
    with pytest.raises(ModelLoadError, match=f"int8 runs on CPU only; device {device}"):
        load("int8", device=device)


def test_v1_models_shows_the_dtype_actually_used(tsfmd_server):
    models = "".join(
        f"  tm-{dtype}:\n    family: time-moe\n    source: {TINY}\n    device: cpu\n"
        f"    dtype: {dtype}\n"
        for dtype in ("int8", "float32")
    )
    server = tsfmd_server(models)
    shown = {m["key"]: m["dtype"] for m in server.get("/v1/models").json()["models"]}
    assert shown == {"tm-int8": "int8", "tm-float32": "float32"}
    body = {"input": [float(v) for v in 10 + np.sin(np.arange(64) / 4)], "next_len": 8}
    reply = server.post("/tm-int8", body)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["output"]) == 8

