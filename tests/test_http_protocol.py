"""TDgpt's protocol over real HTTP: forecasts, every kind of bad input, and the status routes.

One real tsfmd (waitress on a loopback port) serves the bundled fracast model, a second
entry whose weights do not exist, and a third with a dtype fracast cannot run.
"""
import json
import math

import numpy as np
import pytest
import requests

from conftest import start_tsfmd

MODELS = """\
  fracast-fc:
    family: fracast
    source: bundled
    aliases: [/ds_predict]
    horizon_limit: 200
  broken-fc:
    family: fracast
    source: /nonexistent/weights/dir
  bad-dtype-fc:
    family: fracast
    source: bundled
    dtype: bfloat16
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_tsfmd(
        tmp_path_factory.mktemp("http"), MODELS, extra_server="  max_request_bytes: 60000\n"
    )
    yield running
    running.stop()


def series(n=200, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (10 + 0.05 * t + 3 * np.sin(t / 6) + rng.normal(0, 0.3, n)).round(4).tolist()


def error_of(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    return body["error"]


# -- forecasts that work -------------------------------------------------------------------


def test_forecast_with_interval(server):
    r = server.post("/fracast-fc", {"input": series(), "next_len": 24, "conf_interval": 0.9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success"
    out, low, up = (np.array(body[k]) for k in ("output", "lower", "upper"))
    assert out.shape == low.shape == up.shape == (24,)
    assert np.isfinite(out).all() and np.isfinite(low).all() and np.isfinite(up).all()
    assert (low <= out).all() and (out <= up).all()
    assert (up - low).mean() > 0
    # The history trends upward around 10..20: a sane forecast stays in that region.
    assert 5 < out.mean() < 30


def test_wider_confidence_gives_wider_band(server):
    body = {"input": series(), "next_len": 12}
    narrow = server.post("/fracast-fc", dict(body, conf_interval=0.8)).json()
    wide = server.post("/fracast-fc", dict(body, conf_interval=0.95)).json()
    width = lambda b: np.array(b["upper"]) - np.array(b["lower"])  # noqa: E731
    assert (width(wide) >= width(narrow)).all()
    assert width(wide).sum() > width(narrow).sum()
    assert wide["output"] == narrow["output"]


def test_without_conf_interval_only_output(server):
    body = server.post("/fracast-fc", {"input": series(), "next_len": 5}).json()
    assert len(body["output"]) == 5 and "lower" not in body and "upper" not in body


def test_alias_route_answers_like_the_main_route(server):
    body = {"input": series(), "next_len": 6, "conf_interval": 0.95}
    assert server.post("/ds_predict", body).json() == server.post("/fracast-fc", body).json()


def test_tdgpt_fields_are_accepted(server):
    data = series(100)
    body = {
        "input": data, "next_len": 10, "ts": list(range(1000, 1100)),
        "past_dynamic_real": [], "dynamic_real": [], "conf_interval": 0.95,
    }
    reply = server.post("/fracast-fc", body)
    assert reply.status_code == 200 and len(reply.json()["upper"]) == 10


def test_long_input_keeps_most_recent_points_and_says_so(server):
    data = series(3000)
    reply = server.post("/fracast-fc", {"input": data, "next_len": 4}).json()
    assert "kept the most recent 2048" in reply["notes"][0]
    tail = server.post("/fracast-fc", {"input": data[-2048:], "next_len": 4}).json()
    assert reply["output"] == tail["output"]


def test_missing_values_are_filled_and_reported(server):
    data = series(100)
    gappy = list(data)
    gappy[40] = None
    gappy[41] = None
    reply = server.post("/fracast-fc", {"input": gappy, "next_len": 4})
    assert reply.status_code == 200
    assert "filled 2 missing input value(s) at positions [40, 41]" in reply.json()["notes"][0]
    # NaN literals (Python's json accepts them) are treated as missing too.
    raw = json.dumps({"input": data[:50] + [float("nan")] + data[51:], "next_len": 3})
    reply = requests.post(server.url + "/fracast-fc", data=raw, timeout=30)
    assert reply.status_code == 200 and "filled 1" in reply.json()["notes"][0]


# -- bad input: a 4xx that says what is wrong, and the daemon keeps serving -----------------

BAD_BODIES = [
    ({"next_len": 5}, "missing field 'input'"),
    ({"input": series()}, "missing field 'next_len'"),
    ({"input": series(), "next_len": 0}, "rows (next_len) must be a positive integer, got 0"),
    ({"input": series(), "next_len": -3}, "must be a positive integer"),
    ({"input": series(), "next_len": 2.5}, "must be a positive integer, got 2.5"),
    ({"input": series(), "next_len": "10"}, "must be a positive integer, got a string"),
    ({"input": series(), "next_len": True}, "must be a positive integer, got a boolean"),
    ({"input": series(), "next_len": 500}, "forecasts at most 200 points"),
    ({"input": [], "next_len": 5}, "'input' is empty"),
    ({"input": "1,2,3", "next_len": 5}, "'input' must be a list of numbers, got a string"),
    ({"input": [1, 2, 3], "next_len": 5}, "needs at least 8"),
    ({"input": [1, 2, "x"] + series(20), "next_len": 5}, "'input'[2] must be a number"),
    ({"input": [1, True] + series(20), "next_len": 5}, "'input'[1] must be a number"),
    ({"input": [None] * 30, "next_len": 5}, "every value is null or NaN"),
    ({"input": [None] * 10 + series(20), "next_len": 5}, "fills at most 10%"),
    ({"input": series(20), "next_len": 5, "conf_interval": 1.5},
     "conf (conf_interval) must be between"),
    ({"input": series(20), "next_len": 5, "conf_interval": 0}, "conf (conf_interval) must be between"),
    ({"input": series(20), "next_len": 5, "conf_interval": "95%"},
     "conf (conf_interval) must be a number"),
    ({"input": series(20), "next_len": 5, "ts": [1, 2]}, "'ts' has 2 timestamps but 'input' has 20"),
    ({"input": series(20), "next_len": 5, "past_dynamic_real": [series(20)]}, "cannot use covariates"),
    ({"input": series(20), "next_len": 5, "dynamic_real": [series(25)]}, "cannot use covariates"),
    ({"input": series(20), "next_len": 5, "dynamic_real": "x"}, "must be a list of lists"),
    ([1, 2, 3], "the body must be a JSON object, got a list"),
    ("hello", "the body must be a JSON object, got a string"),
]


@pytest.mark.parametrize("body,message", BAD_BODIES, ids=[m for _, m in BAD_BODIES])
def test_bad_body_is_400_with_message(server, body, message):
    assert message in error_of(server.post("/fracast-fc", body), 400)


def test_infinite_value_is_refused(server):
    raw = json.dumps({"input": series(20) + [math.inf], "next_len": 3})
    message = error_of(requests.post(server.url + "/fracast-fc", data=raw, timeout=30), 400)
    assert "infinite values at positions [20]" in message


def test_body_not_json(server):
    reply = requests.post(server.url + "/fracast-fc", data="{input: [1,2", timeout=30)
    assert "not valid JSON" in error_of(reply, 400)
    assert "body is empty" in error_of(requests.post(server.url + "/fracast-fc", timeout=30), 400)


def test_body_over_size_limit_is_413(server):
    big = json.dumps({"input": [1.0] * 20000, "next_len": 3})
    assert len(big) > 60000
    reply = requests.post(server.url + "/fracast-fc", data=big, timeout=30)
    assert "larger than the server's limit of 60000 bytes" in error_of(reply, 413)


def test_unknown_route_is_404_listing_routes(server):
    message = error_of(server.post("/nope", {"input": [1], "next_len": 1}), 404)
    assert "no model is served at /nope" in message and "/fracast-fc" in message


def test_get_on_model_route_is_405_like_the_reference(server):
    reply = server.get("/fracast-fc")
    assert "POST a JSON forecast request" in error_of(reply, 405)
    assert reply.headers["Allow"] == "POST"


def test_daemon_keeps_serving_after_bad_requests(server):
    for body, _ in BAD_BODIES[:5]:
        server.post("/fracast-fc", body)
    assert server.post("/fracast-fc", {"input": series(), "next_len": 3}).status_code == 200


# -- a failed model beside a serving one ----------------------------------------------------


def test_failed_model_answers_503_with_reason(server):
    message = error_of(server.post("/broken-fc", {"input": series(), "next_len": 3}), 503)
    assert "broken-fc is not available" in message
    assert "weights not found at /nonexistent/weights/dir" in message
    message = error_of(server.post("/bad-dtype-fc", {"input": series(), "next_len": 3}), 503)
    assert "float32 only, not bfloat16" in message


def test_v1_models_reports_every_model(server):
    models = {m["key"]: m for m in server.get("/v1/models").json()["models"]}
    assert set(models) == {"fracast-fc", "broken-fc", "bad-dtype-fc"}
    good = models["fracast-fc"]
    assert good["status"] == "ready" and good["family"] == "fracast"
    assert good["routes"] == ["/fracast-fc", "/ds_predict"]
    assert good["context_limit"] == 2048 and good["horizon_limit"] == 200
    assert good["intervals"] is True and good["quantile_levels"][0] == pytest.approx(0.1)
    assert models["broken-fc"]["status"] == "failed"
    assert "weights not found" in models["broken-fc"]["reason"]


def test_healthz_and_readyz(server):
    assert server.get("/healthz").json() == {"status": "ok"}
    ready = server.get("/readyz")
    assert ready.status_code == 503
    not_ready = ready.json()["not_ready"]
    assert set(not_ready) == {"broken-fc", "bad-dtype-fc"}
    assert not_ready["broken-fc"].startswith("failed: weights not found")


def test_readyz_200_when_all_ready(tsfmd_server):
    only_good = tsfmd_server("  fracast-fc:\n    family: fracast\n    source: bundled\n")
    reply = only_good.get("/readyz")
    assert reply.status_code == 200 and reply.json()["models"] == ["fracast-fc"]
