"""TDgpt's imputation on a model's route: the wire format, the core path, the errors.

MOMENT itself runs only in its own environment (tests/test_imputation_moment.py). Here a
small real imputation family registered by the test, linear interpolation, stands in for
it, so the route, the time grid, admission and the model's one-at-a-time gate are tested
in this process through a real daemon over real HTTP, beside a real fracast.
"""
from __future__ import annotations

import threading
from typing import List, Sequence

import numpy as np
import pytest
import requests

from tsfmd import families
from tsfmd.api.imputation import parse_body
from tsfmd.core.errors import BadInput
from tsfmd.families.base import Capabilities, Family, Forecast, LoadSpec, UnsupportedInput

from conftest import start_tsfmd

LINEAR, GATED, BROKEN = "test-linear-fill", "test-gated-fill", "test-broken-fill"
#: the gated family holds the model until the test lets it go
ENTERED, RELEASE = threading.Event(), threading.Event()
CALLS: List[int] = []


class LinearFillFamily(Family):
    """Fills each gap on the straight line between its observed neighbours."""

    name = LINEAR
    option_values = {}

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        pass

    @classmethod
    def load(cls, spec: LoadSpec) -> "LinearFillFamily":
        return cls()

    def capabilities(self) -> Capabilities:
        return Capabilities(context_limit=512, horizon_limit=0, min_context=2,
                            tasks=("impute",))

    def forecast(self, batch: Sequence, horizon: int) -> Forecast:
        raise UnsupportedInput("imputes only")

    def impute(self, batch: Sequence[np.ndarray]) -> List[np.ndarray]:
        CALLS.append(len(batch))
        answers = []
        for values in batch:
            known = np.flatnonzero(~np.isnan(values))
            filled = values.copy()
            gaps = np.flatnonzero(np.isnan(values))
            filled[gaps] = np.interp(gaps, known, values[known])
            answers.append(filled)
        return answers


class GatedFillFamily(LinearFillFamily):
    name = GATED

    def impute(self, batch):
        if CALLS:  # not the warm-up: hold the model until the test releases it
            ENTERED.set()
            RELEASE.wait(60)
        return super().impute(batch)


class BrokenFillFamily(LinearFillFamily):
    """Breaks the contract: it also moves the observed points."""

    name = BROKEN

    def impute(self, batch):
        return [a + 1.0 for a in super().impute(batch)]


MODELS = f"""\
  fc:
    family: fracast
    source: bundled
  fill:
    family: {LINEAR}
    source: none
    route: /imputation
  gated:
    family: {GATED}
    source: none
    batching:
      timeout_s: 1
  broken:
    family: {BROKEN}
    source: none
"""

MS = 1_700_000_000_000  # a millisecond timestamp (2023-11-14)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    for name, cls in ((LINEAR, "LinearFillFamily"), (GATED, "GatedFillFamily"),
                      (BROKEN, "BrokenFillFamily")):
        families.register_family(name, f"{__name__}:{cls}")
    running = start_tsfmd(tmp_path_factory.mktemp("imputation"), MODELS)
    yield running
    running.stop()
    for name in (LINEAR, GATED, BROKEN):
        families._FAMILIES.pop(name, None)  # no public unregister


def error_of(reply: requests.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status"] == "error"
    return body["error"]


def test_gaps_on_the_grid_are_filled_and_observed_points_kept(server):
    # a 1-second grid with points 2, 3 and 6 missing; TDgpt's anode sends exactly this
    ts = [MS + 1000 * k for k in (0, 1, 4, 5, 7)]
    values = [10.0, 11.5, 14.0, 15.25, 17.0]
    reply = server.post("/imputation", {"input": values, "ts": ts, "precision": "ms",
                                        "freq": "S"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "success"
    assert body["ts"] == [MS + 1000 * k for k in range(8)]
    assert all(isinstance(t, int) for t in body["ts"])
    assert body["mask"] == [0, 0, 1, 1, 0, 0, 1, 0]
    target = body["target"]
    assert [target[k] for k in (0, 1, 4, 5, 7)] == values  # exactly as sent
    expected = np.interp([2, 3, 6], [0, 1, 4, 5, 7], values)
    assert np.allclose([target[2], target[3], target[6]], expected)


def test_null_values_are_gaps_and_ns_timestamps_stay_exact(server):
    ns = 1_700_000_000_123_450_000  # 19 digits, not a multiple of 256: float64 moves it
    assert int(float(ns)) != ns
    ts = [ns + 10_000 * k for k in range(6)]  # every 10 us
    values = [1.0, None, 3.0, 4.0, None, 6.0]
    reply = server.post("/imputation", {"input": values, "ts": ts, "precision": "ns",
                                        "freq": "10U"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["ts"] == ts
    assert body["mask"] == [0, 1, 0, 0, 1, 0]
    assert body["target"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_unaligned_ns_grid_is_refused_with_the_timestamp(server):
    ns = 1_700_000_000_123_456_789
    message = error_of(server.post("/imputation", {
        "input": [1.0, 2.0, 3.0], "ts": [ns, ns + 10_000, ns + 20_000], "precision": "ns",
        "freq": "10U"}), 400)
    assert f"'ts'[0] = {ns} is not on the grid of freq 10U" in message


def test_without_freq_the_smallest_gap_is_the_step(server):
    ts = [MS, MS + 500, MS + 1500, MS + 2000]
    body = server.post("/imputation", {"input": [1.0, 2.0, 4.0, 5.0], "ts": ts}).json()
    assert body["ts"] == [MS + 500 * k for k in range(5)]
    assert body["mask"] == [0, 0, 1, 0, 0]
    assert "smallest gap between timestamps, 500 ms" in body["notes"][0]


def test_nothing_missing_returns_the_input_without_running_the_model(server):
    CALLS.clear()
    minute = MS // 60_000 * 60_000  # a grid of minutes starts on a minute
    ts = [minute + 60_000 * k for k in range(4)]
    reply = server.post("/imputation", {"input": [1.0, 2.0, 3.0, 4.5], "ts": ts,
                                        "precision": "ms", "freq": "T"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["target"] == [1.0, 2.0, 3.0, 4.5] and body["mask"] == [0, 0, 0, 0]
    assert CALLS == []


@pytest.mark.parametrize("body, words", [
    ({"ts": [MS]}, "'input' must be a non-empty list"),
    ({"input": [1.0, 2.0]}, "'ts' must be a non-empty list"),
    ({"input": [1.0, 2.0], "ts": [MS]}, "'ts' has 1 timestamps but 'input' has 2 values"),
    ({"input": [1.0, "x"], "ts": [MS, MS + 1]}, "'input'[1] must be a number or null"),
    ({"input": [1.0, 2.0], "ts": [MS, "later"]}, "'ts'[1] must be an integer timestamp"),
    ({"input": [1.0, 2.0], "ts": [MS, MS + 1], "precision": "s"},
     "'precision' must be one of ms, us, ns"),
    ({"input": [1.0, 2.0], "ts": [MS, MS + 1000], "freq": "1X"},
     "'freq' must be a count and one of D, H, T, S, L, U"),
    ({"input": [1.0, 2.0], "ts": [MS, MS + 1000], "freq": "0S"}, "'freq' must be a count"),
    ({"input": [1.0, 2.0], "ts": [MS, MS + 1000], "freq": "U"},
     "'freq' U is finer than the timestamps' precision (ms)"),
    ({"input": [1.0, 2.0, 3.0], "ts": [MS, MS + 1000, MS]},
     "'ts'[2] repeats the timestamp"),
    ({"input": [1.0, 2.0], "ts": [MS, MS + 1500], "freq": "S"},
     "'ts'[1] = 1700000001500 is not on the grid of freq S"),
    ({"input": [1.0, 2.0], "ts": [MS, MS + 10**9], "freq": "L"},
     "the grid from the first to the last timestamp at this freq has 1000000001 points"),
    ({"input": [1.0, None, None], "ts": [MS, MS + 1, MS + 2], "freq": "L"},
     "has 1 observed points; model fill needs at least 2"),
    ({"input": [1.0, 2.0], "ts": [-5, 0]}, "'ts'[0] = -5 is outside the range"),
    ({"input": [1.0, 2.0], "next_len": 5}, "'ts' must be a non-empty list"),
])
def test_bad_bodies_are_400_saying_what_is_wrong(server, body, words):
    message = error_of(server.post("/imputation", body), 400)
    assert words in message
    assert server.get("/healthz").status_code == 200


def test_undecodable_bodies_are_400(server):
    for raw, words in ((b"", "the body is empty"), (b"{", "not valid JSON"),
                       (b"[" * 100_000, "nests JSON too deeply"),
                       (b"[1, 2]", "must be a JSON object")):
        reply = requests.post(server.url + "/imputation", data=raw, timeout=30,
                              headers={"Content-Type": "application/json"})
        assert words in error_of(reply, 400)
    huge = b'{"input": [1, ' + b"1" * 400 + b'], "ts": [0, 1]}'
    reply = requests.post(server.url + "/imputation", data=huge, timeout=30)
    assert "beyond a 64-bit float at positions [1]" in error_of(reply, 400)


def test_status_probe_get_is_405_at_once(server):
    reply = server.get("/imputation")
    assert "POST a JSON imputation request" in error_of(reply, 405)
    assert reply.headers["Allow"] == "POST"


def test_models_list_says_what_each_model_does(server):
    models = {m["key"]: m for m in server.get("/v1/models").json()["models"]}
    assert models["fill"]["tasks"] == ["impute"]
    assert models["fc"]["tasks"] == ["forecast"]


def test_forecast_models_are_untouched_beside_it(server):
    reply = server.post("/fc", {"input": np.sin(np.arange(64) / 5).tolist(), "next_len": 4})
    assert reply.status_code == 200 and len(reply.json()["output"]) == 4
    # an imputation body to a forecasting model is that protocol's own 400
    message = error_of(server.post("/fc", {"input": [1.0, 2.0], "ts": [MS, MS + 1]}), 400)
    assert "next_len" in message


def test_a_model_that_changes_observed_points_is_a_model_fault(server):
    reply = server.post("/broken", {"input": [1.0, None, 3.0], "ts": [MS, MS + 1, MS + 2]})
    assert "changed observed points" in error_of(reply, 500)


def test_one_at_a_time_and_a_request_that_cannot_start_in_time_gets_503(server):
    CALLS.clear()
    CALLS.append(0)  # past the warm-up: the gated family now holds the model
    ENTERED.clear()
    RELEASE.clear()
    body = {"input": [1.0, None, 3.0], "ts": [MS, MS + 1, MS + 2]}
    first: List[requests.Response] = []
    holder = threading.Thread(target=lambda: first.append(server.post("/gated", body)))
    holder.start()
    try:
        assert ENTERED.wait(60), "the first imputation never reached the model"
        # the model is busy for as long as the test holds it: the second request waits
        # its batching.timeout_s (1 s) since arrival and is refused, never run
        second = server.post("/gated", body)
        assert "waited 1s since it arrived without starting" in error_of(second, 503)
        assert int(second.headers["Retry-After"]) >= 1
    finally:
        RELEASE.set()
        holder.join(60)
    assert first[0].status_code == 200, first[0].text
    assert first[0].json()["target"] == [1.0, 2.0, 3.0]


def test_parse_body_builds_the_grid_of_moment_server():
    # an hourly grid over ms timestamps, unsorted input, first stamp on the hour
    hour = 3_600_000
    start = MS // hour * hour
    grid = parse_body({"input": [3.0, 1.0], "ts": [start + 2 * hour, start],
                       "precision": "ms", "freq": "H"})
    assert grid.timestamps() == [start, start + hour, start + 2 * hour]
    assert np.array_equal(np.isnan(grid.values), [False, True, False])
    assert grid.values[0] == 1.0 and grid.values[2] == 3.0
    with pytest.raises(BadInput, match="not on the grid of freq 2H"):
        parse_body({"input": [1.0, 2.0], "ts": [start, start + hour], "freq": "2H"})


def test_the_gate_of_a_retired_model_goes_with_it():
    # a reload retires the old model: its one-at-a-time gate must not keep it alive
    import gc
    import weakref

    from tsfmd.core import imputation
    from tsfmd.core.registry import BatchingSettings

    class Handle:
        key = "m"

        class spec:
            batching = BatchingSettings()

    model = LinearFillFamily()
    gone = weakref.ref(model)
    imputation._gate(model, Handle())
    assert len(imputation._gates) >= 1
    del model
    gc.collect()
    assert gone() is None
