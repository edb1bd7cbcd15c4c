"""Chronos-Bolt and Chronos-2 behind tsfmd: tiny random-weight checkpoints, a real server.

The checkpoints are built once for the module (tests/tinymodels.py) in the published
layout and loaded by the families through chronos-forecasting's from_pretrained, as real
weights would be. Their numbers mean nothing; what is checked is what tsfmd promises for
any weights: shapes, finiteness, ordered bands that widen with the confidence, covariates
used by Chronos-2 and refused by Chronos-Bolt, and batches that answer what each series
answers alone.
"""
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tinymodels
from tinymodels import forecast_ok, series
from conftest import start_tsfmd
from tsfmd.families import get_family
from tsfmd.families.base import LoadSpec, SeriesInput
from tsfmd.core.intervals import median_and_band, quantile_at

BOLT_NATIVE = 16  # prediction_length of the tiny Chronos-Bolt
C2_NATIVE = 32  # max_output_patches * output_patch_size of the tiny Chronos-2


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("chronos-ckpt")
    return {
        "bolt": tinymodels.chronos_bolt(root / "bolt", prediction_length=BOLT_NATIVE),
        "c2": tinymodels.chronos2(root / "c2", max_output_patches=C2_NATIVE // 16),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints):
    state = tmp_path_factory.mktemp("chronos-state")
    models = f"""\
  bolt-t:
    family: chronos-bolt
    source: {checkpoints['bolt']}
    device: cpu
  c2-t:
    family: chronos-2
    source: {checkpoints['c2']}
    device: cpu
  bolt-capped:
    family: chronos-bolt
    source: {checkpoints['bolt']}
    device: cpu
    context_limit: 64
    horizon_limit: 24
  c2-batched:
    family: chronos-2
    source: {checkpoints['c2']}
    device: cpu
    batching:
      max_batch: 16
      max_wait_ms: 300
  bolt-wrong-kind:
    family: chronos-bolt
    source: {checkpoints['c2']}
  c2-not-downloaded:
    family: chronos-2
    source: amazon/chronos-2
"""
    running = start_tsfmd(state, models, extra_server=f"  state_dir: {state}\n")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def families(checkpoints):
    """The families loaded directly, to call `forecast` with hand-made batches."""
    return {
        name: get_family(name).load(LoadSpec(key=name, source=str(checkpoints[short])))
        for name, short in (("chronos-bolt", "bolt"), ("chronos-2", "c2"))
    }


# -- answers over HTTP ------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/bolt-t", "/c2-t"])
@pytest.mark.parametrize("horizon", [7, 40])  # inside and past the native block
def test_forecast_shape_finite_and_ordered(server, route, horizon):
    body = {"input": series(120).tolist(), "next_len": horizon, "conf_interval": 0.95}
    answer = forecast_ok(server, route, body)
    output, lower, upper = (np.array(answer[k]) for k in ("output", "lower", "upper"))
    assert output.shape == lower.shape == upper.shape == (horizon,)
    assert np.isfinite(output).all() and np.isfinite(lower).all() and np.isfinite(upper).all()
    assert (lower <= output).all() and (output <= upper).all()


@pytest.mark.parametrize("route", ["/bolt-t", "/c2-t"])
def test_higher_confidence_gives_wider_band(server, route):
    values = series(90, seed=3).tolist()
    widths = {}
    for conf in (0.5, 0.8, 0.95, 0.99):
        body = {"input": values, "next_len": 12, "conf_interval": conf}
        answer = forecast_ok(server, route, body)
        widths[conf] = np.array(answer["upper"]) - np.array(answer["lower"])
    # 0.95 and 0.99 lie outside Chronos-Bolt's 0.1..0.9 grid: the tails must still widen
    for narrow, wide in ((0.5, 0.8), (0.8, 0.95), (0.95, 0.99)):
        assert (widths[wide] >= widths[narrow] - 1e-9).all(), (narrow, wide)
        assert widths[wide].sum() > widths[narrow].sum(), (narrow, wide)


@pytest.mark.parametrize("route,family", [("/bolt-t", "chronos-bolt"), ("/c2-t", "chronos-2")])
def test_output_is_the_models_median(server, families, route, family):
    values = series(75, seed=5)
    answer = forecast_ok(server, route, {"input": values.tolist(), "next_len": 20})
    model = families[family]
    direct = model.forecast([SeriesInput(values=values)], 20)
    # random weights give crossing quantiles; tsfmd sorts them before reading the median
    median = quantile_at(model.capabilities().quantile_levels, direct.quantiles[0], 0.5)
    np.testing.assert_allclose(answer["output"], median, rtol=1e-5, atol=1e-5)
    assert "lower" not in answer  # no conf_interval asked for


# -- covariates ---------------------------------------------------------------------------


def test_chronos2_uses_past_and_future_covariates(server):
    n, h = 96, 12
    rng = np.random.default_rng(9)
    values = series(n, seed=9).tolist()
    plain = forecast_ok(server, "/c2-t", {"input": values, "next_len": h, "conf_interval": 0.9})
    body = {
        "input": values, "next_len": h, "conf_interval": 0.9,
        "past_dynamic_real": [rng.normal(0, 5, n).tolist()],
        "dynamic_real": [rng.normal(0, 5, n + h).tolist(), rng.normal(0, 5, n + h).tolist()],
    }
    with_covariates = forecast_ok(server, "/c2-t", body)
    out = np.array(with_covariates["output"])
    assert out.shape == (h,) and np.isfinite(out).all()
    assert (np.array(with_covariates["lower"]) <= out).all()
    assert (out <= np.array(with_covariates["upper"])).all()
    assert np.abs(out - np.array(plain["output"])).max() > 1e-6  # the covariates were used


def test_chronos2_checks_covariate_lengths(server):
    n, h = 50, 6
    values = series(n).tolist()
    r = server.post("/c2-t", {"input": values, "next_len": h, "dynamic_real": [[1.0] * n]})
    assert r.status_code == 400, r.text
    assert "'dynamic_real'[0] has 50 values" in r.json()["error"]
    assert str(n + h) in r.json()["error"]
    too_long = [[1.0] * (n + 1)]
    r = server.post("/c2-t", {"input": values, "next_len": h, "past_dynamic_real": too_long})
    assert r.status_code == 400, r.text
    assert "past_dynamic_real" in r.json()["error"]
    # numbers as strings were silently converted once; true/false never count as numbers
    for wrong in (["1.5"] * n, [True] * n):
        r = server.post("/c2-t", {"input": values, "next_len": h, "past_dynamic_real": [wrong]})
        assert r.status_code == 400, r.text
        assert "'past_dynamic_real'[0] must contain only numbers" in r.json()["error"]


def test_chronos2_covariates_beyond_float32_are_scaled_not_infinite(server):
    """Each covariate is scaled in float64 on its own, as Chronos-2 normalises each."""
    n, h = 60, 8
    values = series(n).tolist()
    covariate = np.sin(np.arange(n) / 4.0)
    plain = forecast_ok(server, "/c2-t", {"input": values, "next_len": h,
                                          "past_dynamic_real": [covariate.tolist()]})
    huge = forecast_ok(server, "/c2-t", {"input": values, "next_len": h,
                                         "past_dynamic_real": [(covariate * 1e300).tolist()]})
    np.testing.assert_allclose(huge["output"], plain["output"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("field,extra", [("past_dynamic_real", 0), ("dynamic_real", 6)])
def test_bolt_refuses_covariates(server, field, extra):
    n = 40
    body = {"input": series(n).tolist(), "next_len": 6, field: [[0.5] * (n + extra)]}
    r = server.post("/bolt-t", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "bolt-t cannot use covariates" in error and field in error


# -- batches ------------------------------------------------------------------------------


def _assert_batch_equals_singles(model, batch, horizon):
    together = model.forecast(batch, horizon)
    assert together.point.shape == (len(batch), horizon)
    levels = model.capabilities().quantile_levels
    assert together.quantiles.shape == (len(batch), horizon, len(levels))
    for i, one in enumerate(batch):
        alone = model.forecast([one], horizon)
        np.testing.assert_allclose(together.quantiles[i], alone.quantiles[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(together.point[i], alone.point[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["chronos-bolt", "chronos-2"])
def test_batch_of_different_lengths_equals_one_at_a_time(families, family):
    batch = [SeriesInput(values=series(n, seed=n, level=lvl))
             for n, lvl in ((23, 5.0), (130, 200.0), (64, -30.0), (3, 1.0))]
    _assert_batch_equals_singles(families[family], batch, horizon=40)


def test_chronos2_batch_mixing_covariate_shapes_equals_one_at_a_time(families):
    rng = np.random.default_rng(4)
    h = 20

    def one(n, past, future):
        return SeriesInput(
            values=series(n, seed=n),
            past_covariates=rng.normal(size=(past, n)) if past else None,
            future_covariates=rng.normal(size=(future, n + h)) if future else None,
        )

    batch = [one(40, 1, 0), one(70, 0, 2), one(55, 2, 1), one(33, 0, 0), one(48, 1, 0)]
    _assert_batch_equals_singles(families["chronos-2"], batch, horizon=h)


def test_a_longer_horizon_in_the_same_group_keeps_the_first_steps(families):
    """The dynamic batcher runs a batch at its longest horizon and cuts each answer."""
    values = [SeriesInput(values=series(80, seed=2))]
    bolt = families["chronos-bolt"]
    assert bolt.capabilities().batch_group(5) == bolt.capabilities().batch_group(70) is None
    np.testing.assert_allclose(
        bolt.forecast(values, 70).quantiles[0, :5], bolt.forecast(values, 5).quantiles[0],
        rtol=1e-5, atol=1e-5,
    )
    c2 = families["chronos-2"]
    group = c2.capabilities().batch_group
    for short, long_ in ((5, 16), (20, 32), (33, 48)):
        assert group(short) == group(long_) == math.ceil(long_ / 16)
        np.testing.assert_allclose(
            c2.forecast(values, long_).quantiles[0, :short],
            c2.forecast(values, short).quantiles[0],
            rtol=1e-5, atol=1e-5,
        )
    assert group(16) != group(17)


def test_concurrent_requests_batched_over_http_answer_as_alone(server, families):
    """Mixed horizons and covariate shapes through the dynamic batcher: every answer is
    the one its series gets alone (schema groups and horizon_block at work)."""
    rng = np.random.default_rng(21)
    requests_ = []
    for i, h in enumerate((5, 12, 16, 20, 40, 12, 33, 7)):
        n = 40 + 9 * i
        body = {"input": series(n, seed=i).tolist(), "next_len": h, "conf_interval": 0.9}
        if i % 3 == 1:
            body["past_dynamic_real"] = [rng.normal(size=n).tolist()]
        if i % 3 == 2:
            body["dynamic_real"] = [rng.normal(size=n + h).tolist()]
        requests_.append(body)
    with ThreadPoolExecutor(len(requests_)) as pool:
        answers = list(pool.map(lambda b: forecast_ok(server, "/c2-batched", b), requests_))
    model = families["chronos-2"]
    levels = model.capabilities().quantile_levels
    for body, answer in zip(requests_, answers):
        n, h = len(body["input"]), body["next_len"]
        past = body.get("past_dynamic_real")
        future = body.get("dynamic_real")
        alone = model.forecast([SeriesInput(
            values=np.array(body["input"]),
            past_covariates=np.array(past) if past else None,
            future_covariates=np.array(future) if future else None,
        )], h)
        median, lower, upper = median_and_band(levels, alone.quantiles[0], 0.9)
        np.testing.assert_allclose(answer["output"], median, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(answer["lower"], lower, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(answer["upper"], upper, rtol=1e-4, atol=1e-4)
    models = {m["key"]: m for m in server.get("/v1/models").json()["models"]}
    assert models["c2-batched"]["batching"]["largest_batch"] >= 2  # batches did form


# -- limits, /v1/models and load failures -------------------------------------------------


def test_models_endpoint_reports_family_limits_quantiles_covariates(server):
    r = server.get("/v1/models")
    assert r.status_code == 200
    models = {m["key"]: m for m in r.json()["models"]}
    bolt, c2, capped = models["bolt-t"], models["c2-t"], models["bolt-capped"]
    assert bolt["status"] == c2["status"] == capped["status"] == "ready"
    assert bolt["family"] == capped["family"] == "chronos-bolt" and c2["family"] == "chronos-2"
    assert bolt["context_limit"] == c2["context_limit"] == 512  # from chronos_config
    assert bolt["horizon_limit"] == c2["horizon_limit"] == 1024
    assert (capped["context_limit"], capped["horizon_limit"]) == (64, 24)  # the registry's caps
    assert bolt["quantile_levels"] == tinymodels.BOLT_QUANTILES
    assert c2["quantile_levels"] == tinymodels.CHRONOS2_QUANTILES
    assert bolt["covariates"] == {"past": False, "future": False}
    assert c2["covariates"] == {"past": True, "future": True}
    assert bolt["point_forecast"] == c2["point_forecast"] == "median"


def test_registry_limits_are_enforced(server):
    r = server.post("/bolt-capped", {"input": series(100).tolist(), "next_len": 25})
    assert r.status_code == 400 and "at most 24" in r.json()["error"]
    answer = forecast_ok(server, "/bolt-capped", {"input": series(100).tolist(), "next_len": 24})
    assert len(answer["output"]) == 24
    assert any("most recent 64" in note for note in answer["notes"])


def test_unusable_checkpoints_fail_with_a_reason_and_others_serve(server):
    models = {m["key"]: m for m in server.get("/v1/models").json()["models"]}
    wrong = models["bolt-wrong-kind"]
    assert wrong["status"] == "failed"
    assert "not a chronos-bolt checkpoint" in wrong["reason"]
    assert "Chronos2Pipeline (family chronos-2)" in wrong["reason"]
    missing = models["c2-not-downloaded"]
    assert missing["status"] == "failed" and "HF_HUB_OFFLINE" in missing["reason"]
    r = server.post("/bolt-wrong-kind", {"input": series(30).tolist(), "next_len": 3})
    assert r.status_code == 503 and "not a chronos-bolt checkpoint" in r.json()["error"]
