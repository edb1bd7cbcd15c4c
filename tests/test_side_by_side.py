"""One daemon, every place a model can run: in the daemon's process, in a worker of the
daemon's own interpreter (`isolation: process`), and in workers of two environments whose
pins clash with the daemon's (uni2ts for Moirai: torch 2.4, numpy 1.26; momentfm for MOMENT:
transformers 4.33.3, numpy 1.25.2). Each answers through TDgpt's protocol, forecasts and
an imputation at once, and /v1/models says where each runs.

The environments are built with tsfmd's own builder (tests/envcache.py; built in CI, never
skipped); the tiny checkpoints are made inside them with each library's own classes.
"""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import start_tsfmd
from envcache import environments_yaml, spec_env
from test_family_moirai import checkpoints, moirai_env, tdgpt_body  # noqa: F401 (fixtures)
from test_imputation_moment import PROBE, family_path
from tsfmd.envs import python_for

MS = 1_700_000_000_000 // 60_000 * 60_000  # on a minute


@pytest.fixture(scope="module")
def daemon(moirai_env, checkpoints, tmp_path_factory):  # noqa: F811 (fixtures)
    moment_env = spec_env("moment")
    tmp = tmp_path_factory.mktemp("side-by-side")
    subprocess.run([str(python_for(moment_env, None)), str(PROBE), "build", str(tmp / "ckpt")],
                   check=True, capture_output=True, timeout=600,
                   env={"PYTHONPATH": family_path(tmp / "path"), "PYTHONWARNINGS": "ignore",
                        "HF_HUB_OFFLINE": "1"})
    models = f"""\
  here:
    family: fracast
    source: bundled
  isolated:
    family: fracast
    source: bundled
    isolation: process
  moirai:
    family: moirai
    source: {checkpoints / 'moirai-2.0'}
    environment: moirai
  moment:
    family: moment
    source: {tmp / 'ckpt'}
    environment: moment
    route: /imputation
"""
    running = start_tsfmd(tmp, models, extra_server=f"  state_dir: {tmp}\n"
                          + environments_yaml(moirai_env, moment_env))
    yield running
    running.stop()


def imputation_body():
    values = 50.0 + 8.0 * np.sin(np.arange(300) / 11.0)
    kept = np.setdiff1d(np.arange(300), np.arange(100, 300, 9))
    return kept, values, {"input": values[kept].tolist(),
                          "ts": [MS + 60_000 * int(k) for k in kept], "precision": "ms",
                          "freq": "T"}


@pytest.mark.slow
def test_in_process_isolated_and_environment_models_answer_side_by_side(daemon):
    models = {m["key"]: m for m in daemon.get("/v1/models").json()["models"]}
    assert {k: m["status"] for k, m in models.items()} == dict.fromkeys(models, "ready")
    assert models["here"]["isolation"] == "inprocess" and "worker" not in models["here"]
    assert models["isolated"]["worker"]["python"] == sys.executable
    for key in ("moirai", "moment"):  # each on its own environment's interpreter
        assert models[key]["worker"]["python"] != sys.executable
    assert models["moment"]["tasks"] == ["impute"]
    assert "uni2ts" not in sys.modules and "momentfm" not in sys.modules

    forecast = {"input": tdgpt_body()["input"], "next_len": 12, "conf_interval": 0.9}
    kept, values, imputation = imputation_body()
    replies = {}

    def ask(name, route, body):
        replies[name] = daemon.post(route, body)

    calls = [("here", "/here", forecast), ("isolated", "/isolated", forecast),
             ("moirai", "/moirai", tdgpt_body()), ("moment", "/imputation", imputation)]
    threads = [threading.Thread(target=ask, args=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    for name, reply in replies.items():
        assert reply.status_code == 200, (name, reply.text)
    assert len(replies) == 4
    # the same model in-process and in a worker: the same numbers
    assert replies["here"].json()["output"] == replies["isolated"].json()["output"]
    assert len(replies["moirai"].json()["output"]) == 12
    filled = replies["moment"].json()
    assert np.array_equal(np.array(filled["target"])[kept], values[kept])
    assert sum(filled["mask"]) == 300 - len(kept)
