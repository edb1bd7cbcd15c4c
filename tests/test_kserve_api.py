"""KServe's open time-series protocol on a real tsfmd (waitress on loopback, real models).

Models: fracast (bundled weights, quantiles 0.1..0.9), a tiny TimesFM 2.5 from
tests/tinymodels.py (quantiles 0.1..0.9), the tiny Time-MoE checkpoint (point forecasts
only), and for overload and batching test_batching's SlowNaiveFamily, a real Family whose
first value says how many milliseconds it works.

Every answer is checked twice: against tsfmd's pydantic models of the protocol, and against
field names written out here by hand from KServe's own definitions in kserve/kserve
python/kserve/kserve/protocol/rest/timeseries/types.py (ForecastResponse, ForecastOutput,
TimeSeriesForecast, Usage, Error, ErrorResponse), so a drift in tsfmd's models shows.
KServe's own package (pip `kserve`) is not used: it pulls in about 30 packages (FastAPI,
uvicorn, grpcio, kubernetes, pandas, ...) and its data types cannot be imported without them.
"""
from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import pytest
import requests

import tinymodels
from conftest import FIXTURES, start_tsfmd, wait_until
from test_batching import batching_info, slow_family, slow_model  # noqa: F401
from tsfmd.api.kserve_schema import (
    KServeErrorResponse, KServeForecastResponse, KServeModelList,
)
from tsfmd.api.operations import operations

FORECAST = "/v1/timeseries/forecast"
MODELS = "/v1/timeseries/models"

# Field names of KServe's types.py, written out by hand (see the module docstring).
RESPONSE_FIELDS = {"id", "created_at", "status", "error", "model", "outputs", "usage"}
OUTPUT_FIELDS = {"type", "id", "status", "content", "error"}
FORECAST_FIELDS = {"type", "name", "mean_forecast", "frequency", "start_timestamp",
                   "quantiles"}
USAGE_FIELDS = {"prompt_tokens", "completion_tokens", "total_tokens"}
ERROR_FIELDS = {"code", "message", "param", "type"}
STATUSES = {"completed", "error", "pending", "partial"}  # KServe's Status enum

FRACAST_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("kserve")
    tfm = tinymodels.timesfm25(state / "tfm", context_length=256, horizon_length=32)
    models = f"""\
  fracast-fc:
    family: fracast
    source: bundled
    device: cpu
  tfm-tiny:
    family: timesfm-2.5
    source: {tfm}
    device: cpu
  tm-tiny:
    family: time-moe
    source: {FIXTURES / 'timemoe' / 'tiny'}
    dtype: float32
    device: cpu
  broken:
    family: time-moe
    source: {state / 'no-such-checkpoint'}
    required: false
"""
    running = start_tsfmd(state, models, extra_server=f"  state_dir: {state}\n")
    yield running
    running.stop()


def kserve_body(model, inputs, horizon, quantiles=None, **extra):
    options = {"horizon": horizon}
    if quantiles is not None:
        options["quantiles"] = quantiles
    return {"model": model, "inputs": inputs, "options": options, **extra}


def univariate(values, name="s0", frequency="H", start="2024-01-01T00:00:00Z"):
    series = {"type": "univariate_time_series", "name": name,
              "series": [float(v) for v in values], "frequency": frequency}
    if start is not None:
        series["start_timestamp"] = start
    return series


def forecast_ok(server, body) -> dict:
    """POST a KServe request; the 200 answer, checked field by field against KServe's
    schema (by hand) and parsed by tsfmd's models."""
    r = server.post(FORECAST, body)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    answer = r.json()
    assert set(answer) == RESPONSE_FIELDS
    assert answer["status"] in STATUSES and answer["model"] == body["model"]
    assert set(answer["usage"]) == USAGE_FIELDS
    uuid.UUID(answer["id"])
    assert abs(answer["created_at"] - time.time()) < 600
    for output in answer["outputs"]:
        assert set(output) == OUTPUT_FIELDS and output["type"] == "time_series_forecast"
        uuid.UUID(output["id"])
        for content in output["content"]:
            assert set(content) == FORECAST_FIELDS
    KServeForecastResponse.model_validate(answer)
    return answer


def error_of(r, status: int) -> dict:
    """An error answer in KServe's ErrorResponse shape with this status."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, body
    assert body["error"]["code"] == str(status)
    assert body["error"]["message"]
    KServeErrorResponse.model_validate(body)
    return body["error"]


def tdgpt(server, route, values, horizon, conf=None) -> dict:
    body = {"input": [float(v) for v in values], "next_len": horizon}
    if conf is not None:
        body["conf_interval"] = conf
    r = server.post(route, body)
    assert r.status_code == 200, r.text
    return r.json()


def content_of(answer, i=0) -> dict:
    output = answer["outputs"][i]
    assert output["status"] == "completed" and output["error"] is None
    assert len(output["content"]) == 1
    return output["content"][0]


def test_a_kserve_request_is_answered_in_kserve_schema(server):
    values = tinymodels.series(48, seed=1)
    body = kserve_body("fracast-fc", [univariate(values, name="cpu.load")], 12,
                       quantiles=[0.1, 0.5, 0.9], metadata={"caller": "test"})
    answer = forecast_ok(server, body)
    assert answer["status"] == "completed" and answer["error"] is None
    assert len(answer["outputs"]) == 1
    content = content_of(answer)
    assert content["type"] == "univariate_time_series" and content["name"] == "cpu.load"
    assert content["frequency"] == "H"
    assert content["start_timestamp"] == "2024-01-03T00:00:00Z"  # 48 hours after the start
    assert set(content["quantiles"]) == {"0.1", "0.5", "0.9"}
    assert all(len(q) == 12 for q in content["quantiles"].values())
    lower, median, upper = (np.array(content["quantiles"][k]) for k in ("0.1", "0.5", "0.9"))
    assert np.all(lower <= median) and np.all(median <= upper)
    # the point forecast is TDgpt's `output` for the same series (the median)
    reference = tdgpt(server, "/fracast-fc", values, 12)
    np.testing.assert_allclose(content["mean_forecast"], reference["output"], rtol=1e-6)
    np.testing.assert_allclose(median, content["mean_forecast"], rtol=1e-9)
    assert answer["usage"] == {"prompt_tokens": 48, "completion_tokens": 12,
                               "total_tokens": 60}


def test_models_lists_the_ready_models(server):
    r = server.get(MODELS)
    assert r.status_code == 200
    # KServe answers the bare names of its loaded models: "broken" failed to load
    assert r.json() == ["fracast-fc", "tfm-tiny", "tm-tiny"]
    KServeModelList.model_validate(r.json())
    error = error_of(requests.post(server.url + MODELS, timeout=30), 405)
    assert error["type"] == "method_not_allowed"
    documented = {(op.method, op.path) for op in operations() if op.tag == "kserve"}
    assert documented == {("post", FORECAST), ("get", MODELS)}


@pytest.mark.parametrize("model,route", [("fracast-fc", "/fracast-fc"),
                                         ("tfm-tiny", "/tfm-tiny")])
def test_many_series_each_as_tdgpt_answers_it_alone(server, model, route):
    rng = np.random.default_rng(5)
    lengths = rng.integers(20, 300, size=32)
    frequencies = ["H", "D", "W", "month", "T", "quarter", "Y", "S"]
    inputs = [univariate(tinymodels.series(int(n), seed=i, level=10.0 * i), name=f"s{i}",
                         frequency=frequencies[i % len(frequencies)],
                         start=None if i == 3 else "2024-01-31T00:00:00Z")
              for i, n in enumerate(lengths)]
    answer = forecast_ok(server, kserve_body(model, inputs, 20, quantiles=[0.2, 0.8]))
    assert answer["status"] == "completed" and len(answer["outputs"]) == 32
    for i, series in enumerate(inputs):
        content = content_of(answer, i)
        assert content["name"] == f"s{i}" and content["frequency"] == series["frequency"]
        alone = tdgpt(server, route, series["series"], 20, conf=0.6)  # band 0.2..0.8
        np.testing.assert_allclose(content["mean_forecast"], alone["output"], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(content["quantiles"]["0.2"], alone["lower"], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(content["quantiles"]["0.8"], alone["upper"], rtol=1e-5,
                                   atol=1e-6)
    starts = [content_of(answer, i)["start_timestamp"] for i in range(4)]
    n = [int(x) for x in lengths[:4]]
    expected_hour = np.datetime64("2024-01-31T00:00") + np.timedelta64(n[0], "h")
    assert starts[0] == str(expected_hour) + ":00Z"
    expected_day = np.datetime64("2024-01-31") + np.timedelta64(n[1], "D")
    assert starts[1] == f"{expected_day}T00:00:00Z"
    expected_week = np.datetime64("2024-01-31") + np.timedelta64(7 * n[2], "D")
    assert starts[2] == f"{expected_week}T00:00:00Z"
    assert starts[3] == ""  # no start_timestamp in, none can be given out
    assert answer["usage"]["completion_tokens"] == 32 * 20


@pytest.mark.parametrize("model", ["fracast-fc", "tfm-tiny"])
def test_quantiles_beyond_the_native_grid_are_served(server, model):
    values = tinymodels.series(120, seed=3)
    levels = [0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.75, 0.9, 0.95, 0.975, 0.99]
    answer = forecast_ok(server, kserve_body(model, [univariate(values)], 16,
                                             quantiles=levels))
    got = content_of(answer)["quantiles"]
    assert list(got) == [str(level) for level in levels]
    curve = np.array([got[str(level)] for level in levels])
    assert np.all(np.diff(curve, axis=0) >= -1e-9)  # quantiles never cross
    # beyond 0.1..0.9 the tails keep widening (a clamp would repeat the edge quantile)
    assert np.all(curve[0] < curve[3]) and np.all(curve[-1] > curve[-4])
    # inside the grid: linear in the level between native neighbours
    np.testing.assert_allclose(got["0.25"], (np.array(got["0.2"]) + got["0.3"]) / 2,
                               rtol=1e-9, atol=1e-9)
    # outside it: the same tail TDgpt's 95% band is made of
    band = tdgpt(server, f"/{model}", values, 16, conf=0.95)
    np.testing.assert_allclose(got["0.025"], band["lower"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["0.975"], band["upper"], rtol=1e-5, atol=1e-6)


def test_a_point_model_forecasts_points_and_refuses_quantiles(server):
    values = tinymodels.series(64, seed=4)
    answer = forecast_ok(server, kserve_body("tm-tiny", [univariate(values)], 8))
    content = content_of(answer)
    assert content["quantiles"] is None
    np.testing.assert_allclose(content["mean_forecast"],
                               tdgpt(server, "/tm-tiny", values, 8)["output"], rtol=1e-5)
    r = server.post(FORECAST, kserve_body("tm-tiny", [univariate(values)], 8,
                                          quantiles=[0.1, 0.9]))
    error = error_of(r, 400)
    assert error["type"] == "invalid_quantile" and error["param"] == "options.quantiles"
    assert "point forecasts only" in error["message"]


def test_an_unknown_model_is_404_naming_the_served_ones(server):
    r = server.post(FORECAST, kserve_body("timesfm", [univariate(range(20))], 4))
    error = error_of(r, 404)
    assert error["type"] == "model_not_found" and error["param"] == "model"
    assert "fracast-fc" in error["message"] and "'timesfm'" in error["message"]


def test_a_model_that_failed_to_load_is_503_not_ready(server):
    r = server.post(FORECAST, kserve_body("broken", [univariate(range(20))], 4))
    error = error_of(r, 503)
    assert error["type"] == "model_not_ready" and "broken" in error["message"]


def _body(**changes):
    body = kserve_body("fracast-fc", [univariate(tinymodels.series(40))], 6)
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DROP:
            del target[last]
        else:
            target[last] = value
    return body


_DROP = object()
BAD_INPUT = [
    # (what, body, type, param) -- each a 400
    ("unknown frequency", _body(inputs__0__frequency="fortnight"), "invalid_frequency",
     "inputs[0].frequency"),
    ("horizon 0", _body(options__horizon=0), "invalid_horizon", "options.horizon"),
    ("horizon beyond the model", _body(options__horizon=5000), "invalid_horizon",
     "options.horizon"),
    ("horizon a word", _body(options__horizon="six"), "invalid_horizon", "options.horizon"),
    ("quantile above 1", _body(options__quantiles=[0.5, 1.5]), "invalid_quantile",
     "options.quantiles"),
    ("quantile a word", _body(options__quantiles=["median"]), "invalid_quantile",
     "options.quantiles[0]"),
    ("multivariate", _body(inputs__0__type="multivariate_time_series",
                           inputs__0__series=[[1.0, 2.0]] * 20),
     "unsupported_time_series_type", "inputs[0].type"),
    ("rows in a univariate series", _body(inputs__0__series=[[1.0, 2.0]] * 20),
     "BadRequestError", "inputs[0].series"),
    ("a word in the series", _body(inputs__0__series=[1.0] * 10 + ["x"]), "BadRequestError",
     "inputs[0].series[10]"),
    ("too short for the model", _body(inputs__0__series=[1.0, 2.0, 3.0]), "BadRequestError",
     "inputs[0].series"),
    ("not a time", _body(inputs__0__start_timestamp="yesterday"), "BadRequestError",
     "inputs[0].start_timestamp"),
    ("no name", _body(inputs__0__name=_DROP), "BadRequestError", "inputs[0].name"),
    ("no options", _body(options=_DROP), "BadRequestError", "options"),
    ("no model", _body(model=_DROP), "BadRequestError", "model"),
    ("no series at all", _body(inputs=[]), "BadRequestError", "inputs"),
    ("a list for a body", [1, 2, 3], "BadRequestError", ""),
]


@pytest.mark.parametrize("what,body,kind,param", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_400_in_kserve_error_shape(server, what, body, kind, param):
    error = error_of(server.post(FORECAST, body), 400)
    assert (error["type"], error["param"]) == (kind, param), error


@pytest.mark.parametrize("raw,says", [
    (b"", "the body is empty"),
    (b"{not json", "not valid JSON"),
    (json.dumps(_body())[:-1].encode() + b', "x": NaN}', None),  # an extra field is fine
    (json.dumps(_body()).replace('"series": [', '"series": [NaN, ').encode(), "not finite"),
])
def test_bodies_that_are_not_kserve_json(server, raw, says):
    r = requests.post(server.url + FORECAST, data=raw, timeout=60,
                      headers={"Content-Type": "application/json"})
    if says is None:
        assert r.status_code == 200, r.text
        return
    assert says in error_of(r, 400)["message"]


def test_get_on_forecast_is_405_with_allow(server):
    r = server.get(FORECAST)
    assert error_of(r, 405)["type"] == "method_not_allowed"
    assert r.headers["Allow"] == "POST"


def test_a_compressed_body_is_415_in_kserve_error_shape(server):
    r = requests.post(server.url + FORECAST, data=b"\x1f\x8b...", timeout=30,
                      headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert "gzip" in error_of(r, 415)["message"]


def test_one_failing_series_fails_only_its_own_output(server):
    good = univariate(tinymodels.series(100, seed=2), name="good")
    # finite for the model, beyond float64 once scaled back (as tests/test_numbers.py)
    huge = univariate(np.linspace(1.0e308, 1.79e308, 100), name="huge")
    answer = forecast_ok(server, kserve_body("fracast-fc", [good, huge], 8))
    assert answer["status"] == "partial"
    assert content_of(answer, 0)["name"] == "good"
    failed = answer["outputs"][1]
    assert failed["status"] == "error" and failed["content"] == []
    assert set(failed["error"]) == ERROR_FIELDS and failed["error"]["code"] == "400"
    assert failed["error"]["param"] == "inputs[1]"
    assert "beyond the range of a 64-bit float" in failed["error"]["message"]
    assert answer["usage"]["completion_tokens"] == 8
    # every series failing: the answer is that error
    r = server.post(FORECAST, kserve_body("fracast-fc", [huge, huge], 8))
    assert "64-bit float" in error_of(r, 400)["message"]


def test_series_of_one_request_share_the_batcher(tmp_path, slow_family):  # noqa: F811
    running = start_tsfmd(tmp_path, slow_model("slow", max_batch=8, max_wait_ms=2000))
    try:
        # each series: 300 ms of work, then its last value is the forecast
        inputs = [univariate([300.0, float(i)], name=f"s{i}") for i in range(8)]
        answer = forecast_ok(running, kserve_body("slow", inputs, 3))
        for i in range(8):
            assert content_of(answer, i)["mean_forecast"][0] == pytest.approx(i)
        calls = running.daemon.models.table.handles["slow"].model.calls
        assert sum(size for size, _ in calls if size) >= 8
        assert max(size for size, _ in calls) > 1, calls  # not one forward pass per series
    finally:
        running.stop()


def test_overload_is_503_with_retry_after(tmp_path, slow_family):  # noqa: F811
    # admission lets the model hold queue_size + max_batch = 2 requests at once
    running = start_tsfmd(tmp_path, slow_model("slow", max_batch=1, queue_size=1))
    blockers = []
    try:
        def hold(work_ms):
            running.post("/slow", {"input": [work_ms, 1.0], "next_len": 1})

        blockers.append(threading.Thread(target=hold, args=(3000.0,)))
        blockers[-1].start()
        wait_until(lambda: batching_info(running, "slow")["running"] == 1)
        blockers.append(threading.Thread(target=hold, args=(1.0,)))
        blockers[-1].start()
        wait_until(lambda: batching_info(running, "slow")["queue_depth"] == 1)
        r = running.post(FORECAST, kserve_body("slow", [univariate([1.0, 2.0])], 1))
        error = error_of(r, 503)
        assert error["type"] == "overloaded" and "busy" in error["message"]
        assert int(r.headers["Retry-After"]) >= 1
    finally:
        for thread in blockers:
            thread.join(timeout=60)
        running.stop()


@pytest.mark.parametrize("start,frequency,points,expected", [
    ("2024-01-31T00:00:00Z", "M", 1, "2024-02-29T00:00:00Z"),  # the day clamped, as KServe
    ("2024-01-31T00:00:00Z", "quarter", 1, "2024-04-30T00:00:00Z"),
    ("2024-02-29T12:00:00Z", "Y", 1, "2025-02-28T12:00:00Z"),
    ("2024-11-30T00:00:00Z", "month", 3, "2025-02-28T00:00:00Z"),
    ("2024-01-01T00:00:00+02:00", "T", 90, "2024-01-01T01:30:00+02:00"),  # offset kept
    ("2024-01-01T00:00:00", "S", 61, "2024-01-01T00:01:01"),  # no zone in, none out
    ("2024-01-01", "D", 366, "2025-01-01T00:00:00"),
    (None, "H", 10, ""),
])
def test_the_forecast_starts_one_step_after_the_last_point(start, frequency, points,
                                                           expected):
    from tsfmd.api.kserve import start_of_forecast

    assert start_of_forecast(start, frequency, points, "inputs[0].start_timestamp") == expected


def test_a_start_beyond_the_calendar_is_bad_input():
    from tsfmd.api.kserve import start_of_forecast
    from tsfmd.core.errors import BadInput

    with pytest.raises(BadInput) as refused:
        start_of_forecast("9999-12-01T00:00:00Z", "Y", 2, "inputs[0].start_timestamp")
    assert refused.value.field == "inputs[0].start_timestamp"
