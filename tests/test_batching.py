"""Dynamic batching and overload answers, through a real tsfmd and on the executor itself.

The slow model here is `SlowNaiveFamily`, a real Family (not a mock) defined in this file:
it forecasts the last value, and each series says how slow it is (its first value is the
milliseconds of work), so a test decides exactly when the worker is busy.
"""
from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Sequence

import numpy as np
import pytest

from conftest import wait_until
from tsfmd import families
from tsfmd.core.batching import BatchingExecutor
from tsfmd.core.executor import SerialExecutor, make_executor
from tsfmd.families.base import (
    Capabilities, Family, Forecast, LoadSpec, SeriesInput, UnsupportedInput,
)
from tsfmd.core.errors import Unavailable
from tsfmd.core.request import ForecastRequest
from tsfmd.core.registry import BatchingSettings

SLOW_FAMILY = "slow-naive-test"
#: a series holding this value is refused by the family (a "bad request" inside a batch)
POISON = -13.0


class SlowNaiveFamily(Family):
    """Last-value forecaster; sleeps max(first values) ms per call; refuses POISON."""

    name = SLOW_FAMILY

    def __init__(self):
        self.calls: List[tuple] = []  # (batch size, horizon) per forecast call
        self.served: List[float] = []  # last value of each series, in the order run

    @classmethod
    def load(cls, spec: LoadSpec) -> "SlowNaiveFamily":
        return cls()

    def capabilities(self) -> Capabilities:
        return Capabilities(context_limit=512, horizon_limit=64, min_context=1)

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        self.calls.append((len(batch), horizon))
        self.served.extend(float(s.values[-1]) for s in batch)
        time.sleep(max(float(s.values[0]) for s in batch) / 1000.0)
        if any(np.any(s.values == POISON) for s in batch):
            raise UnsupportedInput(f"the test family refuses series holding {POISON}")
        last = np.array([s.values[-1] for s in batch], dtype=np.float64)
        # each row also carries its horizon index, so a wrong cut shows
        return Forecast(point=last[:, None] + np.arange(horizon)[None, :] / 1000.0)

    def warm_up(self) -> None:
        pass


class HorizonGroupedFamily(SlowNaiveFamily):
    """Says that requests with different horizons must not share a forward pass."""

    def capabilities(self) -> Capabilities:
        return Capabilities(context_limit=512, horizon_limit=64, min_context=1, horizon_block=1)


class WorkBoundedFamily(SlowNaiveFamily):
    """Declares that one pass should hold at most 100 points (context + horizon)."""

    def capabilities(self) -> Capabilities:
        return Capabilities(context_limit=512, horizon_limit=64, min_context=1,
                            batch_points=100)


@pytest.fixture
def slow_family():
    families.register_family(SLOW_FAMILY, f"{__name__}:SlowNaiveFamily")
    yield SLOW_FAMILY
    families._FAMILIES.pop(SLOW_FAMILY, None)  # no public unregister; keep the table clean


def slow_model(key: str, enabled: bool = True, **batching) -> str:
    settings = {"enabled": "true" if enabled else "false", **batching}
    lines = "".join(f"      {k}: {v}\n" for k, v in settings.items())
    return (f"  {key}:\n    family: {SLOW_FAMILY}\n    source: none\n    device: cpu\n"
            f"    batching:\n{lines}")


def batching_info(server, key: str) -> dict:
    models = server.get("/v1/models").json()["models"]
    return next(m for m in models if m["key"] == key)["batching"]


def body(work_ms: float, n: int = 8, horizon: int = 4, last: float = 1.0) -> dict:
    return {"input": [work_ms] + [0.0] * (n - 2) + [last], "next_len": horizon}


# ---------------------------------------------------------------------------------------
# Same numbers batched as one at a time (fracast, the bundled model, over real HTTP)

FRACAST_MODELS = """\
  fc-batched:
    family: fracast
    source: bundled
    device: cpu
    batching:
      max_batch: 16
      max_wait_ms: 400
  fc-serial:
    family: fracast
    source: bundled
    device: cpu
    batching:
      enabled: false
"""


def test_concurrent_mixed_requests_match_one_at_a_time(tsfmd_server):
    server = tsfmd_server(FRACAST_MODELS)
    rng = np.random.default_rng(7)
    bodies = []
    for i in range(10):
        n = int(rng.integers(12, 400))
        t = np.arange(n)
        series = 50 + 10 * np.sin(t / 6.0) + rng.normal(0, 1, n).cumsum()
        req = {"input": [float(v) for v in series], "next_len": int(rng.integers(1, 120))}
        if i % 2:
            req["conf_interval"] = 0.8
        bodies.append(req)

    expected = [server.post("/fc-serial", b) for b in bodies]  # one at a time
    start = threading.Barrier(len(bodies))

    def concurrent(b):
        start.wait()
        return server.post("/fc-batched", b)

    with ThreadPoolExecutor(len(bodies)) as pool:
        got = list(pool.map(concurrent, bodies))

    for b, want, have in zip(bodies, expected, got):
        assert want.status_code == 200, want.text
        assert have.status_code == 200, have.text
        want, have = want.json(), have.json()
        assert sorted(have) == sorted(want)
        assert len(have["output"]) == b["next_len"]
        for field in ("output", "lower", "upper"):
            if field in want:
                np.testing.assert_allclose(have[field], want[field], rtol=1e-4, atol=1e-4)
    info = batching_info(server, "fc-batched")
    assert info["enabled"] is True and info["forecasts"] == len(bodies)
    assert info["largest_batch"] > 1, info  # they really shared forward passes
    assert batching_info(server, "fc-serial")["enabled"] is False


# ---------------------------------------------------------------------------------------
# Overload over HTTP: a full queue, a timeout, a client that hangs up


@pytest.mark.parametrize("batched", [True, False], ids=["batching", "serial"])
def test_full_queue_answers_503_with_retry_after(tsfmd_server, slow_family, batched):
    server = tsfmd_server(slow_model("slow", batched, max_batch=1, max_wait_ms=0,
                                     queue_size=2, timeout_s=30))
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(server.post, "/slow", body(1500))
        wait_until(lambda: batching_info(server, "slow")["running"] == 1, timeout=10)
        queued = [pool.submit(server.post, "/slow", body(50, last=i)) for i in range(2)]
        wait_until(lambda: batching_info(server, "slow")["queue_depth"] == 2, timeout=10)

        refused = server.post("/slow", body(1))
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert "queue_size 2" in refused.json()["error"]
        assert running.result().status_code == 200
        assert [f.result().json()["output"][0] for f in queued] == [0.0, 1.0]
    info = batching_info(server, "slow")
    assert info["rejected_queue_full"] == 1 and info["forecasts"] == 3
    assert server.post("/slow", body(1)).status_code == 200  # and serving goes on


def test_timeouts_answer_503_or_504_and_serving_goes_on(tsfmd_server, slow_family):
    server = tsfmd_server(slow_model("slow", max_batch=1, max_wait_ms=0, timeout_s=0.5))
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(server.post, "/slow", body(1500))
        wait_until(lambda: batching_info(server, "slow")["running"] == 1, timeout=10)
        queued = pool.submit(server.post, "/slow", body(1))
        # it ran past timeout_s: 504; it never started within timeout_s: 503 + Retry-After
        late = running.result()
        assert late.status_code == 504, late.text
        assert "timeout_s 0.5" in late.json()["error"]  # not 200: it did not wait for the end
        never_ran = queued.result()
        assert never_ran.status_code == 503, never_ran.text
        assert "waited" in never_ran.json()["error"]
        assert int(never_ran.headers["Retry-After"]) >= 1

    wait_until(lambda: batching_info(server, "slow")["running"] == 0, timeout=10)
    ok = server.post("/slow", body(1, last=42.0))
    assert ok.status_code == 200 and ok.json()["output"][0] == 42.0
    assert server.get("/healthz").status_code == 200
    info = batching_info(server, "slow")
    assert info["timed_out"] == 2 and info["dropped_before_run"] == 1
    assert info["forecasts"] == 2  # the slow one (its answer thrown away) and the last one


def test_client_that_hangs_up_is_dropped_before_its_batch(tsfmd_server, slow_family):
    server = tsfmd_server(slow_model("slow", max_batch=1, max_wait_ms=0, timeout_s=30))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(server.post, "/slow", body(1200))
        wait_until(lambda: batching_info(server, "slow")["running"] == 1, timeout=10)
        payload = b'{"input": [1, 2, 3, 4, 5, 6, 7, 8], "next_len": 2}'
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            wait_until(lambda: batching_info(server, "slow")["queue_depth"] == 1, timeout=10)
        # the socket is closed here, while the request still waits in the queue
        wait_until(lambda: batching_info(server, "slow")["client_gone"] == 1, timeout=10)
        assert running.result().status_code == 200
    info = batching_info(server, "slow")
    assert info["dropped_before_run"] == 1
    assert info["forecasts"] == 1  # no compute spent on the request nobody waits for


# ---------------------------------------------------------------------------------------
# The executor itself


def request(values, horizon: int) -> ForecastRequest:
    return ForecastRequest(series=SeriesInput(np.asarray(values, dtype=np.float64)),
                           horizon=horizon)


def submit_together(executor, requests):
    """Queue all `requests` behind a slow one, so they meet in one batch when it ends;
    returns each one's Forecast or exception (the slow one's call is the model's first)."""
    def one(req):
        try:
            return executor.submit(req)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(requests) + 1) as pool:
        blocker = pool.submit(one, request([300, 0], 1))
        wait_until(lambda: executor.describe()["running"] == 1, timeout=10)
        futures = [pool.submit(one, req) for req in requests]
        wait_until(lambda: executor.describe()["queue_depth"] == len(requests), timeout=10)
        assert blocker.result().point.shape == (1, 1)
        return [f.result() for f in futures]


def test_a_bad_series_fails_only_its_own_request():
    model = SlowNaiveFamily()
    executor = BatchingExecutor(model, BatchingSettings(max_batch=8, max_wait_ms=500), "t")
    try:
        reqs = [request([1, 2, 3, float(i)], horizon=3 + i) for i in range(4)]
        reqs[2] = request([1, POISON, 3], horizon=2)
        outcomes = submit_together(executor, reqs)
    finally:
        executor.close()
    assert isinstance(outcomes[2], UnsupportedInput)
    for i in (0, 1, 3):
        assert outcomes[i].point.shape == (1, 3 + i)
        np.testing.assert_allclose(outcomes[i].point[0], i + np.arange(3 + i) / 1000.0)
    assert model.calls[1][0] == 4  # one batch first, then each on its own
    assert sorted(size for size, _ in model.calls[2:]) == [1, 1, 1, 1]
    assert executor.describe()["failed_batches"] == 1


def test_batch_forecasts_to_the_longest_horizon_and_cuts_each():
    model = SlowNaiveFamily()
    executor = BatchingExecutor(model, BatchingSettings(max_batch=8, max_wait_ms=500), "t")
    try:
        reqs = [request([1.0] * (4 + 3 * i) + [10.0 * i], horizon=h)
                for i, h in enumerate([1, 7, 30, 7])]
        outcomes = submit_together(executor, reqs)
    finally:
        executor.close()
    assert model.calls[1:] == [(4, 30)]
    for i, (req, got) in enumerate(zip(reqs, outcomes)):
        np.testing.assert_allclose(got.point[0], 10.0 * i + np.arange(req.horizon) / 1000.0)


def test_horizon_group_keeps_different_horizons_apart():
    model = HorizonGroupedFamily()
    executor = BatchingExecutor(model, BatchingSettings(max_batch=8, max_wait_ms=500), "t")
    try:
        outcomes = submit_together(executor, [request([1, 2], h) for h in (5, 9, 5, 9, 5)])
    finally:
        executor.close()
    assert sorted(model.calls[1:]) == [(2, 9), (3, 5)]
    assert [o.point.shape[1] for o in outcomes] == [5, 9, 5, 9, 5]


def test_batches_are_bounded_by_the_family_s_work_measure():
    # six requests of 40 points + horizon 10 = 50 each against the family's 100: two per
    # pass, in arrival order; a 150-point request (above the budget) runs alone
    model = WorkBoundedFamily()
    executor = BatchingExecutor(model, BatchingSettings(max_batch=8, max_wait_ms=500), "t")
    try:
        reqs = [request([1.0] * 39 + [float(i)], horizon=10) for i in range(6)]
        reqs.insert(3, request([1.0] * 139 + [99.0], horizon=10))
        outcomes = submit_together(executor, reqs)
        info = executor.describe()
    finally:
        executor.close()
    assert model.calls[1:] == [(2, 10), (1, 10), (1, 10), (2, 10), (1, 10)]
    assert model.served[1:] == [0, 1, 2, 99, 3, 4, 5]  # nobody overtaken
    assert [o.point[0, 0] for o in outcomes] == [0, 1, 2, 99, 3, 4, 5]
    assert (info["max_batch_points"], info["max_batch_points_from"]) == (100, "family")


def test_the_registry_s_max_batch_points_overrides_the_family():
    model = WorkBoundedFamily()
    settings = BatchingSettings(max_batch=8, max_wait_ms=500, max_batch_points=200)
    executor = BatchingExecutor(model, settings, "t")
    try:
        submit_together(executor, [request([1.0] * 39 + [float(i)], horizon=10)
                                   for i in range(6)])
        info = executor.describe()
    finally:
        executor.close()
    assert model.calls[1:] == [(4, 10), (2, 10)]
    assert (info["max_batch_points"], info["max_batch_points_from"]) == (200, "registry")


def test_without_a_work_measure_max_batch_alone_bounds_a_batch():
    model = SlowNaiveFamily()  # declares no batch_points
    executor = BatchingExecutor(model, BatchingSettings(max_batch=3, max_wait_ms=500), "t")
    try:
        submit_together(executor, [request([1.0] * 300 + [float(i)], horizon=10)
                                   for i in range(5)])
        info = executor.describe()
    finally:
        executor.close()
    assert model.calls[1:] == [(3, 10), (2, 10)]
    assert info["max_batch_points"] is None


def test_a_lone_caller_does_not_wait_for_company():
    # max_wait is a minute: a worker that waited for company would not answer in time
    model = SlowNaiveFamily()
    executor = BatchingExecutor(model, BatchingSettings(max_batch=8, max_wait_ms=60000), "t")
    try:
        with ThreadPoolExecutor(1) as pool:
            for i in range(3):
                answer = pool.submit(executor.submit, request([1, i], 1)).result(timeout=20)
                assert answer.point[0, 0] == i
    finally:
        executor.close()
    assert model.calls == [(1, 1)] * 3


def test_close_answers_queued_requests_and_stops_the_worker():
    executor = BatchingExecutor(SlowNaiveFamily(), BatchingSettings(max_batch=1), "t")
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(executor.submit, request([400, 1], 1))
        wait_until(lambda: executor.describe()["running"] == 1, timeout=5)
        queued = pool.submit(executor.submit, request([1, 1], 1))
        wait_until(lambda: executor.describe()["queue_depth"] == 1, timeout=5)
        executor.close()
        assert running.result().point.shape == (1, 1)  # the batch in flight finishes
        with pytest.raises(Unavailable) as refused:
            queued.result()
    assert refused.value.retry_after == 1
    assert not executor._worker.is_alive()
    with pytest.raises(Unavailable):
        executor.submit(request([1, 1], 1))


def test_make_executor_follows_the_registry_switch():
    model = SlowNaiveFamily()
    serial = make_executor(model, BatchingSettings(enabled=False), "t")
    batched = make_executor(model, BatchingSettings(), "t")
    try:
        assert isinstance(serial, SerialExecutor)
        assert isinstance(batched, BatchingExecutor)
        assert serial.describe()["enabled"] is False
        assert batched.describe()["queue_size"] == BatchingSettings().queue_size
    finally:
        batched.close()


def test_serial_executor_serves_waiters_in_arrival_order():
    model = SlowNaiveFamily()
    executor = SerialExecutor(model, "t", BatchingSettings(enabled=False, queue_size=8))
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(executor.submit, request([300, 0], 1))
        wait_until(lambda: executor.describe()["running"] == 1, timeout=5)
        waiting = []
        for i in range(1, 5):
            waiting.append(pool.submit(executor.submit, request([1, i], 1)))
            wait_until(lambda: executor.describe()["queue_depth"] == i, timeout=5)
        answers = [f.result().point[0, 0] for f in [first] + waiting]
    assert answers == [0, 1, 2, 3, 4]
    assert model.served == [0, 1, 2, 3, 4]  # first come, first served
    assert executor.describe()["forecasts"] == 5


class ThreadRecordingFamily(SlowNaiveFamily):
    """Records the thread each forecast ran on."""

    def __init__(self):
        super().__init__()
        self.threads: List[int] = []

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        self.threads.append(threading.get_ident())
        return super().forecast(batch, horizon)


def test_the_serial_path_runs_every_forecast_on_the_model_s_own_thread():
    # torch's OpenMP pool belongs to the calling thread: forecasts run on waitress's request
    # threads built one pool per thread; on the model's own thread there is one, kept warm
    model = ThreadRecordingFamily()
    executor = SerialExecutor(model, "t", BatchingSettings(enabled=False, queue_size=16))
    callers = set()

    def call(i):
        callers.add(threading.get_ident())
        return executor.submit(request([2, i], 1)).point[0, 0]

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, range(12)))
    assert answers == list(range(12))
    assert len(set(model.threads)) == 1  # one thread ran all twelve
    assert not set(model.threads) & callers  # and it is none of the request threads
    [thread] = [t for t in threading.enumerate() if t.ident == model.threads[0]]
    assert thread.name == "model-t"
    assert executor.liveness_problem(stale_after=5) is None
    executor.close()
    thread.join(timeout=10)
    assert not thread.is_alive()  # closing the executor ends the model's thread
    with pytest.raises(Unavailable):
        executor.submit(request([1, 1], 1))


def test_a_family_error_on_the_model_thread_reaches_the_caller_and_serving_goes_on():
    model = ThreadRecordingFamily()
    executor = SerialExecutor(model, "t", BatchingSettings(enabled=False))
    try:
        with pytest.raises(UnsupportedInput):
            executor.submit(request([1, POISON, 3], 1))
        assert executor.submit(request([1, 7], 1)).point[0, 0] == 7
        assert len(set(model.threads)) == 1
    finally:
        executor.close()
