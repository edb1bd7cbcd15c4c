"""The daemon's lifecycle in-process: start, reload (SIGHUP), watchdog and stop (SIGTERM).

A real Daemon (waitress on a loopback port, a real YAML registry) talks sd_notify to a
datagram socket this test binds, as systemd's would be; the tests read what it said.
Besides the real fracast model, a tiny `lifecycle-gate` family (registered through the
public family table) lets a test hold a load or a forecast open until it says so: there
is no other way to have a request reliably in flight when the stop or reload comes.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import requests

from conftest import free_port, registry_yaml, wait_until
from tsfmd import families
from tsfmd.families import register_family
from tsfmd.families.base import Capabilities, Family, Forecast, LoadSpec
from tsfmd.daemon.notify import Notifier
from tsfmd.daemon.server import Daemon

# -- a family whose load and forecast wait for the test ------------------------------------

GATES: Dict[str, threading.Event] = {}  # gate name -> opened by the test
ENTERED: Dict[str, threading.Event] = {}  # gate name -> a forecast is waiting at it


class GateFamily(Family):
    """Forecasts the last value; `options.gate` names an Event the forecast waits for,
    `options.load_seconds` makes the load take that long."""

    name = "lifecycle-gate"

    def __init__(self, gate: str):
        self.gate = gate

    @classmethod
    def load(cls, spec: LoadSpec) -> "GateFamily":
        time.sleep(float(spec.options.get("load_seconds", 0)))
        return cls(str(spec.options.get("gate", "")))

    def capabilities(self) -> Capabilities:
        return Capabilities(context_limit=512, horizon_limit=64)

    def warm_up(self) -> None:
        pass

    def forecast(self, batch, horizon: int) -> Forecast:
        if self.gate:
            ENTERED[self.gate].set()
            assert GATES[self.gate].wait(timeout=60), f"gate {self.gate} never opened"
        point = np.array([[s.values[-1]] * horizon for s in batch], dtype=np.float64)
        return Forecast(point=point)


@pytest.fixture(autouse=True, scope="module")
def gate_family():
    """Registered for this module's tests only, so no other test sees it among the families."""
    register_family("lifecycle-gate", f"{__name__}:GateFamily")
    yield
    families._FAMILIES.pop("lifecycle-gate", None)  # no public unregister; tests only


# -- sd_notify, as systemd receives it ---------------------------------------------------------


class NotifySocket:
    """A bound AF_UNIX datagram socket collecting sd_notify messages as dicts."""

    def __init__(self):
        self._dir = tempfile.mkdtemp(prefix="tsfmd-notify-")  # short: sun_path is 108 bytes
        self.path = os.path.join(self._dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: List[Dict[str, str]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self):
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append(
                dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            )

    def having(self, key: str) -> List[Dict[str, str]]:
        return [m for m in self.messages if key in m]

    def close(self):
        self._closed.set()
        self._thread.join(timeout=5)
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self._dir)


class Lifecycle:
    """A Daemon on a loopback port whose sd_notify goes to a NotifySocket."""

    def __init__(self, tmp_path: Path, models: str, threads: int = 8):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "tsfmd.yaml"
        self.threads = threads
        self.write(models)
        self.notify = NotifySocket()
        self.daemon = Daemon(str(self.config), notifier=Notifier(self.notify.path))
        self.loop = None

    def write(self, models: str) -> None:
        self.config.write_text(registry_yaml(models, self.port).replace(
            "threads: 16", f"threads: {self.threads}"))

    def start(self) -> "Lifecycle":
        started = threading.Thread(target=self.daemon.start, daemon=True)
        started.start()
        started.join(120)
        assert not started.is_alive(), "the daemon did not finish starting"
        wait_until(lambda: self.notify.having("READY"), timeout=10)  # sent, now also received
        return self

    def run_main_loop(self) -> None:
        """The CLI's main loop (signals -> reload/stop) on a thread of its own."""
        self.loop = threading.Thread(target=self.daemon.run_until_stopped, daemon=True)
        self.loop.start()

    def post(self, route: str, n: int = 64, seed: int = 0, timeout: float = 60):
        values = np.sin(np.arange(n) / 5.0) * 3 + 10 + seed * 1e-3
        return requests.post(self.url + route, json={"input": values.tolist(), "next_len": 8},
                             timeout=timeout)

    def status(self) -> dict:
        return requests.get(self.url + "/v1/status", timeout=10).json()

    def close(self) -> None:
        if self.loop is not None and self.loop.is_alive():
            self.daemon.request_stop()
            self.loop.join(timeout=30)
        elif self.daemon.server is not None and not self.daemon._stop.is_set():
            self.daemon.stop(drain_seconds=5)
        self.notify.close()


@pytest.fixture
def lifecycle(tmp_path):
    made = []

    def make(models: str, threads: int = 8) -> Lifecycle:
        made.append(Lifecycle(tmp_path, models, threads))
        return made[-1].start()

    yield make
    for item in made:
        item.close()


@pytest.fixture
def signal_handlers():
    """Install the daemon's handlers in this (main) thread, restore pytest's afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def fracast(key: str, extra: str = "") -> str:
    return f"  {key}:\n    family: fracast\n    source: bundled\n    device: cpu\n{extra}"


def gate(key: str, extra: str = "") -> str:
    return f"  {key}:\n    family: lifecycle-gate\n    source: none\n{extra}"


# -- start ------------------------------------------------------------------------------------


def test_ready_comes_after_every_model_loaded_or_failed(lifecycle):
    life = lifecycle(fracast("good") + fracast("missing").replace(
        "source: bundled", "source: /nonexistent/fracast") + gate("slow", (
            "    options:\n      load_seconds: 3\n")))
    ready = wait_until(lambda: life.notify.having("READY"), timeout=5)
    assert len(ready) == 1
    status = ready[0]["STATUS"]
    assert status.startswith("serving 2 of 3 models; missing failed: ")
    assert "/nonexistent/fracast" in status
    first = life.notify.messages[0]["STATUS"]
    assert first == f"listening on {life.url}; loading 3 model(s)"
    # the 3 s load asked systemd for more time before READY=1, naming what still loads
    extend = life.notify.having("EXTEND_TIMEOUT_USEC")
    assert extend and life.notify.messages.index(extend[0]) < life.notify.messages.index(ready[0])
    assert int(extend[0]["EXTEND_TIMEOUT_USEC"]) >= 10_000_000
    assert all(m["STATUS"].startswith("loading ") for m in extend)
    assert "slow" in extend[0]["STATUS"]  # the first report comes within ~2 s of 3
    assert life.post("/good").status_code == 200
    assert life.post("/missing").status_code == 503


# -- reload -----------------------------------------------------------------------------------


def test_reload_adds_changes_removes_and_keeps_unchanged_models(lifecycle):
    life = lifecycle(fracast("keep") + fracast("change") + fracast("drop"))
    before = dict(life.daemon.models.table.handles)
    life.notify.messages.clear()
    life.write(fracast("keep") + fracast("change", "    context_limit: 50\n") + fracast("new"))

    assert life.daemon.reload() is True

    after = life.daemon.models.table.handles
    assert after["keep"] is before["keep"] and after["keep"].model is not None  # untouched
    assert after["change"] is not before["change"] and after["change"].caps.context_limit == 50
    assert before["change"].model is None and before["drop"].model is None  # released
    assert set(after) == {"keep", "change", "new"}
    assert life.post("/new").status_code == 200
    assert life.post("/drop").status_code == 404
    reloads = life.status()["reloads"]
    assert reloads["succeeded"] == 1 and reloads["failed"] == 0
    assert reloads["last_changes"] == {"added": ["new"], "changed": ["change"],
                                       "reconfigured": [], "retried": [], "failed": [],
                                       "removed": ["drop"], "unchanged": ["keep"]}
    wait_until(lambda: life.notify.having("READY"), timeout=5)
    said = life.notify.messages
    assert said[0]["RELOADING"] == "1" and int(said[0]["MONOTONIC_USEC"]) > 0
    assert said[-1]["READY"] == "1" and said[-1]["STATUS"] == "reloaded: serving 3 of 3 models"


def test_bad_registry_is_refused_and_counted(lifecycle):
    life = lifecycle(fracast("a"))
    handle = life.daemon.models.table.handles["a"]
    life.config.write_text(life.config.read_text() + "  b:\n    family: fracast\n    route: nope\n")
    life.notify.messages.clear()

    assert life.daemon.reload() is False
    assert life.daemon.reload() is False

    reloads = life.status()["reloads"]
    assert (reloads["failed"], reloads["succeeded"], reloads["last_successful"]) == (2, 0, False)
    assert "models.b.source: missing" in reloads["last_error"]
    assert "models.b.route: must be a path like /name, got 'nope'" in reloads["last_error"]
    assert life.daemon.models.table.handles["a"] is handle
    assert life.post("/a").status_code == 200
    ready = wait_until(lambda: life.notify.having("READY")[1:], timeout=5)[-1]["STATUS"]
    assert ready.startswith("reload failed (2 problem(s): ")
    assert ready.endswith("; serving 1 of 1 models from the previous registry")
    # a good registry afterwards is taken and clears the error
    life.write(fracast("a") + fracast("b"))
    assert life.daemon.reload() is True
    reloads = life.status()["reloads"]
    assert (reloads["succeeded"], reloads["last_successful"]) == (1, True)
    assert reloads["last_error"] == ""


@pytest.mark.slow
def test_zero_failed_requests_while_reloading(lifecycle):
    """Client loops on an unchanged and on a changed model while the registry flips
    three times; every request is answered 200."""
    life = lifecycle(fracast("steady") + fracast("flip"))
    results, stop = [], threading.Event()

    def client(route, worker):
        for seed in range(2000):
            if stop.is_set():
                return
            try:
                results.append((route, life.post(route, seed=worker * 10000 + seed).status_code))
            except requests.RequestException as exc:
                results.append((route, repr(exc)))

    loops = [threading.Thread(target=client, args=(r, i))
             for i, r in enumerate(["/steady", "/steady", "/flip", "/flip"])]
    for loop in loops:
        loop.start()
    try:
        wait_until(lambda: len(results) >= 4, timeout=30)
        for limit in (40, 60, 80):
            seen = len(results)
            life.write(fracast("steady") + fracast("flip", f"    horizon_limit: {limit}\n"))
            assert life.daemon.reload() is True
            assert life.daemon.models.table.handles["flip"].caps.horizon_limit == limit
            wait_until(lambda: len(results) >= seen + 4, timeout=30)  # traffic went on
    finally:
        stop.set()
        for loop in loops:
            loop.join(timeout=60)
    failed = [r for r in results if r[1] != 200]
    assert failed == [], f"{len(failed)} of {len(results)} failed: {failed[:5]}"
    assert {r for r, _ in results} == {"/steady", "/flip"}


def test_reload_lets_requests_on_a_replaced_model_finish(lifecycle):
    """One request runs on a model the reload replaces, one waits in its queue: both are
    answered by the old model, and only then is it closed."""
    GATES["swap"], ENTERED["swap"] = threading.Event(), threading.Event()
    life = lifecycle(gate("held", "    options:\n      gate: swap\n"))
    old = life.daemon.models.table.handles["held"]
    answers = []
    clients = [threading.Thread(target=lambda s=seed: answers.append(life.post("/held", seed=s)))
               for seed in (1, 2)]
    clients[0].start()
    assert ENTERED["swap"].wait(timeout=10)
    clients[1].start()
    wait_until(lambda: life.daemon.inflight.count == 2, timeout=10)

    life.write(gate("held", "    context_limit: 100\n    options:\n      gate: swap\n"))
    reload = threading.Thread(target=life.daemon.reload)
    reload.start()
    wait_until(lambda: life.daemon.models.table.handles["held"] is not old, timeout=30)
    time.sleep(0.3)  # the switch is done; the old model must stay open for its requests
    assert old.model is not None and reload.is_alive() and not answers
    GATES["swap"].set()
    for client in clients:
        client.join(timeout=30)
    reload.join(timeout=30)
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert old.model is None  # closed once they were done
    assert life.status()["reloads"]["succeeded"] == 1


def test_sighup_and_tsfmd_reload_command(lifecycle, signal_handlers):
    """`tsfmd reload` (the unit's ExecReload) signals the process, waits for the reload it
    caused, and exits 0 once the new model serves, 1 when the registry is refused."""
    life = lifecycle(fracast("a"))
    life.daemon.install_signal_handlers()
    life.run_main_loop()
    command = [str(Path(sys.executable).parent / "tsfmd"), "reload", "--url", life.url,
               "--pid", str(os.getpid()), "--timeout", "120"]

    life.write(fracast("a") + fracast("b"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tsfmd reload: done (added b; unchanged a)"
    assert life.post("/b").status_code == 200  # no waiting: the reload is done

    life.config.write_text("models: [not, a, mapping]\n")
    refused = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert refused.returncode == 1
    assert "refused, the previous registry keeps serving" in refused.stderr
    assert "models: must be a mapping" in refused.stderr
    assert life.post("/b").status_code == 200
    assert life.status()["reloads"]["finished"] == 2


# -- watchdog ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_watchdog_pings_while_every_request_thread_is_held(tmp_path, monkeypatch):
    """Pings come from in-process liveness (the server loop, the model workers), not from an
    HTTP call to /healthz: a forecast holding the only request thread is load, not a wedge,
    and must not get the daemon restarted (test_overload.py wedges the loop itself)."""
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WatchdogSec=0.4 s: a ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    GATES["wedge"], ENTERED["wedge"] = threading.Event(), threading.Event()
    life = Lifecycle(tmp_path, gate("held", "    options:\n      gate: wedge\n"), threads=1)
    try:
        life.start()
        wait_until(lambda: len(life.notify.having("WATCHDOG")) >= 3, timeout=10)
        held = threading.Thread(target=life.post, args=("/held",))
        held.start()
        assert ENTERED["wedge"].wait(timeout=10)  # the only request thread is taken
        taken_at = len(life.notify.having("WATCHDOG"))
        wait_until(lambda: len(life.notify.having("WATCHDOG")) >= taken_at + 3, timeout=10)
        GATES["wedge"].set()
        held.join(timeout=30)
    finally:
        GATES["wedge"].set()
        life.close()


# -- stop -------------------------------------------------------------------------------------


def refused(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
    except requests.ConnectionError:
        return True
    return False


def test_sigterm_lets_the_request_in_flight_finish(lifecycle, signal_handlers):
    GATES["stop"], ENTERED["stop"] = threading.Event(), threading.Event()
    life = lifecycle(gate("held", "    options:\n      gate: stop\n"))
    life.daemon.install_signal_handlers()
    life.run_main_loop()
    answer = {}
    held = threading.Thread(target=lambda: answer.update(r=life.post("/held")))
    held.start()
    assert ENTERED["stop"].wait(timeout=10)
    assert life.status()["in_flight"] == 1  # the held forecast, not this status request

    os.kill(os.getpid(), signal.SIGTERM)

    wait_until(lambda: life.notify.having("STOPPING"), timeout=10)
    # no new connections once stopping; the one in flight is still being served
    wait_until(lambda: refused(life.url + "/healthz"), timeout=10)
    assert life.loop.is_alive() and held.is_alive()
    GATES["stop"].set()
    held.join(timeout=30)
    life.loop.join(timeout=30)
    assert not life.loop.is_alive(), "the daemon did not finish stopping"
    assert answer["r"].status_code == 200 and answer["r"].json()["output"][0] == pytest.approx(
        np.sin(63 / 5.0) * 3 + 10)
    # answered during the stop: the client is told not to reuse the connection
    assert answer["r"].headers["Connection"] == "close"
    assert life.notify.having("STOPPING")[0]["STATUS"].startswith("stopping")


def test_stop_is_bounded_when_a_forward_pass_outlives_the_drain(lifecycle):
    """A forecast still running when the drain ends no longer holds the stop for another
    30 s (the worker's join): the models are released within the bound, and the daemon
    says the work was abandoned, so `tsfmd serve` exits 0 at once instead of aborting."""
    GATES["long"], ENTERED["long"] = threading.Event(), threading.Event()
    life = lifecycle(gate("slow", "    options:\n      gate: long\n"))
    client = threading.Thread(target=lambda: life.post("/slow", timeout=90), daemon=True)
    client.start()
    assert ENTERED["long"].wait(timeout=10)
    began = time.monotonic()
    try:
        life.daemon.stop(drain_seconds=1.0)
        took = time.monotonic() - began
    finally:
        GATES["long"].set()  # let the abandoned forward pass end, for the next tests
    assert life.daemon.abandoned_work is True
    # the bound is drain (1 s) + at least 1 s to release; before, the join added 30 s
    assert took < 20, f"the stop took {took:.1f}s"
    assert wait_until(lambda: life.notify.having("STOPPING"), timeout=10)
    client.join(timeout=30)
