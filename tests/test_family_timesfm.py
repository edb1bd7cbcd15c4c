"""TimesFM 2.5 behind tsfmd: a tiny random-weight checkpoint, a real server.

The checkpoint (tests/tinymodels.py) is transformers' own TimesFm2_5ModelForPrediction in
the google/timesfm-2.5-200m-transformers layout, saved with save_pretrained and loaded by
the family with from_pretrained. Its forecasts mean nothing; what is checked is what tsfmd
promises for any weights, including the two places where the plain transformers forward
pass would make one series depend on the rest of its batch (padding length and the
clamp-at-zero rule).
"""
import json
import shutil

import numpy as np
import pytest

import tinymodels
from tinymodels import forecast_ok, series
from conftest import start_tsfmd
from tsfmd.families import get_family
from tsfmd.families.base import LoadSpec, SeriesInput
from tsfmd.core.intervals import quantile_at

BLOCK = 32  # horizon_length of the tiny model: one forward pass
CONTEXT = 1024


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("timesfm-ckpt")
    good = tinymodels.timesfm25(root / "tfm", context_length=CONTEXT, horizon_length=BLOCK)
    # the same files with another model_type: must be refused by name, not by a traceback
    other = root / "other-kind"
    shutil.copytree(good, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "timesfm"
    (other / "config.json").write_text(json.dumps(config))
    # a config without weights
    empty = root / "no-weights"
    empty.mkdir()
    shutil.copy(good / "config.json", empty / "config.json")
    return {"good": good, "other": other, "empty": empty}


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints):
    state = tmp_path_factory.mktemp("timesfm-state")
    models = f"""\
  tfm-t:
    family: timesfm-2.5
    source: {checkpoints['good']}
    device: cpu
  tfm-capped:
    family: timesfm-2.5
    source: {checkpoints['good']}
    device: cpu
    context_limit: 100
    horizon_limit: 50
  tfm-other-kind:
    family: timesfm-2.5
    source: {checkpoints['other']}
  tfm-no-weights:
    family: timesfm-2.5
    source: {checkpoints['empty']}
"""
    running = start_tsfmd(state, models, extra_server=f"  state_dir: {state}\n")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def model(checkpoints):
    return get_family("timesfm-2.5").load(LoadSpec(key="tfm", source=str(checkpoints["good"])))


@pytest.mark.parametrize("horizon", [1, 20, 70])  # one block, and three blocks decoded
@pytest.mark.parametrize("length", [1, 45, 300])  # a single point, part of a patch, many
def test_forecast_shape_finite_and_ordered(server, horizon, length):
    values = series(length, seed=length).tolist()
    body = {"input": values, "next_len": horizon, "conf_interval": 0.9}
    answer = forecast_ok(server, "/tfm-t", body)
    output, lower, upper = (np.array(answer[k]) for k in ("output", "lower", "upper"))
    assert output.shape == lower.shape == upper.shape == (horizon,)
    assert np.isfinite(output).all() and np.isfinite(lower).all() and np.isfinite(upper).all()
    assert (lower <= output).all() and (output <= upper).all()


def test_higher_confidence_gives_wider_band(server):
    values = series(150, seed=3).tolist()
    widths = {}
    for conf in (0.5, 0.8, 0.95, 0.99):  # 0.95 and 0.99 lie outside the 0.1..0.9 grid
        body = {"input": values, "next_len": 40, "conf_interval": conf}
        answer = forecast_ok(server, "/tfm-t", body)
        widths[conf] = np.array(answer["upper"]) - np.array(answer["lower"])
    for narrow, wide in ((0.5, 0.8), (0.8, 0.95), (0.95, 0.99)):
        assert (widths[wide] >= widths[narrow] - 1e-9).all(), (narrow, wide)
        assert widths[wide].sum() > widths[narrow].sum(), (narrow, wide)


def test_output_is_the_models_median(server, model):
    values = series(80, seed=5)
    answer = forecast_ok(server, "/tfm-t", {"input": values.tolist(), "next_len": 40})
    direct = model.forecast([SeriesInput(values=values)], 40)
    median = quantile_at(model.capabilities().quantile_levels, direct.quantiles[0], 0.5)
    np.testing.assert_allclose(answer["output"], median, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("field,extra", [("past_dynamic_real", 0), ("dynamic_real", 5)])
def test_covariates_are_refused(server, field, extra):
    n = 60
    body = {"input": series(n).tolist(), "next_len": 5, field: [[1.0] * (n + extra)]}
    r = server.post("/tfm-t", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "tfm-t cannot use covariates" in error and field in error


# -- batches ------------------------------------------------------------------------------


def test_batch_of_different_lengths_equals_one_at_a_time(model):
    horizon = 2 * BLOCK + 3  # three blocks: the appended medians must stay per series
    batch = [SeriesInput(values=series(n, seed=n, level=lvl))
             for n, lvl in ((31, 5.0), (257, 300.0), (64, -40.0), (1, 2.0), (100, 0.0))]
    together = model.forecast(batch, horizon)
    assert together.point.shape == (5, horizon) and together.quantiles.shape == (5, horizon, 9)
    for i, one in enumerate(batch):
        alone = model.forecast([one], horizon)
        np.testing.assert_allclose(together.quantiles[i], alone.quantiles[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(together.point[i], alone.point[0], rtol=1e-4, atol=1e-4)


def test_clamp_at_zero_is_decided_per_series(model):
    """infer_is_positive: a non-negative series never gets a negative forecast, even when
    batched with a series that has negative values (which must keep its own negatives)."""
    rng = np.random.default_rng(8)
    # heavy-tailed and non-negative: the tiny model's low quantiles dip below zero here
    spiky_positive = np.abs(rng.standard_cauchy(90))
    negative = series(90, seed=8, level=-5.0)
    batch = [SeriesInput(values=spiky_positive), SeriesInput(values=negative)]
    together = model.forecast(batch, 40)
    assert (together.quantiles[0] >= 0).all() and (together.point[0] >= 0).all()
    assert (together.quantiles[1] < 0).any()
    assert (together.quantiles[0] == 0).any()  # the rule did clamp something here
    alone = model.forecast([batch[0]], 40)
    np.testing.assert_allclose(together.quantiles[0], alone.quantiles[0], rtol=1e-4, atol=1e-4)


def test_one_block_equals_the_library_forward_pass(model, checkpoints):
    """tsfmd pads to whole patches of the longest series, not to the full context as
    transformers does by default: the numbers must not change."""
    import torch
    from transformers import TimesFm2_5ModelForPrediction

    reference = TimesFm2_5ModelForPrediction.from_pretrained(str(checkpoints["good"])).eval()
    for values in (series(77, seed=4, level=-3.0), series(300, seed=6)):
        with torch.inference_mode():
            full = reference(past_values=[torch.tensor(values, dtype=torch.float32)])
        expected = full.full_predictions[0].double().numpy()  # [BLOCK, 1 + 9], context 1024
        ours = model.forecast([SeriesInput(values=values)], BLOCK)
        np.testing.assert_allclose(ours.quantiles[0], expected[:, 1:], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            ours.point[0], full.mean_predictions[0].numpy(), rtol=1e-4, atol=1e-4
        )


def test_a_longer_horizon_keeps_the_first_steps(model):
    """The dynamic batcher runs a batch at its longest horizon and cuts each answer."""
    assert model.capabilities().horizon_block == 0
    values = [SeriesInput(values=series(120, seed=1))]
    np.testing.assert_allclose(
        model.forecast(values, 90).quantiles[0, :10], model.forecast(values, 10).quantiles[0],
        rtol=1e-5, atol=1e-5,
    )


# -- limits, /v1/models and load failures -------------------------------------------------


def test_models_endpoint_reports_family_limits_quantiles_covariates(server):
    models = {m["key"]: m for m in server.get("/v1/models").json()["models"]}
    tfm, capped = models["tfm-t"], models["tfm-capped"]
    assert tfm["status"] == capped["status"] == "ready"
    assert tfm["family"] == "timesfm-2.5"
    assert (tfm["context_limit"], tfm["horizon_limit"]) == (CONTEXT, 1024)
    assert (capped["context_limit"], capped["horizon_limit"]) == (100, 50)
    assert tfm["quantile_levels"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert tfm["covariates"] == {"past": False, "future": False}
    assert tfm["point_forecast"] == "median"


def test_registry_limits_are_enforced(server):
    r = server.post("/tfm-capped", {"input": series(150).tolist(), "next_len": 51})
    assert r.status_code == 400 and "at most 50" in r.json()["error"]
    answer = forecast_ok(server, "/tfm-capped", {"input": series(150).tolist(), "next_len": 50})
    assert len(answer["output"]) == 50 and np.isfinite(answer["output"]).all()
    assert any("most recent 100" in note for note in answer["notes"])


def test_unusable_checkpoints_fail_with_a_reason(server):
    models = {m["key"]: m for m in server.get("/v1/models").json()["models"]}
    other = models["tfm-other-kind"]
    assert other["status"] == "failed"
    assert "not a TimesFM 2.5 transformers checkpoint" in other["reason"]
    assert "'timesfm'" in other["reason"]
    empty = models["tfm-no-weights"]
    assert empty["status"] == "failed" and "no weights" in empty["reason"]
    assert "model.safetensors" in empty["reason"]
