"""Worker processes that die, hang or crash-loop, on a real daemon on loopback.

The killed model is a real fracast in `isolation: process` (a real worker process, the
bundled weights) or, where a fault must happen on cue, tests/workerfamilies.py's test
family (it segfaults on load, holds a request in flight, or hangs: no real family does so on
demand). The other model is an in-process fracast: it must never notice.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import wait_until
from tsfmd import families
from tsfmd.families import register_family
from workerfamilies import BAD, BOOM, HANG

TESTS = Path(__file__).parent
SERIES = (np.sin(np.arange(96) / 5.0) * 3 + 10).tolist()


@pytest.fixture(autouse=True)
def fault_family(monkeypatch):
    register_family("fault-test", "workerfamilies:FaultFamily")
    monkeypatch.setenv("TSFMD_WORKER_PATH", str(TESTS))  # the worker imports it from here
    yield
    families._FAMILIES.pop("fault-test", None)  # no public unregister; tests only


def entry(key, family="fracast", isolation="process", extra=""):
    return (f"  {key}:\n    family: {family}\n    source: bundled\n    device: cpu\n"
            f"    isolation: {isolation}\n{extra}")


def info(server, key):
    models = server.get("/v1/models").json()["models"]
    return next(m for m in models if m["key"] == key)


def worker_pid(server, key, standby=False):
    """The serving worker's pid once the model is ready (with `standby`: once its standby
    worker has imported the family's libraries too, as it has in steady state)."""
    found = info(server, key)
    if found["status"] != "ready" or (standby and not found["worker"]["standby_pid"]):
        return None
    return found["worker"]["pid"]


def gone(pid):
    """The process has exited and been reaped (no zombie left either)."""
    return not Path(f"/proc/{pid}").exists()


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def assert_unavailable(response):
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert body["status"] == "error" and body["error"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_a_worker_killed_during_a_burst_fails_only_its_own_requests(tsfmd_server, sig):
    server = tsfmd_server(entry("w") + entry("other", isolation="inprocess"))
    old_pid = wait_until(lambda: worker_pid(server, "w", standby=True), timeout=60)
    codes = {"w": [], "other": []}
    bad = []
    stop = threading.Event()
    first_ok = threading.Event()
    body = {"input": SERIES, "next_len": 12}

    def client(key):
        session = requests.Session()
        for _ in range(400):  # bounded; the test stops it sooner
            if stop.is_set():
                return
            reply = session.post(f"{server.url}/{key}", json=body, timeout=60)
            codes[key].append(reply.status_code)
            if reply.status_code == 200:
                first_ok.set()
            elif reply.status_code != 503 or "Retry-After" not in reply.headers:
                bad.append((key, reply.status_code, reply.text))
            else:  # a client that honours Retry-After, at least once a second
                stop.wait(min(1.0, float(reply.headers["Retry-After"])))

    threads = [threading.Thread(target=client, args=(k,)) for k in ("w",) * 4 + ("other",) * 2]
    for t in threads:
        t.start()
    assert first_ok.wait(60)
    os.kill(old_pid, sig)
    killed = time.monotonic()
    new_pid = wait_until(lambda: (worker_pid(server, "w") or old_pid) != old_pid
                         and worker_pid(server, "w"), timeout=30, interval=0.05)
    back_after = time.monotonic() - killed
    time.sleep(0.5)  # let the clients see the restarted worker answer
    stop.set()
    for t in threads:
        t.join(120)
    print(f"{sig.name}: back (ready, pid {old_pid} -> {new_pid}) after {back_after:.2f}s; "
          f"w: {codes['w'].count(200)} x 200, {codes['w'].count(503)} x 503; "
          f"other: {len(codes['other'])} x 200")
    assert not bad
    assert set(codes["other"]) == {200}
    assert back_after < 10.0
    assert gone(old_pid)
    assert info(server, "w")["worker"]["restarts"] == 1
    assert server.post("/w", body).status_code == 200


def test_in_flight_and_queued_requests_fail_at_once(tsfmd_server, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    server = tsfmd_server(entry("g", family="fault-test", extra=(
        f"    options: {{gate_dir: '{gate}'}}\n    batching: {{max_batch: 1}}\n")))
    pid = worker_pid(server, "g")
    answers = []

    def ask():
        answers.append(server.post("/g", {"input": SERIES, "next_len": 4}))

    first = threading.Thread(target=ask)
    first.start()
    wait_until(lambda: (gate / "entered").exists(), timeout=30, interval=0.02)
    second = threading.Thread(target=ask)  # queues behind the one in flight (max_batch 1)
    second.start()
    wait_until(lambda: info(server, "g")["batching"]["queue_depth"] == 1, timeout=30,
               interval=0.02)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    first.join(30)
    second.join(30)
    waited = time.monotonic() - killed
    print(f"both answered {waited:.2f}s after the kill (deadline 50 s)")
    assert len(answers) == 2 and waited < 10.0
    for answer in answers:
        assert_unavailable(answer)
    assert "worker pid" in answers[0].json()["error"]
    (gate / "release").touch()
    wait_until(lambda: worker_pid(server, "g") not in (None, pid), timeout=30)
    assert server.post("/g", {"input": [1.0, 2.0], "next_len": 3}).json()["output"] == \
        [3.0, 4.0, 5.0]


def test_a_crash_loop_ends_failed_with_the_workers_stderr(tsfmd_server, tmp_path):
    marker = tmp_path / "crash-now"
    server = tsfmd_server(
        entry("c", family="fault-test", extra=f"    options: {{crash_on_load_if: '{marker}'}}\n")
        + entry("other", isolation="inprocess"))
    marker.touch()  # from now on every load segfaults
    os.kill(worker_pid(server, "c"), signal.SIGKILL)
    seen = set()

    def failed():
        status = info(server, "c")["status"]
        seen.add(status)
        return status == "failed"

    wait_until(failed, timeout=90, interval=0.05)
    found = info(server, "c")
    print("reason:", found["reason"])
    assert "restarting" in seen
    assert "crash loop" in found["reason"] and "SIGSEGV" in found["reason"]
    assert "the native library is about to crash" in found["reason"]
    refused = server.post("/c", {"input": SERIES, "next_len": 4})
    assert refused.status_code == 503 and "crash loop" in refused.json()["error"]
    assert server.get("/readyz").status_code == 503
    assert server.post("/other", {"input": SERIES, "next_len": 4}).status_code == 200
    marker.unlink()  # the operator fixed the cause; a reload loads it again
    assert server.daemon.reload() is True
    assert info(server, "c")["status"] == "ready"
    assert server.post("/c", {"input": [1.0, 2.0], "next_len": 1}).json()["output"] == [3.0]


def test_a_worker_that_segfaults_on_load_fails_that_model_only(tsfmd_server, tmp_path):
    marker = tmp_path / "crash-now"
    marker.touch()
    server = tsfmd_server(
        entry("c", family="fault-test", extra=f"    options: {{crash_on_load_if: '{marker}'}}\n"
                                              "    required: false\n")
        + entry("other", isolation="inprocess"))
    found = info(server, "c")
    assert found["status"] == "failed"
    assert "SIGSEGV" in found["reason"] and "about to crash" in found["reason"]
    assert server.post("/other", {"input": SERIES, "next_len": 4}).status_code == 200


def test_the_workers_errors_come_back_typed(tsfmd_server):
    server = tsfmd_server(entry("t", family="fault-test"))
    refused = server.post("/t", {"input": [BAD, 1.0], "next_len": 2})
    assert refused.status_code == 400 and "refuses this series" in refused.json()["error"]
    broke = server.post("/t", {"input": [BOOM, 1.0], "next_len": 2})
    assert broke.status_code == 500 and "fault-test broke" in broke.json()["error"]
    assert info(server, "t")["worker"]["restarts"] == 0  # errors are answers, not deaths


def test_a_hung_worker_is_killed_and_replaced(tsfmd_server):
    server = tsfmd_server(entry("h", family="fault-test",
                                extra="    batching: {timeout_s: 2}\n")
                          + entry("other", isolation="inprocess"))
    pid = worker_pid(server, "h")
    executor = server.daemon.models.table.handles["h"].executor
    answer = []
    asked = time.monotonic()
    thread = threading.Thread(target=lambda: answer.append(
        server.post("/h", {"input": [HANG, 1.0], "next_len": 2})))
    thread.start()
    # while it hangs the daemon stays live (the systemd watchdog keeps being pinged)
    wait_until(lambda: info(server, "h")["batching"]["running"] == 1, timeout=10, interval=0.02)
    assert executor.liveness_problem(stale_after=5.0) is None
    assert server.post("/other", {"input": SERIES, "next_len": 4}).status_code == 200
    thread.join(30)
    took = time.monotonic() - asked
    print(f"hung request answered {answer[0].status_code} after {took:.2f}s (timeout_s 2)")
    assert answer[0].status_code in (503, 504) and took < 2 + 10
    new_pid = wait_until(lambda: worker_pid(server, "h") not in (None, pid) and
                         worker_pid(server, "h"), timeout=30)
    assert gone(pid) and new_pid != pid
    assert "timeout_s" in answer[0].json()["error"]
    assert server.post("/h", {"input": [1.0, 2.0], "next_len": 2}).json()["output"] == [3.0, 4.0]


def test_a_reload_ends_the_old_worker_and_frees_its_memory(tsfmd_server):
    server = tsfmd_server(entry("w"))
    old_pid = worker_pid(server, "w")
    before = rss_kib(old_pid)
    text = server.config_path.read_text().replace("    isolation: process\n",
                                                  "    isolation: process\n"
                                                  "    context_limit: 256\n")
    server.config_path.write_text(text)
    assert server.daemon.reload() is True
    new_pid = worker_pid(server, "w")
    print(f"old worker pid {old_pid}: RSS {before / 1024:.0f} MiB before the reload; "
          f"after: {'gone' if gone(old_pid) else rss_kib(old_pid)}; new worker pid "
          f"{new_pid}: RSS {rss_kib(new_pid) / 1024:.0f} MiB")
    assert new_pid != old_pid and gone(old_pid)
    assert before > 10 * 1024  # it held a real model (torch + weights)
    assert info(server, "w")["context_limit"] == 256
    assert server.post("/w", {"input": SERIES, "next_len": 4}).status_code == 200
