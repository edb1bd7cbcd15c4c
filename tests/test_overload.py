"""Overload through a real tsfmd: admission before a thread blocks, health during a burst,
queue_size as a real bound, deadlines from arrival, and the watchdog's in-process liveness.

The burst runs against `tsfmd serve` in its own process (as in production: the clients'
threads do not share its interpreter): fracast at its largest request (the family's full
context and horizon, about a second of CPU each) is the overloaded model, the tiny Time-MoE
checkpoint the other one. The exact-count tests use test_batching's SlowNaiveFamily, a real
Family whose series say how long they take.
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, free_port, registry_yaml, wait_until
from test_batching import SlowNaiveFamily, batching_info, body, slow_family, slow_model  # noqa: F401
from tsfmd.core.batching import BatchingExecutor
from tsfmd.core.errors import Unavailable
from tsfmd.core.registry import BatchingSettings

#: the issue's bound for /healthz and another model during a burst
ANSWER_WITHIN_S = 1.0
THREADS = 16
BURST_MODELS = f"""\
  big:
    family: fracast
    source: bundled
    device: cpu
  other:
    family: time-moe
    source: {FIXTURES / 'timemoe' / 'tiny'}
    dtype: float32
    device: cpu
"""


def call(port: int, method: str, path: str, payload=None, timeout: float = 120.0):
    """One request on a fresh connection: (status, headers, parsed JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def largest_request(port: int, key: str) -> dict:
    """The biggest request the model accepts: its whole context and its longest horizon."""
    models = call(port, "GET", "/v1/models")[2]["models"]
    model = next(m for m in models if m["key"] == key)
    n = model["context_limit"]
    values = [50 + 10 * math.sin(i / 7) + (i % 13) / 10 for i in range(n)]
    return {"input": values, "next_len": model["horizon_limit"]}


def burst(port: int, route: str, other_route: str, clients: int) -> dict:
    """`clients` concurrent largest requests to `route`, while a prober measures /healthz
    and a small forecast on `other_route` in a loop, each on a new connection."""
    big = largest_request(port, route.strip("/"))
    small = {"input": [20 + 5 * math.sin(i / 8) for i in range(256)], "next_len": 16}
    done = threading.Event()
    probes = {"healthz": [], "other": []}  # (seconds, status)

    def probe():
        while not done.is_set():
            for name, method, path, payload in (("healthz", "GET", "/healthz", None),
                                                ("other", "POST", other_route, small)):
                began = time.monotonic()
                try:
                    status = call(port, method, path, payload, timeout=30)[0]
                except OSError as exc:
                    status = repr(exc)
                probes[name].append((time.monotonic() - began, status))

    start = threading.Barrier(clients)

    def client(_):
        start.wait()
        try:
            status, headers, reply = call(port, "POST", route, big)
            return status, headers.get("Retry-After"), reply
        except OSError as exc:  # a refused or reset connection: the test fails on it
            return repr(exc), None, None

    prober = threading.Thread(target=probe)
    prober.start()
    began = time.monotonic()
    try:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(client, range(clients)))
    finally:
        seconds = time.monotonic() - began
        done.set()
        prober.join()
    return {"results": results, "seconds": seconds, "probes": probes}


def check_burst(outcome: dict, clients: int) -> str:
    """The issue's bar for a burst; returns the numbers in one line."""
    results, probes = outcome["results"], outcome["probes"]
    statuses = Counter(r[0] for r in results)
    assert set(statuses) <= {200, 503}, statuses  # no connection errors, no 500, no 504
    assert sum(statuses.values()) == clients
    assert statuses[200] >= 1, statuses
    for status, retry_after, reply in results:
        if status == 503:
            assert retry_after is not None and int(retry_after) >= 1
            assert reply["status"] == "error" and "busy" in reply["error"], reply
        else:
            assert reply["status"] == "success"
    for name, measured in probes.items():
        assert measured, f"no {name} probe finished during the burst"
        assert {s for _, s in measured} == {200}, (name, Counter(s for _, s in measured))
        slowest = max(t for t, _ in measured)
        assert slowest <= ANSWER_WITHIN_S, f"{name} took {slowest:.2f}s during the burst"
    return (f"{clients} clients: {statuses[200]} x 200, {statuses[503]} x 503; burst "
            f"{outcome['seconds']:.1f}s; max /healthz {max(t for t, _ in probes['healthz']):.3f}s "
            f"({len(probes['healthz'])} probes), max other model "
            f"{max(t for t, _ in probes['other']):.3f}s")


class ServeProcess:
    """`tsfmd serve` in a process of its own, on a loopback port."""

    def __init__(self, directory: Path, models: str, threads: int):
        self.port = free_port()
        text = registry_yaml(models, self.port).replace("threads: 16", f"threads: {threads}")
        self.config = Path(directory) / "burst.yaml"
        self.config.write_text(text)
        self.log = Path(directory) / "serve.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tsfmd", "serve", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"),
            )

    def wait_ready(self, timeout: float = 180.0) -> None:
        def ready():
            assert self.process.poll() is None, self.log.read_text()
            try:
                return call(self.port, "GET", "/readyz", timeout=5)[0] == 200
            except OSError:
                return False
        wait_until(ready, timeout=timeout, interval=0.2)

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=60)


def test_burst_of_10x_threads_gets_200_or_503_and_health_answers(tmp_path):
    served = ServeProcess(tmp_path, BURST_MODELS, THREADS)
    try:
        served.wait_ready()
        outcome = burst(served.port, "/big", "/other", clients=10 * THREADS)
        print("\nburst:", check_burst(outcome, 10 * THREADS))
        admission = batching_info_at(served.port, "big")["admission"]
        # it never held more than its share of the threads: the 200s came in batches of it
        assert admission["server_threads"] == THREADS and admission["admitted"] == 0
        assert admission["limit"] < THREADS
        assert call(served.port, "GET", "/healthz")[0] == 200  # and it serves on
    finally:
        assert served.stop() == 0, served.log.read_text()[-3000:]
    assert "Traceback" not in served.log.read_text()


def batching_info_at(port: int, key: str) -> dict:
    models = call(port, "GET", "/v1/models")[2]["models"]
    return next(m for m in models if m["key"] == key)["batching"]


# ---------------------------------------------------------------------------------------
# queue_size is a real bound


def send_all(server, bodies, route="/slow"):
    """Post all `bodies` at once; each answer with the time.monotonic() it came back at."""
    def one(b):
        answer = server.post(route, b)
        return answer, time.monotonic()

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def timed(server, route, payload):
    answer = server.post(route, payload)
    return answer, time.monotonic()


@pytest.mark.parametrize("batched", [True, False], ids=["batching", "serial"])
def test_queue_size_bounds_what_a_model_holds(tsfmd_server, slow_family, batched):
    server = tsfmd_server(slow_model("slow", batched, max_batch=1, max_wait_ms=0,
                                     queue_size=3, timeout_s=60))
    info = batching_info(server, "slow")["admission"]
    assert (info["limit"], info["effective_queue_limit"]) == (4, 3)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(timed, server, "/slow", body(6000))  # holds the model 6 s
        wait_until(lambda: batching_info(server, "slow")["running"] == 1, timeout=10)
        # 3 fit in the queue behind it; the other 5 are refused at once, while it still runs
        timed_answers = send_all(server, [body(1, last=i) for i in range(8)])
        first, first_done = running.result()
    assert first.status_code == 200
    answers = [a for a, _ in timed_answers]
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {200: 3, 503: 5}, statuses
    assert all(done < first_done for a, done in timed_answers if a.status_code == 503)
    refused = [a for a in answers if a.status_code == 503]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)
    assert all("its limit is 4 (batching.queue_size 3" in a.json()["error"] for a in refused)
    info = batching_info(server, "slow")
    assert info["rejected_queue_full"] == 5 and info["forecasts"] == 4


def test_a_deep_queue_size_is_cut_to_the_models_thread_share(tsfmd_server, slow_family):
    # threads 16: 2 reserved, 14 for forecasts, one model holds at most 10 of them
    server = tsfmd_server(slow_model("slow", max_batch=2, max_wait_ms=0, queue_size=256,
                                     timeout_s=60))
    info = batching_info(server, "slow")["admission"]
    assert info == {"limit": 10, "effective_queue_limit": 8, "thread_share": 10,
                    "server_threads": 16, "admitted": 0}
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(timed, server, "/slow", body(6000))
        wait_until(lambda: batching_info(server, "slow")["running"] == 1, timeout=10)
        timed_answers = send_all(server, [body(1, last=i) for i in range(14)])
        first, first_done = running.result()
    assert first.status_code == 200
    statuses = Counter(a.status_code for a, _ in timed_answers)
    assert statuses == {200: 9, 503: 5}, statuses
    for answer, done in timed_answers:
        if answer.status_code == 503:
            assert done < first_done  # at once, not after the queue moved
            assert "cut to its share 10 of server.threads 16" in answer.json()["error"]
    assert server.get("/healthz").status_code == 200


def test_a_slow_model_leaves_threads_to_the_others(tsfmd_server, slow_family):
    # the slow model's first request runs alone for 4 s, the next 9 then share one batch
    server = tsfmd_server(slow_model("slow", max_batch=16, max_wait_ms=0, timeout_s=60)
                          + slow_model("quick", max_batch=1, max_wait_ms=0, timeout_s=60))
    with ThreadPoolExecutor(20) as pool:
        held = [pool.submit(timed, server, "/slow", body(4000)) for _ in range(20)]
        wait_until(lambda: batching_info(server, "slow")["admission"]["admitted"] == 10,
                   timeout=20)
        quick, quick_done = timed(server, "/quick", body(1, last=7.0))  # its share is free
        outcomes = [f.result() for f in held]
    assert quick.status_code == 200 and quick.json()["output"][0] == 7.0
    assert quick_done < min(done for a, done in outcomes if a.status_code == 200)
    statuses = Counter(a.status_code for a, _ in outcomes)
    assert statuses == {200: 10, 503: 10}, statuses


def test_forecasts_never_hold_the_threads_kept_for_health(tsfmd_server, slow_family):
    # threads 16: two models may hold 14 threads together, 10 each; 2 stay free
    server = tsfmd_server(slow_model("a", max_batch=16, max_wait_ms=0, timeout_s=60)
                          + slow_model("b", max_batch=16, max_wait_ms=0, timeout_s=60))
    with ThreadPoolExecutor(24) as pool:
        held_a = [pool.submit(server.post, "/a", body(4000)) for _ in range(12)]
        wait_until(lambda: batching_info(server, "a")["admission"]["admitted"] == 10,
                   timeout=20)
        held_b = [pool.submit(server.post, "/b", body(4000)) for _ in range(12)]
        wait_until(lambda: batching_info(server, "b")["admission"]["admitted"] == 4,
                   timeout=20)
        health = server.get("/healthz", timeout=5)  # one of the 2 threads kept free
        a = Counter(f.result().status_code for f in held_a)
        b = [f.result() for f in held_b]
    assert health.status_code == 200
    assert a == {200: 10, 503: 2}, a
    assert Counter(r.status_code for r in b) == {200: 4, 503: 8}
    assert all("forecasts hold 14 of its 16 request threads" in r.json()["error"]
               for r in b if r.status_code == 503)


# ---------------------------------------------------------------------------------------
# Deadlines count from arrival


def pipelined(port: int, first: dict, first_route: str, second: dict, second_route: str):
    """Two requests sent back to back on one connection: waitress reads (and stamps) the
    second at once but gives it a thread only after the first is answered."""
    def request_bytes(route, payload):
        data = json.dumps(payload).encode()
        return (f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode() + data

    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request_bytes(first_route, first) + request_bytes(second_route, second))
        stream = sock.makefile("rb")
        return [read_response(stream) for _ in range(2)]


def read_response(stream):
    status = int(stream.readline().split()[1])
    headers = {}
    for line in iter(stream.readline, b"\r\n"):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, json.loads(stream.read(int(headers["content-length"])))


def test_the_deadline_counts_from_arrival_not_from_the_thread(tsfmd_server, slow_family):
    server = tsfmd_server(slow_model("slow", max_batch=1, max_wait_ms=0, timeout_s=60)
                          + slow_model("tight", max_batch=1, max_wait_ms=0, timeout_s=1))
    # the second request waits ~2 s for the first, longer than its 1 s deadline: it must
    # not run, though a thread picks it up with its model idle
    (first, _, _), (late, headers, reply) = pipelined(
        server.port, body(2000), "/slow", body(1, last=5.0), "/tight")
    assert first == 200
    assert late == 503, reply
    assert "since it arrived" in reply["error"] and int(headers["retry-after"]) >= 1
    waited = float(reply["error"].split("waited ")[1].split("s")[0])
    assert waited >= 1.0
    info = batching_info(server, "tight")
    assert info["forecasts"] == 0 and info["timed_out"] == 1
    # the same pair, the first quick: the second is answered normally
    (first, _, _), (ok, _, reply) = pipelined(
        server.port, body(1), "/slow", body(1, last=5.0), "/tight")
    assert (first, ok) == (200, 200) and reply["output"][0] == 5.0


def test_the_default_deadline_is_below_tdgpts_sql_timeout():
    assert BatchingSettings().timeout_s < 60  # TDgpt's SQL `timeout` default


# ---------------------------------------------------------------------------------------
# Liveness for the systemd watchdog


def test_worker_liveness_sees_a_wedged_batch_and_a_silent_worker():
    executor = BatchingExecutor(SlowNaiveFamily(), BatchingSettings(max_batch=1), "t")
    try:
        assert executor.liveness_problem(stale_after=10) is None
        later = time.monotonic() + 1000  # as if the clock had moved on without a heartbeat
        assert "has not run for" in executor.liveness_problem(stale_after=10, now=later)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(executor.submit, request_for([1500, 1]))
            wait_until(lambda: executor.describe()["running"] == 1, timeout=5)
            assert executor.liveness_problem(stale_after=10) is None  # busy, not dead
            problem = executor.liveness_problem(stale_after=10, now=later)
            assert "one forward pass has run for" in problem
            running.result()
        wait_until(lambda: executor.liveness_problem(stale_after=10) is None, timeout=5)
    finally:
        executor.close()
    assert executor.liveness_problem(stale_after=10, now=later) is None  # closed on purpose


def test_a_worker_gathering_company_for_long_still_beats():
    # max_wait is a minute; the heartbeat must not stop while the worker waits for company
    executor = BatchingExecutor(SlowNaiveFamily(), BatchingSettings(max_batch=8,
                                                                    max_wait_ms=60000), "t")
    try:
        with ThreadPoolExecutor(3) as pool:
            blocker = pool.submit(executor.submit, request_for([800, 1]))
            wait_until(lambda: executor.describe()["running"] == 1, timeout=5)
            pair = [pool.submit(executor.submit, request_for([1, i])) for i in range(2)]
            wait_until(lambda: executor.describe()["queue_depth"] == 2, timeout=5)
            for future in [blocker] + pair:
                future.result()
            # the last batch had company, so a lone newcomer is held for company
            lone = pool.submit(executor.submit, request_for([1, 9]))
            wait_until(lambda: executor.describe()["queue_depth"] == 1, timeout=5)
            since = executor._beat
            wait_until(lambda: executor._beat > since + 1.5, timeout=10)
            assert executor.liveness_problem(stale_after=2.0) is None
            assert executor.describe()["queue_depth"] == 1  # still gathering
            executor.close()
            with pytest.raises(Unavailable):
                lone.result()  # closed before its batch ran
    finally:
        executor.close()


def request_for(values):
    from tsfmd.families.base import SeriesInput
    from tsfmd.core.request import ForecastRequest

    return ForecastRequest(series=SeriesInput(np.asarray(values, dtype=np.float64)), horizon=1)


def test_watchdog_pings_stop_while_the_server_loop_is_wedged(tsfmd_server, tmp_path,
                                                            monkeypatch, caplog):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # WatchdogSec=2: stale after 1 s
    caplog.set_level(logging.ERROR, logger="tsfmd.server")
    server = tsfmd_server(slow_model_free())

    def pings(seconds: float) -> int:
        count, until = 0, time.monotonic() + seconds
        while time.monotonic() < until:
            try:
                count += listener.recv(4096).count(b"WATCHDOG=1")
            except socket.timeout:
                pass
        return count

    try:
        assert pings(2.0) >= 1
        release = threading.Event()
        server.daemon._loop_probe._trigger.pull_trigger(lambda: release.wait(30))  # wedge it
        try:
            wait_until(lambda: "server loop has not run" in caplog.text, timeout=15)
            pings(0.3)  # drop a ping sent before the wedge was seen
            assert pings(1.5) == 0
        finally:
            release.set()
        wait_until(lambda: pings(0.5), timeout=10)  # the loop runs again: pings resume
        assert server.get("/healthz").status_code == 200
    finally:
        listener.close()


def slow_model_free() -> str:
    return "  fc:\n    family: fracast\n    source: bundled\n    device: cpu\n"
