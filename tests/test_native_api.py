"""The native API (POST /v1/models/{key}/forecast, Amazon's Chronos-2 endpoint payload) over
real HTTP against a real tsfmd: the same numbers as TDgpt's route, series by series; the
endpoint's echo of item_id and start; covariates by name on a tiny Chronos-2; and every
error as application/problem+json naming the field that is wrong.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests

import tinymodels
from conftest import start_tsfmd
from test_batching import SLOW_FAMILY
from tsfmd import families

PROBLEM = "application/problem+json"
LEVELS = [0.025, 0.1, 0.5, 0.9, 0.975]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    c2 = tinymodels.chronos2(root / "c2")
    families.register_family(SLOW_FAMILY, "test_batching:SlowNaiveFamily")
    models = f"""\
  fracast-fc:
    family: fracast
    source: bundled
    device: cpu
  c2-t:
    family: chronos-2
    source: {c2}
    device: cpu
  slow:
    family: {SLOW_FAMILY}
    source: none
    device: cpu
    batching:
      max_batch: 1
      max_wait_ms: 0
      timeout_s: 0.5
  missing:
    family: chronos-2
    source: {root / 'nothing-here'}
    required: false
"""
    running = start_tsfmd(root, models, extra_server=f"  state_dir: {root}\n")
    yield running
    running.stop()
    families._FAMILIES.pop(SLOW_FAMILY, None)


def native(server, key, body):
    return requests.post(f"{server.url}/v1/models/{key}/forecast", json=body, timeout=120)


def ok(server, key, body) -> dict:
    r = native(server, key, body)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    return r.json()


def forecasts(server, key) -> int:
    models = server.get("/v1/models").json()["models"]
    return next(m for m in models if m["key"] == key)["batching"]["forecasts"]


def test_32_series_give_tdgpts_numbers(server):
    rng = np.random.default_rng(12)
    lengths = rng.integers(8, 400, size=32)
    targets = [list(tinymodels.series(int(n), seed=i, level=float(rng.uniform(-50, 500))))
               for i, n in enumerate(lengths)]
    horizon = 12
    before = forecasts(server, "fracast-fc")
    answer = ok(server, "fracast-fc", {
        "inputs": [{"target": t, "item_id": f"s{i}"} for i, t in enumerate(targets)],
        "parameters": {"prediction_length": horizon, "quantile_levels": LEVELS}})
    # all 32 went through the model's batcher, one forecast each
    assert forecasts(server, "fracast-fc") - before == 32
    assert len(answer["predictions"]) == 32
    for i, (target, got) in enumerate(zip(targets, answer["predictions"])):
        assert got["item_id"] == f"s{i}"
        assert set(got) == {"mean", "item_id", *map(str, LEVELS)}
        for conf, low, high in ((0.8, "0.1", "0.9"), (0.95, "0.025", "0.975")):
            band = tinymodels.forecast_ok(server, "/fracast-fc", {
                "input": target, "next_len": horizon, "conf_interval": conf})
            # `mean` is the median, as Amazon's endpoint answers for Chronos models
            for key in ("0.5", "mean"):
                np.testing.assert_allclose(got[key], band["output"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got[low], band["lower"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got[high], band["upper"], rtol=1e-5, atol=1e-6)
        assert len(got["mean"]) == horizon


def test_defaults_and_the_endpoints_echo_of_item_id_and_start(server):
    body = {"inputs": [
        {"target": [1.0, 2.0, 3.0, 2.0, 0.5, 2.0, 3.0, 2.0, 1.0], "item_id": "product_A",
         "start": "2024-01-01T01:00:00"},
        {"target": [5.4, 3.0, 3.0, 2.0, 1.5, 2.0, -1.0, 0.0], "item_id": "product_B",
         "start": "2024-02-02"},
    ], "parameters": {"prediction_length": 5, "freq": "1h", "batch_size": 2}}
    first, second = ok(server, "fracast-fc", body)["predictions"]
    # default levels [0.1, 0.5, 0.9]; start moves to the first forecast step
    assert list(first) == ["mean", "0.1", "0.5", "0.9", "item_id", "start"]
    assert first["start"] == "2024-01-01T10:00:00"
    assert second["start"] == "2024-02-02T08:00:00"
    assert first["item_id"] == "product_A" and len(first["0.9"]) == 5
    assert all(lo <= mid <= hi for lo, mid, hi in zip(first["0.1"], first["0.5"], first["0.9"]))
    plain = ok(server, "fracast-fc", {"inputs": [{"target": body["inputs"][0]["target"]}]})
    only = plain["predictions"][0]
    assert set(only) == {"mean", "0.1", "0.5", "0.9"} and len(only["mean"]) == 1


def test_missing_target_values_are_filled_and_noted(server):
    target = list(tinymodels.series(40))
    target[7] = None
    answer = ok(server, "fracast-fc", {"inputs": [{"target": target}]})
    assert any(n.startswith("inputs[0]: filled 1 missing") for n in answer["notes"])


def c2_body(past, future, horizon=4, n=48):
    return {"inputs": [{"target": list(tinymodels.series(n, seed=3)), "past_covariates": past,
                        "future_covariates": future}],
            "parameters": {"prediction_length": horizon, "quantile_levels": [0.1, 0.5, 0.9]}}


def test_covariates_by_name_reach_chronos2_as_tdgpts_rows(server):
    rng = np.random.default_rng(5)
    n, h = 48, 4
    a, b, k = (list(rng.normal(size=n)) for _ in range(3))
    k_future = list(rng.normal(size=h))
    target = list(tinymodels.series(n, seed=3))
    # names in any order map to rows by sorted name: past-only a, b; known-future k
    got = ok(server, "c2-t", c2_body({"k": k, "b": b, "a": a}, {"k": k_future}))
    swapped = ok(server, "c2-t", c2_body({"a": a, "k": k, "b": b}, {"k": k_future}))
    assert got["predictions"] == swapped["predictions"]
    tdgpt = tinymodels.forecast_ok(server, "/c2-t", {
        "input": target, "next_len": h, "past_dynamic_real": [a, b],
        "dynamic_real": [k + k_future]})
    np.testing.assert_allclose(got["predictions"][0]["0.5"], tdgpt["output"], rtol=1e-5,
                               atol=1e-6)
    without = ok(server, "c2-t", c2_body(None, None))
    assert not np.allclose(without["predictions"][0]["0.5"], got["predictions"][0]["0.5"])


def problem_of(response, status, field=None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    assert problem["type"].startswith("/docs#problem-")
    assert problem.get("field") == field, problem
    return problem


@pytest.mark.parametrize("body, field, words", [
    ({"inputs": [{"target": list(range(30))}] * 3 + [{"target": [1.0] * 17 + ["x"]}]},
     "inputs[3].target[17]", "valid number"),
    ({"inputs": []}, "inputs", "at least 1"),
    ({"inputs": [{"target": [1.0] * 20}], "parameters": {"prediction_length": 0}},
     "parameters.prediction_length", "greater than or equal to 1"),
    ({"inputs": [{"target": [1.0] * 20}], "parameters": {"prediction_length": 10 ** 6}},
     "parameters.prediction_length", "at most"),
    ({"inputs": [{"target": [1.0] * 20}], "parameters": {"quantile_levels": [0.5, 1.0]}},
     "parameters.quantile_levels[1]", "(0, 1)"),
    ({"inputs": [{"target": [1.0] * 20}], "parametres": {}}, "parametres", "not a field"),
    ({"inputs": [{"target": [1.0] * 4}]}, "inputs[0].target", "at least 8"),
    ({"inputs": [{"target": [1.0] * 20, "item_id": "a"}, {"target": [2.0] * 20,
                                                          "item_id": "a"}]},
     "inputs[1].item_id", "unique"),
    ({"inputs": [{"target": [1.0] * 20, "start": "2024-01-01"}]}, "parameters.freq",
     "freq is needed"),
    ({"inputs": [{"target": [1.0] * 20}], "parameters": {"freq": "1h"}}, "inputs[0].start",
     "start is needed"),
    ({"inputs": [{"target": [1.0] * 20, "start": "yesterday"}], "parameters": {"freq": "D"}},
     "inputs[0].start", "ISO timestamp"),
    ({"inputs": [{"target": [1.0] * 20, "start": "2024-01-01"}],
      "parameters": {"freq": "MS"}}, "parameters.freq", "fixed-length"),
    ({"inputs": [{"target": [1.0] * 20, "past_covariates": {"x": [1.0] * 20}}]},
     "inputs[0].past_covariates", "takes no past covariates"),
    ({"inputs": [{"target": [True] * 20}]}, "inputs[0].target[0]", "valid number"),
])
def test_bad_requests_name_the_field(server, body, field, words):
    problem = problem_of(native(server, "fracast-fc", body), 400, field)
    assert words in problem["detail"], problem


@pytest.mark.parametrize("past, future, field, words", [
    ({"a": [1.0] * 48}, {"b": [1.0] * 4}, "inputs[0].future_covariates.b", "past values"),
    ({"a": [1.0] * 47}, None, "inputs[0].past_covariates.a", "len(target) (48)"),
    ({"a": [1.0] * 48}, {"a": [1.0] * 3}, "inputs[0].future_covariates.a",
     "prediction_length (4)"),
    ({"a": ["A"] * 48}, None, "inputs[0].past_covariates.a[0]", "categorical"),
])
def test_covariate_mistakes_name_the_covariate(server, past, future, field, words):
    problem = problem_of(native(server, "c2-t", c2_body(past, future)), 400, field)
    assert words in problem["detail"], problem


def test_bad_json_unknown_key_wrong_method_and_encoding(server):
    url = f"{server.url}/v1/models/fracast-fc/forecast"
    broken = requests.post(url, data=b'{"inputs": [', timeout=30)
    assert "not valid JSON" in problem_of(broken, 400)["detail"]
    unknown = native(server, "no-such-model", {"inputs": [{"target": [1.0] * 20}]})
    assert "fracast-fc" in problem_of(unknown, 404)["detail"]
    wrong = requests.get(url, timeout=30)
    problem_of(wrong, 405)
    assert wrong.headers["Allow"] == "POST"
    packed = requests.post(url, data=b"\x1f\x8b", headers={"Content-Encoding": "gzip"},
                           timeout=30)
    assert "gzip" in problem_of(packed, 415)["detail"]


def test_unavailable_and_overloaded_answer_503_with_retry_after(server):
    body = {"inputs": [{"target": [1.0] * 20}]}
    failed = native(server, "missing", body)
    assert "not available" in problem_of(failed, 503)["detail"]
    assert int(failed.headers["Retry-After"]) >= 1
    # Hold every admission slot of the model, as concurrent requests would: a request of
    # many series then gets 503 at once, before any of its series runs (no partial answer).
    handle = server.daemon.models.table.handles["fracast-fc"]
    flask_app = server.daemon.inflight.app.__self__  # InFlight wraps app.wsgi_app
    app_admission = flask_app.extensions["tsfmd.admission"]
    tickets = [app_admission.enter("fracast-fc", handle.executor)
               for _ in range(app_admission.limit(handle.executor))]
    try:
        before = forecasts(server, "fracast-fc")
        busy = native(server, "fracast-fc", {"inputs": [{"target": [1.0] * 20}] * 5})
        assert "busy" in problem_of(busy, 503)["detail"]
        assert int(busy.headers["Retry-After"]) >= 1
        assert forecasts(server, "fracast-fc") == before
    finally:
        for ticket in tickets:
            ticket.release()
    assert native(server, "fracast-fc", {"inputs": [{"target": [1.0] * 20}] * 5}).ok


def test_deadline_answers_504(server):
    # the slow test family sleeps target[0] ms: 1500 ms runs past timeout_s 0.5
    late = native(server, "slow", {"inputs": [{"target": [1500.0] + [1.0] * 7}]})
    assert "timeout_s 0.5" in problem_of(late, 504)["detail"]


def test_errors_elsewhere_keep_tdgpts_json(server):
    r = server.post("/fracast-fc", {"input": [1.0] * 20})
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/json"
    assert json.loads(r.text)["status"] == "error"
