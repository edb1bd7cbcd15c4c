"""End to end: a daemon serving MOMENT in a worker of its own environment (`environment:
moment`) on /imputation through TDgpt's wire format, beside an in-process fracast.

The moment environment (momentfm 0.1.4, numpy 1.25.2, transformers 4.33.3) is built with
tsfmd's own builder (tests/envcache.py; CI builds it, never skips); the tiny checkpoint is
made there with momentfm's own classes (tests/moment_env_probe.py). The served answer must
be what the family gives in that environment directly, and momentfm's own model call.
"""
from __future__ import annotations

import json
import subprocess
import threading

import numpy as np
import pytest

from conftest import RunningTsfmd, free_port, registry_yaml
from envcache import environments_yaml
from test_imputation_moment import PROBE, family_path, moment_env
from tsfmd.envs import python_for

MS = 1_700_000_000_000 // 60_000 * 60_000  # on a minute
N = 700  # two of MOMENT's windows


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    env = moment_env()
    tmp = tmp_path_factory.mktemp("served")
    python = python_for(env, None)
    subprocess.run([str(python), str(PROBE), "build", str(tmp / "ckpt")], check=True,
                   env={"PYTHONPATH": family_path(tmp / "path"), "PYTHONWARNINGS": "ignore",
                        "HF_HUB_OFFLINE": "1"}, capture_output=True, timeout=600)
    port = free_port()
    models = (f"  fc:\n    family: fracast\n    source: bundled\n"
              f"  moment:\n    family: moment\n    source: {tmp / 'ckpt'}\n"
              f"    environment: moment\n    route: /imputation\n")
    config = tmp / "tsfmd.yaml"
    config.write_text(environments_yaml(env) + registry_yaml(models, port))
    running = RunningTsfmd(config, port).start()
    yield running, python, tmp
    running.stop()


def tdgpt_body():
    """What TDgpt's anode posts: a minute series whose missing minutes have no row."""
    rng = np.random.default_rng(7)
    values = 50.0 + 8.0 * np.sin(np.arange(N) / 11.0) + rng.normal(0, 0.5, N)
    missing = rng.choice(np.arange(1, N - 1), 60, replace=False)  # the ends are rows
    kept = np.setdiff1d(np.arange(N), missing)
    return values, kept, {"input": values[kept].tolist(),
                          "ts": [MS + 60_000 * int(k) for k in kept],
                          "precision": "ms", "freq": "T"}


def test_moment_in_its_environment_serves_tdgpts_imputation(served):
    running, python, tmp = served
    values, kept, body = tdgpt_body()
    forecasts = []
    beside = threading.Thread(target=lambda: forecasts.append(running.post(
        "/fc", {"input": values[:200].tolist(), "next_len": 8})))
    beside.start()
    reply = running.post("/imputation", body)
    beside.join(120)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["status"] == "success"
    assert answer["ts"] == [MS + 60_000 * k for k in range(N)]
    mask = np.array(answer["mask"])
    assert mask.sum() == 60 and not mask[kept].any()
    target = np.array(answer["target"])
    assert np.array_equal(target[kept], values[kept])  # observed points exactly as sent
    gappy = np.full(N, np.nan)
    gappy[kept] = values[kept]
    direct = subprocess.run(
        [str(python), str(PROBE), "impute", str(tmp / "ckpt")], input=json.dumps(
            [None if np.isnan(v) else float(v) for v in gappy]), capture_output=True,
        text=True, check=True, timeout=600,
        env={"PYTHONPATH": family_path(tmp / "path"), "PYTHONWARNINGS": "ignore",
             "HF_HUB_OFFLINE": "1"})
    expected = json.loads(direct.stdout.strip().splitlines()[-1])
    assert np.array_equal(target, np.array(expected["family"]))  # the worker is the family
    assert np.allclose(target, expected["reference"], rtol=0, atol=2e-5 * 60)
    assert forecasts and forecasts[0].status_code == 200, forecasts
    assert len(forecasts[0].json()["output"]) == 8


def test_the_worker_is_listed_and_the_probe_answers(served):
    running, python, _ = served
    models = {m["key"]: m for m in running.get("/v1/models").json()["models"]}
    assert models["moment"]["status"] == "ready"
    assert models["moment"]["worker"]["python"] == str(python)
    assert running.get("/imputation").status_code == 405  # TDgpt's status probe: available
