"""Time-MoE through a real tsfmd: YAML registry, waitress on loopback, TDgpt's JSON body.

The tiny checkpoint (official layout) is served on TDgpt's Time-MoE routes and must answer
what the original service computes: the de-normalised forecasts in reference.npz.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import FIXTURES

HERE = FIXTURES / "timemoe"
REFERENCE = dict(np.load(HERE / "reference.npz"))


def models_yaml(extra: str = "") -> str:
    return (
        "  timemoe-fc:\n"
        "    family: time-moe\n"
        f"    source: {HERE / 'tiny'}\n"
        "    route: /timemoe-fc\n"
        "    aliases: [/timemoe, /ds_predict]\n"
        "    dtype: float32\n"
        "    device: cpu\n"
        "    batching: {max_batch: 8, max_wait_ms: 500}\n"
        f"{extra}"
    )


def tdgpt_body(values, next_len: int) -> dict:
    """What the anode's Time-MoE adapter sends (config.py-era releases add `ts`)."""
    return {
        "input": [float(v) for v in values],
        "next_len": next_len,
        "ts": [1700000000000 + 1000 * i for i in range(len(values))],
        "past_dynamic_real": [],
        "dynamic_real": [],
        "conf_interval": 0.95,
    }


def assert_matches(output, reference):
    output = np.asarray(output)
    assert output.shape == reference.shape
    scale = float(np.abs(reference).max())
    assert float(np.abs(output - reference).max()) <= 1e-4 * scale


@pytest.fixture
def served(tsfmd_server, tmp_path):
    missing = (
        "  timemoe-200m:\n"
        "    family: time-moe\n"
        "    source: Maple728/TimeMoE-200M\n"
    )
    return tsfmd_server(models_yaml(missing), extra_server=f"  state_dir: {tmp_path}\n")


@pytest.mark.parametrize("route", ["/ds_predict", "/timemoe-fc", "/timemoe"])
@pytest.mark.parametrize("horizon", [8, 96])
def test_answers_like_the_reference_service(served, route, horizon):
    reply = served.post(route, tdgpt_body(REFERENCE["short_input"][0], horizon))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "success"
    assert "lower" not in body and "upper" not in body  # no native intervals
    assert_matches(body["output"], REFERENCE[f"short_forecast_h{horizon}"][0])


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served):
    rows = REFERENCE["batch_input"]
    # Whether concurrent requests meet in the queue depends on when they arrive: on a busy
    # machine one wave may run one by one, so send waves until one shared a pass (bounded).
    for _ in range(5):
        with ThreadPoolExecutor(len(rows)) as pool:
            replies = list(pool.map(lambda r: served.post("/ds_predict", tdgpt_body(r, 24)),
                                    rows))
        for row, reply in enumerate(replies):
            assert reply.status_code == 200, reply.text
            assert_matches(reply.json()["output"], REFERENCE["batch_forecast_h24"][row])
        model = next(m for m in served.get("/v1/models").json()["models"]
                     if m["key"] == "timemoe-fc")
        if model["batching"]["largest_batch"] >= 2:
            break
    assert model["batching"]["largest_batch"] >= 2


def test_concurrent_requests_with_different_horizons_each_match_the_reference(served):
    """The first values depend on the whole horizon (the head is chosen by the steps
    left), so the batcher must not cut a 96-step generation down to 8 or 24 steps."""
    rows, horizons = REFERENCE["batch_input"], [8, 96, 24]
    with ThreadPoolExecutor(len(rows)) as pool:
        replies = list(pool.map(
            lambda rh: served.post("/timemoe", tdgpt_body(*rh)), zip(rows, horizons)
        ))
    for row, (reply, horizon) in enumerate(zip(replies, horizons)):
        assert reply.status_code == 200, reply.text
        assert_matches(reply.json()["output"], REFERENCE[f"batch_forecast_h{horizon}"][row])


def test_status_probe_and_a_model_without_weights(served):
    assert served.get("/ds_predict").status_code == 405  # TDgpt's probe: any answer is "up"
    models = {m["key"]: m for m in served.get("/v1/models").json()["models"]}
    assert models["timemoe-fc"]["status"] == "ready"
    assert models["timemoe-fc"]["point_forecast"] == "mean"
    assert models["timemoe-fc"]["context_limit"] == 4096
    assert models["timemoe-200m"]["status"] == "failed"
    assert models["timemoe-200m"]["reason"].startswith("weights not found")
    reply = served.post("/timemoe-200m", tdgpt_body(range(20), 4))
    assert reply.status_code == 503 and "weights not found" in reply.json()["error"]


def test_bad_input_is_a_clear_400(served):
    reply = served.post("/ds_predict", {"input": [1.0, "x"], "next_len": 3})
    assert reply.status_code == 400
    assert "'input'[1] must be a number" in reply.json()["error"]
    reply = served.post("/ds_predict", tdgpt_body(range(30), 5000))
    assert reply.status_code == 400 and "at most 2048" in reply.json()["error"]
