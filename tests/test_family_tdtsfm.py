"""tdtsfm (TDgpt's own model) behind tsfmd, against a reference of TDgpt's script.

The checkpoints are `taos.pth` state dicts under TaosForPrediction's names with every tensor
random (tests/tinymodels.py), in two shapes: the one TDgpt ships scaled down (whole-patch
tokens, one output head as long as a patch) and TaosConfig's defaults (one value per token,
heads [1, 8, 32, 64]). tsfmd's forecasts are compared with tests/tdtsfm_reference.py, a
re-implementation of tdtsfm-server.py's model and generation loop written from reading it,
run in its own environment with transformers 4.40.1 (tests/envs/tdtsfm-ref.txt, built by
tests/envcache.py; never skipped). What parity means here: against that reading of the script,
one series at a time as the script serves, with attention dropout off (see the last test).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import tinymodels
from envcache import spec_env
from tinymodels import forecast_ok, series
from tsfmd.envs import python_for
from tsfmd.families import get_family
from tsfmd.families.base import LoadSpec, ModelLoadError, SeriesInput

REFERENCE = Path(__file__).parent / "tdtsfm_reference.py"
TINY = {"Taos_hidden_size": 16, "Taos_intermediate_size": 32, "Taos_num_hidden_layers": 2,
        "Taos_num_attention_heads": 2, "Taos_max_position_embeddings": 64,
        "Taos_hidden_act": "gelu"}
#: the shipped layout (96-point patches, one 96-point head), with 4-point patches
PATCHED = dict(TINY, Taos_input_token_len=4, Taos_output_token_lens=[4])
#: TaosConfig's defaults: one value per token, heads 1, 8, 32, 64
MULTI_HEAD = dict(TINY, Taos_input_token_len=1, Taos_output_token_lens=[1, 8, 32, 64],
                  Taos_hidden_act="silu")
#: (length, horizon): one pass, several passes, a cut last chunk, long and ragged contexts.
#: Multi-head horizons avoid what the script answers NaN for (a later pass fed a single
#: point has no sample std): a remainder of 2..7 after the 8-steps.
CASES = {
    "patched": [(4, 1), (9, 3), (17, 10), (40, 33), (130, 20), (255, 8)],
    "multi-head": [(1, 1), (12, 8), (30, 41), (50, 97), (64, 64), (20, 9)],
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tdtsfm")
    return {"patched": tinymodels.tdtsfm(root / "patched", PATCHED),
            "multi-head": tinymodels.tdtsfm(root / "multi-head", MULTI_HEAD)}


def load(directory, dtype="float32"):
    return get_family("tdtsfm").load(LoadSpec(key="t", source=str(directory), dtype=dtype))


def run_reference(directory, cases, dropout=0.0, seed=0, tmp_path=None):
    """The reference forecasts of `cases` [(values, horizon)] in the tdtsfm-ref env."""
    job = {"checkpoint": str(directory), "dropout": dropout, "seed": seed,
           "cases": [{"values": [float(x) for x in v], "horizon": h} for v, h in cases]}
    job_file, out_file = tmp_path / "job.json", tmp_path / "out.json"
    job_file.write_text(json.dumps(job))
    done = subprocess.run([str(python_for(spec_env("tdtsfm-ref"), None)), str(REFERENCE),
                           str(job_file), str(out_file)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(out_file.read_text())
    assert answer["versions"]["transformers"] == "4.40.1"
    return [np.array(f, dtype=np.float64) for f in answer["forecasts"]]


@pytest.mark.parametrize("shape", ["patched", "multi-head"])
def test_batched_forecasts_equal_the_reference_one_series_at_a_time(checkpoints, shape,
                                                                    tmp_path):
    cases = [(series(n, seed=n, level=5.0 * i), h) for i, (n, h) in enumerate(CASES[shape])]
    reference = run_reference(checkpoints[shape], cases, tmp_path=tmp_path)
    model = load(checkpoints[shape])
    worst = worst_abs = 0.0
    for horizon in sorted({h for _, h in cases}):
        batch = [SeriesInput(values=v) for v, h in cases if h == horizon]
        # a batch-mate of another length that the reference never sees
        together = model.forecast(batch + [SeriesInput(values=series(70, seed=1))], horizon)
        wanted = [want for (v, h), want in zip(cases, reference) if h == horizon]
        for got, want, one in zip(together.point, wanted, batch):
            assert np.isfinite(want).all() and want.shape == (horizon,)
            spread = float(np.std(one.values)) or 1.0  # one point: a constant
            diff = float(np.abs(got - want).max())
            worst, worst_abs = max(worst, diff / spread), max(worst_abs, diff)
            assert diff <= 1e-5 * spread + 1e-5 * float(np.abs(want).max()), (horizon, diff)
    print(f"tdtsfm {shape}: max |tsfmd - reference| = {worst_abs:.2e} "
          f"({worst:.2e} x the series' std)")


def test_constant_input_and_short_input(checkpoints, tmp_path):
    model = load(checkpoints["patched"])
    constant = np.full(12, 3.25)
    want = run_reference(checkpoints["patched"], [(constant, 6)], tmp_path=tmp_path)[0]
    np.testing.assert_array_equal(model.forecast([SeriesInput(values=constant)], 6).point[0],
                                  want)
    assert model.capabilities().min_context == 4  # the script refuses less than one patch


def test_horizons_share_a_batch_only_where_the_first_steps_do_not_change(checkpoints):
    """One head: a longer horizon's first steps are a shorter one's (the batcher may run a
    batch at its longest horizon); several heads: the head depends on the steps left."""
    patched, multi = load(checkpoints["patched"]), load(checkpoints["multi-head"])
    assert patched.capabilities().horizon_block == 0
    assert multi.capabilities().horizon_block == 1
    values = [SeriesInput(values=series(60, seed=5))]
    np.testing.assert_array_equal(patched.forecast(values, 33).point[0, :10],
                                  patched.forecast(values, 10).point[0])
    assert np.abs(multi.forecast(values, 40).point[0, :8]
                  - multi.forecast(values, 8).point[0]).max() > 1e-6


def test_bfloat16_feed_forwards_stay_near_float32(checkpoints):
    """dtype bfloat16 (what `auto` picks on bf16-capable CPUs): feed-forwards from the
    second layer on in bfloat16, attention and norms in float32, as time-moe."""
    low = load(checkpoints["patched"], dtype="bfloat16")
    layers = low.model.layers
    assert layers[1].ffn.gate_up.weight.dtype == torch.bfloat16
    assert layers[0].ffn.gate_up.weight.dtype == torch.float32  # reads the values directly
    assert layers[1].attn.wqkv.weight.dtype == torch.float32
    full = load(checkpoints["patched"])
    for n in (20, 200):
        values = [SeriesInput(values=series(n, seed=n))]
        diff = np.abs(low.forecast(values, 12).point - full.forecast(values, 12).point).max()
        assert diff <= 0.01 * np.std(values[0].values)


def test_weights_are_checked_strictly_by_name_and_shape(checkpoints, tmp_path):
    state = torch.load(checkpoints["patched"] / "taos.pth", weights_only=True)
    state.pop("Taos_model.Taos_layers.1.Taos_norm2.bias")
    state["Taos_lm_heads.0.weight"] = torch.zeros(8, 16)
    state["Taos_model.extra"] = torch.zeros(1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((checkpoints["patched"] / "config.json").read_text())
    torch.save(state, broken / "taos.pth")
    with pytest.raises(ModelLoadError) as caught:
        load(broken)
    text = str(caught.value)
    assert "1 missing: Taos_model.Taos_layers.1.Taos_norm2.bias" in text
    assert "1 unexpected: Taos_model.extra" in text
    assert "Taos_lm_heads.0.weight is (8, 16), expected (4, 16)" in text


def test_a_config_the_scripts_loop_cannot_run_is_refused(tmp_path):
    directory = tinymodels.tdtsfm(tmp_path / "ok", PATCHED)
    raw = json.loads((directory / "config.json").read_text())
    raw["Taos_output_token_lens"] = [6]
    (directory / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="multiple of 4"):
        load(directory)


def test_the_scripts_own_forward_is_random_at_inference(checkpoints, tmp_path):
    """tdtsfm-server.py sets attention dropout 0.1 and passes it to
    scaled_dot_product_attention, which drops whatever eval() says: two runs of the same
    request differ. tsfmd serves the model without dropout (the reference with 0)."""
    cases = [(series(40, seed=3), 12)]
    first = run_reference(checkpoints["patched"], cases, dropout=0.1, seed=1, tmp_path=tmp_path)
    again = run_reference(checkpoints["patched"], cases, dropout=0.1, seed=2, tmp_path=tmp_path)
    plain = run_reference(checkpoints["patched"], cases, dropout=0.0, tmp_path=tmp_path)
    ours = load(checkpoints["patched"]).forecast([SeriesInput(values=cases[0][0])], 12).point[0]
    assert np.abs(first[0] - again[0]).max() > 1e-3
    np.testing.assert_allclose(ours, plain[0], rtol=1e-5, atol=1e-5)


# -- served ------------------------------------------------------------------------------


@pytest.fixture
def served(tsfmd_server, checkpoints, tmp_path):
    models = f"""\
  tdtsfm:
    family: tdtsfm
    source: {checkpoints['patched']}
    route: /tdtsfm
    dtype: float32
    device: cpu
  tdtsfm-missing:
    family: tdtsfm
    source: {tmp_path / 'nowhere'}
"""
    return tsfmd_server(models, extra_server=f"  state_dir: {tmp_path}\n")


def test_served_on_tdgpts_route_like_the_library_call(served, checkpoints):
    values = series(50, seed=9)
    answer = forecast_ok(served, "/tdtsfm", {"input": values.tolist(), "next_len": 10})
    direct = load(checkpoints["patched"]).forecast([SeriesInput(values=values)], 10).point[0]
    np.testing.assert_allclose(answer["output"], direct, rtol=1e-5, atol=1e-5)
    short = served.post("/tdtsfm", {"input": [1.0, 2.0, 3.0], "next_len": 2})
    assert short.status_code == 400 and "at least 4" in short.json()["error"]
    models = {m["key"]: m for m in served.get("/v1/models").json()["models"]}
    assert models["tdtsfm"]["status"] == "ready"
    assert models["tdtsfm"]["point_forecast"] == "mean"
    assert models["tdtsfm-missing"]["status"] == "failed"
    assert "weights not found" in models["tdtsfm-missing"]["reason"]


# -- the registry entry a TDgpt user starts from ------------------------------------------

#: recommended for etc/tsfmd/tsfmd.yaml: TDgpt installs taos.pth in this directory
ENTRY = """\
  tdtsfm:
    family: tdtsfm
    source: /var/lib/taos/taosanode/model/tdtsfm
    route: /tdtsfm
    description: TDgpt's tdtsfm (96-point patches, 8 layers), point forecasts
    enabled: false
"""


def test_the_disabled_example_entry_checks_and_names_what_enabling_needs(tmp_path, checkpoints):
    result, path = tinymodels.tsfmd_check(tmp_path, ENTRY)
    assert result.returncode == 0, result.stderr
    assert "disabled tdtsfm" in result.stdout and "family=tdtsfm" in result.stdout
    shipped = "/var/lib/taos/taosanode/model/tdtsfm"
    result, path = tinymodels.tsfmd_check(tmp_path, ENTRY.replace("false", "true"))
    if not Path(shipped).is_dir():  # a machine with TDgpt installed has it
        assert result.returncode == 1
        assert f"models.tdtsfm would fail to load: weights not found at {shipped}" in result.stderr
    local = ENTRY.replace("false", "true").replace(shipped, str(checkpoints["patched"]))
    result, path = tinymodels.tsfmd_check(tmp_path, local)
    assert result.returncode == 0, result.stderr


def test_int8_is_refused_at_load_not_run_as_float32(checkpoints):
    """tdtsfm has no int8 path: `dtype: int8` must fail its load, not serve float32."""
    with pytest.raises(ModelLoadError, match="dtype must be auto, float32, bfloat16 or "
                       "float16, not 'int8'"):
        load(checkpoints["patched"], dtype="int8")
