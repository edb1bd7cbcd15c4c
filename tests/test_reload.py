"""Reload semantics, with nginx and Prometheus as the anchor, on a real in-process Daemon
(waitress on loopback, a real YAML registry, real fracast weights, sd_notify to a socket).

- A changed model whose new version fails to load keeps its working version; the reload
  fails, naming the model and the reason (STATUS=, /v1/status, `tsfmd reload` exit 1),
  and the rest of the registry applies.
- Settings that do not decide the loaded model (routes, aliases, batching, limits tsfmd
  enforces, description, adapter, required) apply around the same loaded object.
- A no-op reload reports no change: a failed model is retried only once its files are on
  this machine, never through the network.
- /v1/status shows the last reload's outcome and does not count itself in flight.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import requests

import huggingface_hub
from conftest import wait_until
from hubcache import fracast_checkpoint, put_in_hub_cache
from test_lifecycle import (  # the in-process daemon with its notify socket, and a gate family
    ENTERED, GATES, Lifecycle, signal_handlers,  # noqa: F401 (signal_handlers: a fixture)
)
from tsfmd import families
from tsfmd.families import register_family
from tsfmd.core.models import FAILED, READY


@pytest.fixture(autouse=True, scope="module")
def gate_family():
    register_family("reload-gate", "test_lifecycle:GateFamily")
    yield
    families._FAMILIES.pop("reload-gate", None)  # no public unregister; tests only


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """The daemon's state dir (hub downloads under <it>/hub), as systemd would pass it."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    return state


@pytest.fixture
def daemon(tmp_path, state_dir):
    made = []

    def make(models: str) -> Lifecycle:
        made.append(Lifecycle(tmp_path, models))
        return made[-1].start()

    yield make
    for life in made:
        life.close()


def entry(key: str, source="bundled", extra: str = "", family: str = "fracast") -> str:
    return f"  {key}:\n    family: {family}\n    source: {source}\n    device: cpu\n{extra}"


def handles(life):
    return life.daemon.models.table.handles


def model_info(life, key: str) -> dict:
    models = requests.get(life.url + "/v1/models", timeout=10).json()["models"]
    return next(m for m in models if m["key"] == key)


def forecast(life, route: str, next_len: int = 8):
    values = (np.sin(np.arange(64) / 5.0) * 3 + 10).tolist()
    return requests.post(life.url + route, json={"input": values, "next_len": next_len},
                         timeout=60)


# -- a failed change --------------------------------------------------------------------


def test_a_change_that_fails_to_load_keeps_the_working_model(daemon, tmp_path):
    checkpoint = fracast_checkpoint(tmp_path / "fc")
    life = daemon(entry("a", checkpoint) + entry("b"))
    loaded = handles(life)["a"].model
    life.notify.messages.clear()
    gone = tmp_path / "gone"
    life.write(entry("a", gone, "    description: moved\n") + entry("b", extra=(
        "    context_limit: 100\n")) + entry("c"))

    assert life.daemon.reload() is False

    a = handles(life)["a"]
    assert a.model is loaded and a.status == READY  # the working version serves on
    assert a.spec.source == str(checkpoint) and a.spec.description == "moved"
    assert forecast(life, "/a").status_code == 200
    # the rest of the registry applied: b reloaded with its new limit, c added
    assert handles(life)["b"].caps.context_limit == 100
    assert forecast(life, "/c").status_code == 200
    reloads = life.status()["reloads"]
    assert (reloads["last_successful"], reloads["failed"], reloads["succeeded"]) == (False, 1, 0)
    assert reloads["last_error"].startswith(f"a failed to load: weights not found at {gone}")
    assert reloads["last_error"].endswith("its previous version keeps serving")
    changes = reloads["last_changes"]
    assert (changes["failed"], changes["changed"], changes["added"]) == (["a"], ["b"], ["c"])
    said = wait_until(lambda: life.notify.having("READY"), timeout=5)[-1]["STATUS"]
    assert said.startswith(f"reload failed (1 problem(s): a failed to load: weights not "
                           f"found at {gone}")
    assert said.endswith("; the rest applied: serving 3 of 3 models")
    assert model_info(life, "a")["reload_error"].startswith(f"weights not found at {gone}")

    # The registry still asks for the new version: each reload tries it (and fails) until
    # its files are there; then it loads and replaces the old one.
    assert life.daemon.reload() is False and handles(life)["a"].model is loaded
    fracast_checkpoint(gone)
    assert life.daemon.reload() is True
    a = handles(life)["a"]
    assert a.model is not loaded and a.spec.source == str(gone)
    reloads = life.status()["reloads"]
    assert reloads["last_changes"]["changed"] == ["a"] and reloads["last_error"] == ""
    assert "reload_error" not in model_info(life, "a")


def test_tsfmd_reload_exits_1_naming_the_model(daemon, tmp_path, signal_handlers):
    life = daemon(entry("a"))
    life.daemon.install_signal_handlers()
    life.run_main_loop()
    command = [str(Path(sys.executable).parent / "tsfmd"), "reload", "--url", life.url,
               "--pid", str(os.getpid()), "--timeout", "120"]
    gone = tmp_path / "gone"

    life.write(entry("a", gone) + entry("b"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith(f"tsfmd reload: failed: a failed to load: weights not found "
                                  f"at {gone}")
    assert done.stderr.strip().endswith("the rest of the registry applies (added b; failed a)")
    assert forecast(life, "/a").status_code == 200 and forecast(life, "/b").status_code == 200

    # a model marked `required: false` that fails is a warning: the reload succeeds
    life.write(entry("a") + entry("b") + entry("extra", gone, "    required: false\n"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tsfmd reload: done (failed extra; unchanged a, b)"
    assert done.stderr.startswith(
        f"tsfmd reload: warning: extra (not required) failed to load: weights not found at {gone}")
    assert life.status()["reloads"]["last_successful"] is True
    assert "reload_error" not in model_info(life, "a")  # its entry is back to what serves

    # the same failed model made required, nothing else changed: the reload fails, since
    # /readyz is now 503 (it is not retried: its files did not appear)
    life.write(entry("a") + entry("b") + entry("extra", gone, "    required: true\n"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stdout
    assert "extra is required and not available: weights not found" in done.stderr
    assert requests.get(life.url + "/readyz", timeout=10).status_code == 503


def test_reload_config_names_the_daemon_even_where_a_runtime_address_exists(
        tmp_path, monkeypatch):
    from tsfmd.daemon.reload import daemon_url

    runtime = tmp_path / "run"
    runtime.mkdir()
    (runtime / "address").write_text("http://127.0.0.1:5999\n")
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime))
    config = tmp_path / "mine.yaml"
    config.write_text("server: {port: 6123}\nmodels:\n" + entry("a"))
    assert daemon_url(None, str(config)) == "http://127.0.0.1:6123"
    assert daemon_url(None, None) == "http://127.0.0.1:5999"  # systemd's ExecReload: no --config
    assert daemon_url("http://[::1]:7000/", str(config)) == "http://[::1]:7000"


# -- settings that do not change the loaded model ------------------------------------------


def test_settings_only_changes_keep_the_loaded_model(daemon):
    life = daemon(entry("a", extra="    description: first\n"))
    old = handles(life)["a"]
    loaded, executor = old.model, old.executor

    life.write(entry("a", extra="    description: second\n"))
    assert life.daemon.reload() is True
    new = handles(life)["a"]
    assert new.model is loaded and new.executor is executor  # nothing reloaded or rebuilt
    assert model_info(life, "a")["description"] == "second"
    assert life.status()["reloads"]["last_changes"]["reconfigured"] == ["a"]

    life.write(entry("a", extra=(
        "    route: /moved\n    aliases: [/also]\n    horizon_limit: 10\n    required: false\n"
        "    batching: {max_batch: 2, max_wait_ms: 1}\n    adapter: {read_timeout_s: 30}\n")))
    assert life.daemon.reload() is True
    new = handles(life)["a"]
    assert new.model is loaded and new.executor is not executor  # a batching change
    assert new.executor.describe()["max_batch"] == 2
    assert forecast(life, "/moved").status_code == 200
    assert forecast(life, "/also").status_code == 200
    assert forecast(life, "/a").status_code == 404
    too_long = forecast(life, "/moved", next_len=11)  # the new limit, tsfmd enforces it
    assert too_long.status_code == 400 and "at most 10 points" in too_long.json()["error"]
    changes = life.status()["reloads"]["last_changes"]
    assert changes["reconfigured"] == ["a"] and changes["changed"] == []


def test_a_changed_or_removed_model_is_freed_by_the_time_the_reload_returns(daemon, tmp_path):
    """Nothing holds the old versions once the reload returns (no test-side gc), so the
    memory apply then gives back to the OS (tsfmd/core/heap.py) includes theirs."""
    life = daemon(entry("a") + entry("b"))
    assert forecast(life, "/a").status_code == 200 and forecast(life, "/b").status_code == 200
    old_a, old_b = weakref.ref(handles(life)["a"].model), weakref.ref(handles(life)["b"].model)
    life.write(entry("a", fracast_checkpoint(tmp_path / "fc")))  # a changed, b removed

    assert life.daemon.reload() is True
    assert old_a() is None and old_b() is None
    assert forecast(life, "/a").status_code == 200 and forecast(life, "/b").status_code == 404


def test_a_request_on_the_old_executor_finishes_when_batching_changes(daemon):
    GATES["rebatch"], ENTERED["rebatch"] = threading.Event(), threading.Event()
    gate = "  held:\n    family: reload-gate\n    source: none\n    options: {gate: rebatch}\n"
    life = daemon(gate)
    old = handles(life)["held"]
    answer = {}
    client = threading.Thread(target=lambda: answer.update(r=life.post("/held")))
    client.start()
    assert ENTERED["rebatch"].wait(timeout=10)

    life.write(gate + "    batching: {max_batch: 2}\n")
    reload = threading.Thread(target=life.daemon.reload)
    reload.start()
    wait_until(lambda: handles(life)["held"] is not old, timeout=30)
    assert reload.is_alive()  # it waits for the request held on the old executor
    GATES["rebatch"].set()
    client.join(timeout=30)
    reload.join(timeout=30)
    assert answer["r"].status_code == 200, answer["r"].text
    new = handles(life)["held"]
    assert new.model is not None and new.executor is not old.executor
    assert life.status()["reloads"]["last_changes"]["reconfigured"] == ["held"]


# -- no-op reloads and failed models ------------------------------------------------------


@pytest.fixture
def hub_calls(monkeypatch):
    """Every snapshot_download tsfmd makes, with the hub switched *on*: a call that would
    use the network is recorded and refused here (tests never reach the network)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    real = huggingface_hub.snapshot_download
    calls = []

    def spy(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            calls.append(kwargs.get("repo_id"))
            raise OSError("the network is not reachable from tests")
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    return calls


def test_noop_reload_reports_no_change_and_never_goes_to_the_network(
        daemon, state_dir, tmp_path, hub_calls):
    life = daemon(entry("a") + entry("hubbed", "nobody/fracast-copy", "    required: false\n"))
    failed = handles(life)["hubbed"]
    assert failed.status == FAILED and hub_calls == ["nobody/fracast-copy"]  # the start tried
    assert f"tsfmd pull nobody/fracast-copy --state-dir {state_dir}" in failed.reason
    before = dict(handles(life))
    hub_calls.clear()

    assert life.daemon.reload() is True
    assert handles(life) == before and all(handles(life)[k] is before[k] for k in before)
    changes = life.status()["reloads"]["last_changes"]
    assert changes["unchanged"] == ["a", "hubbed"]
    assert not any(changes[kind] for kind in changes if kind != "unchanged")
    assert hub_calls == []

    # The weights arrive where the 503 said (as `tsfmd pull` leaves them):
    # the next reload loads them from the cache, reported as retried, not changed.
    put_in_hub_cache(state_dir / "hub", "nobody/fracast-copy", fracast_checkpoint(tmp_path / "fc"))
    assert life.daemon.reload() is True
    changes = life.status()["reloads"]["last_changes"]
    assert changes["retried"] == ["hubbed"] and changes["changed"] == []
    assert handles(life)["a"] is before["a"]
    assert forecast(life, "/hubbed").status_code == 200
    assert life.daemon.reload() is True
    assert life.status()["reloads"]["last_changes"]["unchanged"] == ["a", "hubbed"]
    assert hub_calls == []


def test_status_shows_the_last_reload_and_not_itself(daemon):
    life = daemon(entry("a"))
    assert life.status()["in_flight"] == 0  # the status request does not count itself
    life.write(entry("a") + entry("b"))
    assert life.daemon.reload() is True
    assert life.status()["reloads"]["last_changes"]["added"] == ["b"]

    life.config.write_text("models: [not, a, mapping]\n")
    assert life.daemon.reload() is False
    reloads = life.status()["reloads"]
    assert reloads["last_changes"] == {}  # this reload applied nothing
    assert "models: must be a mapping" in reloads["last_error"]
    assert life.status()["in_flight"] == 0


def test_an_unknown_option_fails_the_load_naming_it(daemon):
    life = daemon(entry("a") + entry("typo", extra="    options: {wieghts: w8}\n"))
    typo = handles(life)["typo"]
    assert typo.status == FAILED
    assert typo.reason == "options.wieghts: unknown option (this family takes: weights)"
    assert forecast(life, "/a").status_code == 200
