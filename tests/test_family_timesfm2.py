"""TimesFM 2.0 behind tsfmd: a tiny random checkpoint of transformers' own classes.

The checkpoint (tests/tinymodels.py) is TimesFmModelForPrediction in the
google/timesfm-2.0-500m-pytorch transformers layout, saved with save_pretrained and loaded by
the family with from_pretrained. Parity is against that same class's forward pass on the
same files: one block is one forward; longer horizons are the timesfm package's decoding
(append the block's mean, run again), written here as chained library forwards.
"""
import numpy as np
import pytest
import torch

import tinymodels
from tinymodels import forecast_ok, series
from tsfmd.core.intervals import quantile_at
from tsfmd.families import get_family
from tsfmd.families.base import LoadSpec, SeriesInput

BLOCK = 32  # horizon_length of the tiny model
CONTEXT = 256


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("timesfm2")
    good = tinymodels.timesfm20(root / "tfm2", context_length=CONTEXT, horizon_length=BLOCK)
    original = root / "original-only"  # what the timesfm package reads: not this family's
    original.mkdir()
    (original / "torch_model.ckpt").write_bytes(b"not read by tsfmd")
    later = tinymodels.timesfm25(root / "tfm25", context_length=CONTEXT, horizon_length=BLOCK)
    return {"good": good, "original": original, "2.5": later}


@pytest.fixture(scope="module")
def library(checkpoints):
    from transformers import TimesFmModelForPrediction

    return TimesFmModelForPrediction.from_pretrained(str(checkpoints["good"])).eval()


@pytest.fixture(scope="module")
def model(checkpoints):
    return get_family("timesfm-2.0").load(LoadSpec(key="t", source=str(checkpoints["good"])))


def library_block(library, histories, freq=0):
    with torch.inference_mode():
        out = library(past_values=[torch.tensor(h, dtype=torch.float32) for h in histories],
                      freq=[freq] * len(histories))
    return out.full_predictions.double().numpy()  # [B, BLOCK, mean + 9 quantiles]


def library_decode(library, values, horizon, freq=0):
    """The timesfm package's long-horizon decoding with the library's forward passes."""
    history, blocks = np.asarray(values, dtype=np.float64), []
    while sum(len(b) for b in blocks) < horizon:
        full = library_block(library, [history[-CONTEXT:]], freq)[0]
        blocks.append(full)
        history = np.concatenate([history, full[:, 0].astype(np.float32)])
    return np.concatenate(blocks)[:horizon]


LENGTHS = (1, 31, 45, 256, 300)  # one point, under a patch, ragged, the context, longer


def test_one_block_equals_the_library_forward_pass(model, library):
    batch = [series(n, seed=n, level=10.0 * i) for i, n in enumerate(LENGTHS)]
    ours = model.forecast([SeriesInput(values=v) for v in batch], BLOCK)
    worst = 0.0
    for i, values in enumerate(batch):
        alone = library_block(library, [values[-CONTEXT:]])[0]
        worst = max(worst, float(np.abs(ours.quantiles[i] - alone[:, 1:]).max()))
        np.testing.assert_allclose(ours.quantiles[i], alone[:, 1:], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.point[i], alone[:, 5], rtol=1e-5, atol=1e-5)  # median
    print(f"timesfm-2.0 one block: max |tsfmd - transformers| = {worst:.2e}")


def test_long_horizons_decode_like_the_timesfm_package(model, library):
    horizon = 3 * BLOCK - 5
    batch = [series(n, seed=n) for n in LENGTHS]
    together = model.forecast([SeriesInput(values=v) for v in batch], horizon)
    assert together.quantiles.shape == (len(batch), horizon, 9)
    worst = 0.0
    for i, values in enumerate(batch):
        want = library_decode(library, values, horizon)
        worst = max(worst, float(np.abs(together.quantiles[i] - want[:, 1:]).max()))
        np.testing.assert_allclose(together.quantiles[i], want[:, 1:], rtol=1e-4, atol=1e-4)
    print(f"timesfm-2.0 {horizon} steps: max |tsfmd - chained transformers| = {worst:.2e}")


def test_a_longer_horizon_keeps_the_first_steps(model):
    values = [SeriesInput(values=series(90, seed=2))]
    np.testing.assert_array_equal(model.forecast(values, 70).quantiles[0, :20],
                                  model.forecast(values, 20).quantiles[0])


def test_the_freq_option_reaches_the_model(checkpoints, library):
    spec = LoadSpec(key="t", source=str(checkpoints["good"]), options={"freq": 2})
    low = get_family("timesfm-2.0").load(spec)
    values = series(100, seed=3)
    got = low.forecast([SeriesInput(values=values)], BLOCK).quantiles[0]
    np.testing.assert_allclose(got, library_block(library, [values], freq=2)[0, :, 1:],
                               rtol=1e-5, atol=1e-5)
    assert np.abs(got - library_block(library, [values], freq=0)[0, :, 1:]).max() > 1e-4
    assert get_family("timesfm-2.0").check_options({"freq": 5})


# -- served ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints):
    from conftest import start_tsfmd

    state = tmp_path_factory.mktemp("timesfm2-state")
    models = f"""\
  timesfm:
    family: timesfm-2.0
    source: {checkpoints['good']}
    route: /timesfm
    device: cpu
  tfm2-original-file:
    family: timesfm-2.0
    source: {checkpoints['original']}
  tfm2-wrong-kind:
    family: timesfm-2.0
    source: {checkpoints['2.5']}
"""
    running = start_tsfmd(state, models, extra_server=f"  state_dir: {state}\n")
    yield running
    running.stop()


def test_served_with_intervals_from_the_native_deciles(server, model):
    values = series(150, seed=4)
    answer = forecast_ok(server, "/timesfm", {"input": values.tolist(), "next_len": 40,
                                              "conf_interval": 0.8})
    direct = model.forecast([SeriesInput(values=values)], 40)
    levels = model.capabilities().quantile_levels
    # tsfmd's interval code orders crossed quantiles (a random model crosses them) first
    for key, level in (("output", 0.5), ("lower", 0.1), ("upper", 0.9)):
        want = quantile_at(levels, direct.quantiles[0], level)
        np.testing.assert_allclose(answer[key], want, rtol=1e-4, atol=1e-4)


def test_models_endpoint_and_checkpoints_it_cannot_read(server):
    models = {m["key"]: m for m in server.get("/v1/models").json()["models"]}
    tfm = models["timesfm"]
    assert tfm["status"] == "ready" and tfm["family"] == "timesfm-2.0"
    assert (tfm["context_limit"], tfm["horizon_limit"]) == (CONTEXT, 1024)
    assert tfm["quantile_levels"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert tfm["point_forecast"] == "median"
    original = models["tfm2-original-file"]
    assert original["status"] == "failed"
    assert "torch_model.ckpt" in original["reason"] and "tsfmd pull" in original["reason"]
    wrong = models["tfm2-wrong-kind"]
    assert wrong["status"] == "failed" and "'timesfm2_5'" in wrong["reason"]


# -- the registry entry a TDgpt user starts from ------------------------------------------

#: recommended for etc/tsfmd/tsfmd.yaml (TDgpt's timesfm-server.py loads this hub id)
ENTRY = """\
  timesfm-2.0:
    family: timesfm-2.0
    source: google/timesfm-2.0-500m-pytorch
    description: TimesFM 2.0 (500M), quantiles 0.1..0.9, context 2048, 128 steps a pass
    enabled: false
"""


def test_the_disabled_example_entry_checks_and_names_what_enabling_needs(tmp_path, checkpoints):
    result, path = tinymodels.tsfmd_check(tmp_path, ENTRY)
    assert result.returncode == 0, result.stderr
    assert "disabled timesfm-2.0" in result.stdout
    result, path = tinymodels.tsfmd_check(tmp_path, ENTRY.replace("false", "true"))
    assert result.returncode == 1  # the test's state dir has no hub cache
    assert "models.timesfm-2.0 would fail to load: weights not found for " \
           "google/timesfm-2.0-500m-pytorch" in result.stderr
    assert "tsfmd pull google/timesfm-2.0-500m-pytorch" in result.stderr
    local = ENTRY.replace("false", "true").replace("google/timesfm-2.0-500m-pytorch",
                                                   str(checkpoints["good"]))
    result, path = tinymodels.tsfmd_check(tmp_path, local)
    assert result.returncode == 0, result.stderr
