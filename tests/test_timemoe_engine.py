"""Time-MoE engine behaviour beyond the reference arrays: ragged batches, the KV cache,
head choice, constant and very short series, the position limit, dtypes and loading."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURES
from tsfmd.families.base import LoadSpec, ModelLoadError, SeriesInput
from tsfmd.families.timemoe import family as family_module
from tsfmd.families.timemoe.config import OFFICIAL, TimeMoeConfig
from tsfmd.families.timemoe.family import TimeMoeFamily, normalise, resolve_dtype
from tsfmd.families.timemoe.generate import (
    chunk_plan, generate, generate_without_cache, plan_groups,
)
from tsfmd.families.timemoe.weights import official_shapes, write_random_checkpoint

TINY = FIXTURES / "timemoe" / "tiny"


def load(source, dtype="float32", **kwargs) -> TimeMoeFamily:
    return TimeMoeFamily.load(LoadSpec(key="t", source=str(source), dtype=dtype, **kwargs))


@pytest.fixture(scope="module")
def tiny():
    return load(TINY)


def wave(length: int, seed: int = 0, level: float = 50.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return level + 0.05 * t + 3 * np.sin(t / 6.0) + rng.standard_normal(length)


def assert_close(got, want, rtol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), 1e-12)
    assert float(np.abs(got - want).max()) <= rtol * scale


def forecast(fam, rows, horizon):
    with torch.inference_mode():
        return fam.forecast([SeriesInput(values=np.asarray(r, dtype=float)) for r in rows],
                            horizon).point


# -- batches ----------------------------------------------------------------------------

LENGTHS = [300, 37, 120, 9, 256]


def test_a_batch_of_different_lengths_gives_each_series_its_own_forecast(tiny):
    rows = [wave(n, seed=n) for n in LENGTHS]
    together = forecast(tiny, rows, 70)
    for row, alone_input in zip(together, rows):
        assert_close(row, forecast(tiny, [alone_input], 70)[0])


def test_one_padded_grid_equals_each_series_alone(tiny):
    """generate() itself, all series in one left-padded grid (no grouping)."""
    normed = [normalise(wave(n, seed=n))[0] for n in LENGTHS]
    with torch.inference_mode():
        grid = generate(tiny.model, normed, 100).numpy()
        for row, series in zip(grid, normed):
            assert_close(row, generate(tiny.model, [series], 100).numpy()[0])


@pytest.mark.parametrize("horizon", [1, 7, 13, 70, 100])
def test_the_kv_cache_gives_the_numbers_of_the_naive_loop(tiny, horizon):
    normed = [normalise(wave(n, seed=n))[0] for n in (64, 21, 150)]
    with torch.inference_mode():
        cached = generate(tiny.model, normed, horizon).numpy()
        naive = generate_without_cache(tiny.model, normed, horizon).numpy()
    assert cached.shape == (3, horizon)
    assert_close(cached, naive)


def test_grouping_keeps_wildly_different_lengths_apart():
    assert plan_groups([4000] + [50] * 7) == [[0], [1, 2, 3, 4, 5, 6, 7]]
    assert plan_groups([512] * 8) == [list(range(8))]
    assert plan_groups([900, 500, 100]) == [[0, 1], [2]]
    assert plan_groups([200, 3]) == [[0, 1]]  # short series: one grid is cheap
    assert plan_groups([4096] * 16) == [list(range(8)), list(range(8, 16))]  # memory bound
    assert sorted(i for g in plan_groups([5, 300, 17, 300, 1]) for i in g) == [0, 1, 2, 3, 4]


# -- the heads and the horizon ----------------------------------------------------------

def test_heads_are_chosen_as_the_original_chooses():
    heads = (1, 8, 32, 64)
    assert chunk_plan(heads, 96) == [64, 32]
    assert chunk_plan(heads, 200) == [64, 64, 64, 8]
    assert chunk_plan(heads, 13) == [8, 1, 1, 1, 1, 1]
    assert chunk_plan(heads, 70) == [64, 1, 1, 1, 1, 1, 1]
    # a first head longer than what remains is used and cut (the original's truncation)
    assert chunk_plan((4, 16), 6) == [4, 2]
    assert chunk_plan((4, 16), 3) == [3]


@pytest.mark.parametrize("horizon", [3, 13, 45, 70, 101])
def test_horizons_that_are_not_multiples_of_any_head(tiny, horizon):
    rows = [wave(200), wave(90, seed=3)]
    point = forecast(tiny, rows, horizon)
    assert point.shape == (2, horizon) and np.isfinite(point).all()
    # the forecast continues the series rather than collapsing: it keeps the level
    assert np.all(np.abs(point.mean(axis=1) - [r.mean() for r in rows]) < 20)


def test_only_equal_horizons_share_a_generation(tiny):
    rows = [wave(200)]
    h64, h128, h8, h96 = (forecast(tiny, rows, h) for h in (64, 128, 8, 96))
    caps = tiny.capabilities()
    assert not np.allclose(h96[:, :8], h8)  # the 64-step head is not the 8-step head
    assert caps.batch_group(8) != caps.batch_group(96)
    # 64 is a prefix of 128 for a short series, but a series cut to 4096 - 64 points
    # cannot run 128 steps without losing context: they never share (see
    # tests/test_batch_independence.py for the long-series case)
    assert_close(h128[:, :64], h64)
    assert caps.batch_group(64) != caps.batch_group(128)
    assert caps.position_limit == 4096


# -- awkward series ---------------------------------------------------------------------

@pytest.mark.parametrize("value", [0.0, 5.0, -1234.5])
def test_a_constant_series_forecasts_the_constant(tiny, value):
    point = forecast(tiny, [np.full(60, value), wave(60)], 20)
    assert np.isfinite(point).all()
    np.testing.assert_array_equal(point[0], np.full(20, value))
    assert_close(point[1], forecast(tiny, [wave(60)], 20)[0])


@pytest.mark.parametrize("length", [1, 2, 3, 5])
def test_very_short_series(tiny, length):
    values = wave(length, seed=length)
    point = forecast(tiny, [values], 10)
    assert point.shape == (1, 10) and np.isfinite(point).all()
    if length == 1:  # no spread to scale by: the forecast is the one value
        np.testing.assert_allclose(point[0], values[0])
    assert tiny.capabilities().min_context == 1


def test_context_plus_horizon_is_capped_by_the_position_limit(tmp_path):
    raw = json.loads((TINY / "config.json").read_text())
    raw["max_position_embeddings"] = 64
    write_random_checkpoint(tmp_path, raw, seed=1)
    fam = load(tmp_path)
    assert fam.capabilities().context_limit == 64
    long = wave(500)
    point = forecast(fam, [long], 10)
    assert np.isfinite(point).all()
    assert_close(point, forecast(fam, [long[-54:]], 10))  # 54 + 10 = 64 positions
    assert not np.allclose(point, forecast(fam, [long[-50:]], 10))


# -- precision --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_stays_near_float32(tiny, dtype):
    rows = [wave(300, seed=1), wave(77, seed=2)]
    want = forecast(tiny, rows, 24)
    reduced = load(TINY, dtype=dtype, device="cpu")
    first, layer = reduced.model.layers[0], reduced.model.layers[1]
    assert layer.ffn.gate_up.dtype == getattr(torch, dtype)
    assert layer.attn.wqkv.weight.dtype == torch.float32  # attention stays float32 on CPUs
    assert first.ffn.gate_up.dtype == torch.float32  # and so does the first feed-forward
    got = forecast(reduced, rows, 24)
    std = np.array([r.std(ddof=1) for r in rows])[:, None]
    assert np.isfinite(got).all()
    # issue 4's bound for the default mode: within 1% of the series' std of float32
    assert float(np.max(np.abs(got - want) / std)) < 0.01


def test_auto_dtype(monkeypatch):
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    monkeypatch.setattr(family_module, "cpu_has_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(family_module, "cpu_has_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16


# -- loading ----------------------------------------------------------------------------

def broken_copy(tmp_path, edit):
    target = tmp_path / "ckpt"
    shutil.copytree(TINY, target)
    tensors = load_file(str(target / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"))
    return target


def test_a_missing_key_is_named(tmp_path):
    key = "model.layers.1.ffn_layer.experts.3.up_proj.weight"
    source = broken_copy(tmp_path, lambda t: t.pop(key))
    with pytest.raises(ModelLoadError, match=r"1 missing: " + key.replace(".", r"\.")):
        load(source)


def test_an_unexpected_key_is_named(tmp_path):
    source = broken_copy(tmp_path, lambda t: t.update({"model.extra.weight": torch.zeros(2)}))
    with pytest.raises(ModelLoadError, match=r"1 unexpected: model\.extra\.weight"):
        load(source)


def test_a_misshapen_tensor_is_named(tmp_path):
    key = "lm_heads.2.out_layer.weight"
    source = broken_copy(tmp_path, lambda t: t.update({key: torch.zeros(31, 64)}))
    with pytest.raises(ModelLoadError, match=r"lm_heads\.2\.out_layer\.weight is \(31, 64\)"):
        load(source)


def test_a_config_of_another_model_is_refused(tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(TINY, target)
    raw = json.loads((target / "config.json").read_text())
    raw["model_type"] = "llama"
    (target / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="model_type 'llama'"):
        load(target)


def test_weights_not_found(tmp_path):
    with pytest.raises(ModelLoadError, match="weights not found"):
        load(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="weights not found for Maple728/TimeMoE-50M"):
        load("Maple728/TimeMoE-50M", cache_dir=str(tmp_path))  # HF_HUB_OFFLINE=1 (conftest)


@pytest.mark.slow
def test_random_checkpoints_use_the_official_layout(tmp_path):
    write_random_checkpoint(tmp_path, OFFICIAL["TimeMoE-50M"], seed=3, dtype=torch.bfloat16)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    cfg = TimeMoeConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_experts) == (384, 12, 8)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == official_shapes(cfg)
    assert all(v.dtype == torch.bfloat16 for v in tensors.values())
    total = sum(v.numel() for v in tensors.values())
    assert 110e6 < total < 116e6  # "50M activated, 113M total" (Time-MoE model card)


@pytest.mark.parametrize("change", [{"num_key_value_heads": 2}, {"use_dense": True}])
def test_grouped_query_and_dense_variants_load_and_generate(tmp_path, change):
    """Config variants the released models do not use but the official code supports."""
    raw = json.loads((TINY / "config.json").read_text())
    raw.update(change)
    write_random_checkpoint(tmp_path, raw, seed=2)
    fam = load(tmp_path)
    normed = [normalise(wave(n, seed=n))[0] for n in (80, 33)]
    with torch.inference_mode():
        cached = generate(fam.model, normed, 40).numpy()
        assert_close(cached, generate_without_cache(fam.model, normed, 40).numpy())
        assert_close(cached[1], generate(fam.model, normed[1:], 40).numpy()[0])
    assert np.isfinite(cached).all() and np.abs(cached).max() > 1e-3


def test_no_pass_reads_a_cache_slot_it_did_not_write(tiny, monkeypatch):
    """The KV buffer is not zeroed (model.KVCache): fill it with NaN instead and a ragged,
    padded batch must still give the same finite numbers."""
    from tsfmd.families.timemoe.model import TimeMoe

    rows = [wave(n, seed=n) for n in LENGTHS]
    clean = forecast(tiny, rows, 100)
    plain = TimeMoe.new_caches

    def poisoned(self, batch, max_len):
        caches = plain(self, batch, max_len)
        for cache in caches:
            cache.k.fill_(float("nan"))
            cache.v.fill_(float("nan"))
        return caches

    monkeypatch.setattr(TimeMoe, "new_caches", poisoned)
    np.testing.assert_array_equal(forecast(tiny, rows, 100), clean)
