"""Moirai 1.1-R, Moirai-MoE and Moirai 2.0 (family `moirai`) against uni2ts itself.

uni2ts 2.0.0 cannot live in tsfmd's venv (torch < 2.5, numpy 1.26), so the tests that run a
model build the moirai environment from tests/envs/moirai.txt with tsfmd's own builder
(tests/envcache.py: once per spec into $TSFMD_TEST_ENVS, a failed build fails the test)
and drive two scripts with that environment's python: tests/tiny_moirai.py builds tiny
random checkpoints of all three variants with uni2ts' own classes and save_pretrained, and
tests/moirai_parity.py loads them through MoiraiFamily.load (tsfmd on PYTHONPATH through
a directory holding only a `tsfmd` link, as a worker's is) and runs uni2ts' own prediction
APIs on the same series and seed. The assertions are here.

The first tests need no environment: the family module imports, checks options and tells
the variants apart in tsfmd's own venv, where uni2ts is absent.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tsfmd.families import get_family
from tsfmd.families.base import LoadSpec, ModelLoadError

TESTS = Path(__file__).parent
VARIANTS = {"moirai-1.1": "moirai-1.x", "moirai-moe": "moirai-moe", "moirai-2.0": "moirai-2.0"}
CASES = ("plain", "past", "future", "both")

#: config.json keys as uni2ts' save_pretrained writes them for the published checkpoints
MIXTURE = {"_target_": "uni2ts.distribution.mixture.MixtureOutput", "components": [
    {"_target_": "uni2ts.distribution.student_t.StudentTOutput"},
    {"_target_": "uni2ts.distribution.normal.NormalFixedScaleOutput", "scale": 0.001},
    {"_target_": "uni2ts.distribution.negative_binomial.NegativeBinomialOutput"},
    {"_target_": "uni2ts.distribution.log_normal.LogNormalOutput"}]}
COMMON = {"attn_dropout_p": 0.0, "dropout_p": 0.0, "d_model": 384, "max_seq_len": 512,
          "num_layers": 6, "scaling": True}
CONFIGS = {
    "moirai-1.x": {**COMMON, "distr_output": MIXTURE, "patch_sizes": [8, 16, 32, 64, 128]},
    "moirai-moe": {**COMMON, "distr_output": MIXTURE, "d_ff": 512, "patch_sizes": [16]},
    "moirai-2.0": {**COMMON, "d_ff": 1024, "patch_size": 16, "num_predict_token": 4,
                   "quantile_levels": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]},
}


def checkpoint_dir(root: Path, config: dict) -> Path:
    """A checkpoint directory as tsfmd's checks see it; the weights file is a placeholder
    (check_source never reads weights)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    (root / "model.safetensors").write_bytes(b"")
    return root


# -- in tsfmd's own venv, without uni2ts ----------------------------------------------------


def test_family_module_imports_without_uni2ts_or_torch():
    code = ("import sys, tsfmd.families.moirai as m; "
            "print(m.MoiraiFamily.name, 'uni2ts' in sys.modules, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["moirai", "False", "False"]


@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_check_source_tells_the_variant_from_config(tmp_path, variant):
    family = get_family("moirai")
    source = checkpoint_dir(tmp_path / variant, CONFIGS[variant])
    family.check_source(LoadSpec(key="m", source=str(source)))
    if variant == "moirai-2.0":
        with pytest.raises(ModelLoadError, match="Moirai 2.0 .* takes no options"):
            family.check_source(LoadSpec(key="m", source=str(source),
                                         options={"num_samples": 10}))
    else:
        with pytest.raises(ModelLoadError, match=f"this {variant} checkpoint patches by"):
            family.check_source(LoadSpec(key="m", source=str(source),
                                         options={"patch_size": 7}))


def test_a_checkpoint_of_another_family_is_refused_with_a_sentence(tmp_path):
    chronos = {"model_type": "t5", "chronos_pipeline_class": "ChronosBoltPipeline"}
    source = checkpoint_dir(tmp_path / "bolt", chronos)
    with pytest.raises(ModelLoadError, match="is not a Moirai checkpoint"):
        get_family("moirai").check_source(LoadSpec(key="m", source=str(source)))


def test_options_are_checked_by_name_and_type():
    problems = get_family("moirai").check_options({"num_samples": "many", "temperature": 1})
    assert any("options.num_samples" in p for p in problems)
    assert any("options.temperature: unknown option" in p for p in problems)
    assert get_family("moirai").check_options({"patch_size": 32, "num_samples": 20,
                                              "seed": 3}) == []


def test_load_without_uni2ts_says_which_environment_it_needs(tmp_path):
    assert importlib.util.find_spec("uni2ts") is None, "tsfmd's own venv must not hold uni2ts"
    source = checkpoint_dir(tmp_path / "m", CONFIGS["moirai-1.x"])
    with pytest.raises(ModelLoadError, match=r"needs uni2ts .*environment: <name>"):
        get_family("moirai").load(LoadSpec(key="m", source=str(source)))


def test_tsfmd_check_finds_a_bad_moirai_entry_without_uni2ts(tmp_path):
    moe = checkpoint_dir(tmp_path / "moe", CONFIGS["moirai-moe"])
    config = tmp_path / "tsfmd.yaml"
    config.write_text(f"""\
server:
  state_dir: {tmp_path / 'state'}
environments:
  moirai:
    requirements: ["uni2ts==2.0.0"]
    path: {tmp_path / 'no-env-here'}
models:
  moirai-fc:
    family: moirai
    source: {moe}
    environment: moirai
    options: {{patch_size: 32}}
""")
    done = subprocess.run([sys.executable, "-m", "tsfmd", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "this moirai-moe checkpoint patches by 16, not 32" in said
    assert "environment moirai is missing" in said


# -- in the moirai environment ----------------------------------------------------------------


@pytest.fixture(scope="module")
def moirai_env():
    """The moirai environment's EnvironmentSpec, built now unless up to date."""
    from envcache import spec_env

    return spec_env("moirai")


def env_python(env) -> str:
    return str(Path(env.path) / "bin" / "python")


def run_in_env(env, script: str, *args, tmp: Path) -> None:
    from envcache import tsfmd_only_path

    path = f"{tsfmd_only_path(tmp / 'pythonpath')}{os.pathsep}{TESTS}"
    environ = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([env_python(env), str(TESTS / script), *map(str, args)],
                          capture_output=True, text=True, env=environ, timeout=900)
    assert done.returncode == 0, f"{script} failed:\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def checkpoints(moirai_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("moirai-ckpt")
    run_in_env(moirai_env, "tiny_moirai.py", root, tmp=root.parent)
    return root


@pytest.fixture(scope="module")
def report(moirai_env, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("moirai-parity") / "report.json"
    run_in_env(moirai_env, "moirai_parity.py", "report", checkpoints, out, tmp=out.parent)
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_variant_is_read_from_the_checkpoint(report, name):
    assert report[name]["variant"] == VARIANTS[name]
    caps = report[name]["caps"]
    assert caps["past_covariates"] and caps["future_covariates"]
    assert caps["affine_equivariant"] == (name != "moirai-moe")
    assert caps["horizon_block"] == 1
    assert 0.5 in report[name]["levels"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forecasts_equal_uni2ts_own_prediction_api(report, name, case):
    """The same checkpoint, series and seed: tsfmd's quantiles equal those of uni2ts'
    create_predictor().predict (and, for a plain series, of the forward TDgpt's service
    calls and of Moirai2Forecast.predict)."""
    answers = report[name]["cases"][case]
    ours = np.array(answers["tsfmd"])
    assert ours.shape == (20, len(report[name]["levels"])) and np.isfinite(ours).all()
    references = [k for k in ("gluonts", "forward", "predict") if k in answers]
    assert "gluonts" in references and (case != "plain" or "forward" in references)
    scale = np.abs(ours).max()
    for reference in references:
        np.testing.assert_allclose(ours, np.array(answers[reference]), rtol=0,
                                   atol=1e-6 * scale, err_msg=f"{name}/{case} vs {reference}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["moirai-1.1", "moirai-moe"])
def test_sampled_quantiles_lie_between_gluonts_order_statistics(report, name):
    """gluonts' own SampleForecast.quantile takes the nearest order statistic of the same
    draws; tsfmd interpolates between the two around it."""
    levels = np.array(report[name]["levels"])
    for case in CASES:
        answers = report[name]["cases"][case]
        ours = np.array(answers["tsfmd"])
        draws = np.sort(np.array(answers["gluonts_samples"]), axis=0)  # [N, H]
        rank = np.array(answers["gluonts_rank"])
        position = (len(draws) - 1) * levels
        low = draws[np.floor(position).astype(int)].T
        high = draws[np.ceil(position).astype(int)].T
        slack = 1e-6 * np.abs(draws).max()
        assert (ours >= low - slack).all() and (ours <= high + slack).all()
        assert (rank >= low - slack).all() and (rank <= high + slack).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a_series_answers_the_same_alone_in_a_batch_and_again(report, name):
    batch = report[name]["batch"]
    assert batch["batch_vs_alone"] == 0.0
    assert batch["repeat"] == 0.0
    assert batch["tiny_finite"] and batch["tiny_shape"][:2] == [1, 5]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_affine_equivariance_is_declared_exactly_where_it_holds(report, name):
    """Scaled and shifted series: 1.x and 2.0 answer the scaled and shifted forecast;
    Moirai-MoE's seeded draws move (its docstring says why), so it does not claim it."""
    worst = max(report[name]["affine"].values())
    if report[name]["caps"]["affine_equivariant"]:
        assert worst < 1e-4, report[name]["affine"]
    else:
        assert worst > 1e-2, report[name]["affine"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_both_kinds_of_covariate_change_the_forecast(report, name):
    moved = report[name]["covariate_effect"]
    assert moved["past"] > 0 and moved["future"] > 0


@pytest.mark.slow
def test_options_a_checkpoint_cannot_take_are_refused_at_load(report):
    refused = report["refused"]
    assert "patches by 8, 16, 32, not 64" in refused["patch_size_not_in_checkpoint"]
    assert "patches by 16, not 8" in refused["moe_patch_size"]
    assert "between 1 and" in refused["num_samples_zero"]
    assert "takes no options" in refused["moirai2_num_samples"]
    assert "float32, not bfloat16" in refused["bfloat16"]


# -- served by a daemon, in a worker of the moirai environment ------------------------------

SERVED_OPTIONS = {"moirai-moe": {"num_samples": 50, "seed": 3}, "moirai-2.0": {}}


def tdgpt_body(length=90, horizon=12):
    """A body as TDgpt's TsfmBaseService sends it, covariates included."""
    t = np.arange(length + horizon)
    return {"input": (40 + 8 * np.sin(t[:length] / 5)).round(3).tolist(),
            "ts": (1_700_000_000_000 + 60_000 * t[:length]).tolist(),
            "next_len": horizon, "conf_interval": 0.9,
            "past_dynamic_real": [np.cos(t[:length] / 4).round(3).tolist()],
            "dynamic_real": [(t % 7 == 0).astype(float).tolist()]}


@pytest.fixture(scope="module")
def served(moirai_env, checkpoints, tmp_path_factory):
    from conftest import start_tsfmd
    from envcache import environments_yaml

    state = tmp_path_factory.mktemp("moirai-served")
    models = f"""\
  fracast-fc:
    family: fracast
    source: bundled
  moirai-moe-fc:
    family: moirai
    source: {checkpoints / 'moirai-moe'}
    environment: moirai
    options: {json.dumps(SERVED_OPTIONS['moirai-moe'])}
  moirai2-fc:
    family: moirai
    source: {checkpoints / 'moirai-2.0'}
    environment: moirai
"""
    running = start_tsfmd(state, models,
                          extra_server=f"  state_dir: {state}\n" + environments_yaml(moirai_env))
    yield running
    running.stop()


def reference_reply(env, checkpoint: Path, options: dict, body: dict, tmp: Path) -> dict:
    """What tsfmd's TDgpt route answers with uni2ts' own predictor as the model call."""
    paths = [tmp / name for name in ("options.json", "body.json", "reply.json")]
    paths[0].write_text(json.dumps(options))
    paths[1].write_text(json.dumps(body))
    run_in_env(env, "moirai_parity.py", "reply", checkpoint, *paths, tmp=tmp)
    return json.loads(paths[2].read_text())


@pytest.mark.slow
@pytest.mark.parametrize("key,variant", [("moirai-moe-fc", "moirai-moe"),
                                         ("moirai2-fc", "moirai-2.0")])
def test_a_daemon_serves_moirai_from_its_environment_as_uni2ts_answers(
        served, moirai_env, checkpoints, tmp_path, key, variant):
    body = tdgpt_body()
    answer = served.post(f"/{key}", body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["status"] == "success"
    assert all(len(got[k]) == body["next_len"] for k in ("output", "lower", "upper"))
    want = reference_reply(moirai_env, checkpoints / variant, SERVED_OPTIONS[variant], body,
                           tmp_path)
    for field in ("output", "lower", "upper"):
        np.testing.assert_allclose(got[field], want[field], rtol=1e-6, err_msg=field)
    assert served.post(f"/{key}", body).json() == got  # seeded: the same answer again


@pytest.mark.slow
def test_the_environment_model_runs_beside_an_in_process_one(served):
    assert "uni2ts" not in sys.modules  # the daemon (this process) never imported it
    plain = {"input": tdgpt_body()["input"], "next_len": 12}
    assert served.post("/fracast-fc", plain).status_code == 200
    with_covariates = served.post("/fracast-fc", tdgpt_body())
    assert with_covariates.status_code == 400  # fracast takes none: said, not ignored
    models = {m["key"]: m for m in served.get("/v1/models").json()["models"]}
    for key in ("moirai-moe-fc", "moirai2-fc", "fracast-fc"):
        assert models[key]["status"] == "ready", models[key]
    for key in ("moirai-moe-fc", "moirai2-fc"):
        assert models[key]["covariates"] == {"past": True, "future": True}
    assert models["moirai-moe-fc"]["quantile_levels"][7] == 0.5
