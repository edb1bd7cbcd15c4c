"""tsfmd.service under a real systemd 252 (PID 1 of a private namespace, see systemd_lab.py).

The unit is the shipped one, installed by `tsfmd install-unit`, running as the tsfmd user
the shipped sysusers file creates, with its whole sandbox; the lab's drop-in changes only
the registry path and shortens WatchdogSec. The tests run in file order against one lab:
start, forecast, reload, bad reload, logs, kill -> restart, watchdog, stop.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import free_port, wait_until
from systemd_lab import REPO, SystemdLab, unavailable_reason

UNIT = REPO / "packaging" / "systemd" / "tsfmd.service"
GPU = REPO / "packaging" / "systemd" / "gpu.conf"
TSFMD = str(Path(sys.executable).parent / "tsfmd")
MAX_EXPOSURE = 2.5

MODEL_A = """\
  fracast-a:
    family: fracast
    source: bundled
    device: cpu
"""
MODEL_B = """\
  fracast-b:
    family: fracast
    source: bundled
    device: cpu
    horizon_limit: 100
"""


def registry(port: int, models: str) -> str:
    return f"server:\n  host: 127.0.0.1\n  port: {port}\n  threads: 8\nmodels:\n{models}"


def body(n: int = 96, seed: int = 0) -> dict:
    t = np.arange(n)
    values = 20 + 5 * np.sin(t / 8) + np.random.default_rng(seed).normal(0, 0.2, n)
    return {"input": values.round(3).tolist(), "next_len": 12, "conf_interval": 0.8}


# -- the unit file, without running it ------------------------------------------------------

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def exposure(unit_path: Path) -> float:
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit_path)],
                         capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for tsfmd\.service: (\d+\.\d+)", out.stdout)
    assert match, f"no exposure in systemd-analyze output:\n{out.stdout}\n{out.stderr}"
    return float(match.group(1))


@needs_analyze
def test_installed_unit_verifies_clean(tmp_path):
    subprocess.run([TSFMD, "install-unit", "--root", str(tmp_path), "--gpu"], check=True,
                   capture_output=True, timeout=60)
    unit = tmp_path / "etc/systemd/system/tsfmd.service"
    assert f"ExecStart={TSFMD} serve --config /etc/tsfmd/tsfmd.yaml" in unit.read_text()
    assert f"ExecReload={TSFMD} reload --pid $MAINPID" in unit.read_text()
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


@needs_analyze
@pytest.mark.parametrize("dropins", [(), (GPU,)], ids=["shipped", "with-gpu-dropin"])
def test_security_exposure_at_most_2_5(tmp_path, dropins):
    shutil.copy(UNIT, tmp_path / "tsfmd.service")
    (tmp_path / "tsfmd.service.d").mkdir()
    for dropin in dropins:
        shutil.copy(dropin, tmp_path / "tsfmd.service.d" / dropin.name)
    assert exposure(tmp_path / "tsfmd.service") <= MAX_EXPOSURE


@needs_analyze
def test_exposure_check_sees_a_weakened_unit(tmp_path):
    """The number above is read from a real rating: a unit without its sandbox rates high."""
    text = UNIT.read_text()
    sandbox = text[text.index("# Sandboxing"):text.index("[Install]")]
    (tmp_path / "tsfmd.service").write_text(text.replace(sandbox, ""))
    assert exposure(tmp_path / "tsfmd.service") > 5.0


def install(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TSFMD, "install-unit", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60, check=True)


def test_install_unit_dry_run_writes_nothing(tmp_path):
    out = install(tmp_path, "--dry-run", "--gpu").stdout
    for path in ("etc/systemd/system/tsfmd.service", "etc/sysusers.d/tsfmd.conf",
                 "etc/tsfmd/tsfmd.yaml", "etc/systemd/system/tsfmd.service.d/gpu.conf"):
        assert f"would write {tmp_path / path}:" in out
    assert f"ExecStart={TSFMD} serve" in out
    assert list(tmp_path.iterdir()) == []


def test_install_unit_keeps_the_operators_registry(tmp_path):
    registry = tmp_path / "etc/tsfmd/tsfmd.yaml"
    registry.parent.mkdir(parents=True)
    registry.write_text("# mine\n")
    first = install(tmp_path).stdout
    assert f"kept     {registry} (already there)" in first
    assert registry.read_text() == "# mine\n"
    sysusers = tmp_path / "etc/sysusers.d/tsfmd.conf"
    assert sysusers.read_text() == (REPO / "packaging/sysusers.d/tsfmd.conf").read_text()
    assert f"replaced {tmp_path / 'etc/systemd/system/tsfmd.service'}" in install(tmp_path).stdout
    # a fresh root gets the embedded default registry
    fresh = tmp_path / "fresh"
    install(fresh)
    assert (fresh / "etc/tsfmd/tsfmd.yaml").read_text() == (
        REPO / "tsfmd/data/tsfmd.yaml").read_text()


def test_hidden_installation_is_bound_back_in():
    from tsfmd.daemon.install_unit import paths_dropin

    home = paths_dropin(["/root/.pyenv/versions/3.11.7", "/tmp/venv"])
    assert "ProtectHome=tmpfs\n" in home
    assert "BindReadOnlyPaths=/root/.pyenv/versions/3.11.7\nBindReadOnlyPaths=/tmp/venv\n" in home
    assert "ProtectHome" not in paths_dropin(["/tmp/venv"])  # PrivateTmp alone hides /tmp


# -- a real systemd ---------------------------------------------------------------------------

REASON = unavailable_reason()
pytestmark_lab = [pytest.mark.systemd, pytest.mark.slow,
                  pytest.mark.skipif(REASON is not None, reason=f"no systemd lab: {REASON}")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    port = free_port()
    lab = SystemdLab(tmp_path_factory.mktemp("systemd") / "lab", registry(port, MODEL_A))
    lab.url = f"http://127.0.0.1:{port}"
    lab.port = port
    try:
        lab.boot()
        yield lab
    finally:
        lab.teardown()


def post(lab, route, seed=0, timeout=30):
    return requests.post(lab.url + route, json=body(seed=seed), timeout=timeout)


def main_pid(lab) -> int:
    return int(lab.show("tsfmd.service", "MainPID")["MainPID"])


class TestUnderSystemd:
    pytestmark = pytestmark_lab

    def test_start_returns_only_when_serving(self, lab):
        result = lab.systemctl("start", "tsfmd.service")
        assert result.returncode == 0, result.stderr + lab.journal()
        # no waiting here: `systemctl start` returned, so READY=1 came, so it serves
        ready = requests.get(lab.url + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["models"] == ["fracast-a"]
        props = lab.show("tsfmd.service", "ActiveState", "SubState", "StatusText", "MainPID")
        assert (props["ActiveState"], props["SubState"]) == ("active", "running")
        assert props["StatusText"] == "serving 1 of 1 models"
        # it runs as the sysusers-created user, with the state directory systemd made for it
        # (MainPID is a pid of the lab's namespace: look at its /proc from inside)
        owners = lab.ns("stat", "-c", "%u", f"/proc/{props['MainPID']}", "/var/lib/tsfmd",
                        check=True).stdout.split()
        assert owners == [str(lab.user_id("tsfmd"))] * 2 and owners[0] != "0"

    def test_forecast(self, lab):
        r = post(lab, "/fracast-a")
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["status"] == "success" and len(reply["output"]) == 12
        assert all(lo <= mid <= hi for lo, mid, hi in
                   zip(reply["lower"], reply["output"], reply["upper"]))

    def test_reload_adds_a_model_with_zero_failed_requests(self, lab):
        results, stop = [], threading.Event()  # (sent, answered, status) per request

        def client(worker):
            for seed in range(worker * 10000, worker * 10000 + 5000):
                if stop.is_set():
                    break
                sent = time.monotonic()
                try:
                    status = post(lab, "/fracast-a", seed=seed).status_code
                except requests.RequestException as exc:
                    status = repr(exc)
                results.append((sent, time.monotonic(), status))

        loops = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for loop in loops:
            loop.start()
        try:
            wait_until(lambda: len(results) >= 3, timeout=30)
            lab.registry.write_text(registry(lab.port, MODEL_A + MODEL_B))
            began = time.monotonic()
            reload = lab.systemctl("reload", "tsfmd.service")
            ended = time.monotonic()
            # `systemctl reload` returned: the new model answers without any waiting
            added = post(lab, "/fracast-b")
        finally:
            stop.set()
            for loop in loops:
                loop.join(timeout=60)
        assert reload.returncode == 0, reload.stderr + lab.journal()
        assert added.status_code == 200, added.text
        overlapping = [s for sent, answered, s in results if sent <= ended and answered >= began]
        assert overlapping, "no request was in flight during the reload"
        failed = [s for _, _, s in results if s != 200]
        assert failed == [], f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
        assert "reload: done (added fracast-b; unchanged fracast-a)" in lab.journal()

    def test_broken_registry_reload_fails_and_old_models_serve(self, lab):
        good = lab.registry.read_text()
        lab.registry.write_text(good + "  fracast-c:\n    family: no-such-family\n"
                                       "    source: bundled\n")
        try:
            result = lab.systemctl("reload", "tsfmd.service")
            assert result.returncode != 0, "systemctl reload accepted a broken registry"
            for route in ("/fracast-a", "/fracast-b"):
                assert post(lab, route).status_code == 200
            status = lab.systemctl("status", "tsfmd.service").stdout
            assert "Active: active (running)" in status
            assert "Reload failed for tsfmd.service" in status
            assert "ExecReload=" in status and "status=1/FAILURE" in status
            assert re.search(r'Status: "reload failed \(1 problem\(s\): .*fracast-c\.family: '
                             r"unknown family 'no-such-family'", status), status
            reloads = requests.get(lab.url + "/v1/status", timeout=10).json()["reloads"]
            assert reloads["failed"] == 1 and reloads["last_successful"] is False
            # the refusal is an error-priority journal entry
            assert "reload refused" in lab.journal("tsfmd.service", "--priority=err")
        finally:
            lab.registry.write_text(good)

    def test_journal_has_request_lines(self, lab):
        journal = lab.journal()
        assert re.search(r"^INFO tsfmd\.access: POST /fracast-a 200 \d+\.\d{3}s 127\.0\.0\.1$",
                         journal, re.MULTILINE), journal[-3000:]
        assert re.search(r"^INFO tsfmd\.access: POST /fracast-b 200 ", journal, re.MULTILINE)
        # info lines are not errors: the level prefix reached journald as the priority
        assert "tsfmd.access" not in lab.journal("tsfmd.service", "--priority=warning")

    def test_kill_is_followed_by_an_automatic_restart(self, lab):
        before = main_pid(lab)
        lab.systemctl("kill", "-s", "KILL", "tsfmd.service", check=True)

        def restarted():
            props = lab.show("tsfmd.service", "MainPID", "ActiveState", "NRestarts")
            if props["ActiveState"] == "active" and props["MainPID"] not in ("0", str(before)):
                return props
            return None

        props = wait_until(restarted, timeout=90, interval=0.3)
        assert props["NRestarts"] == "1"
        # the restart read the registry on disk: both models serve again
        assert post(lab, "/fracast-b").status_code == 200

    def test_watchdog_kept_the_service_alive(self, lab):
        """WATCHDOG=1 keeps coming: past a whole WatchdogSec no watchdog restart happens
        and systemd's watchdog timestamp moves on."""
        first = lab.show("tsfmd.service", "WatchdogTimestampMonotonic")
        time.sleep(lab.watchdog_sec * 1.5)
        props = lab.show("tsfmd.service", "WatchdogTimestampMonotonic", "NRestarts", "WatchdogUSec")
        assert props["WatchdogUSec"] == f"{lab.watchdog_sec}s"
        assert int(props["WatchdogTimestampMonotonic"]) > int(first["WatchdogTimestampMonotonic"])
        assert props["NRestarts"] == "1"  # only the kill above

    def test_stop_exits_cleanly(self, lab):
        pid = main_pid(lab)
        result = lab.systemctl("stop", "tsfmd.service")
        assert result.returncode == 0, result.stderr
        props = lab.show("tsfmd.service", "ActiveState", "Result", "ExecMainStatus")
        assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
        journal = lab.journal()
        this_stop = journal[journal.rindex("Stopping tsfmd"):]
        assert "INFO tsfmd.server: stopped" in this_stop
        assert "tsfmd.service: Deactivated successfully." in this_stop, this_stop
        assert "Failed" not in this_stop and "status=" not in this_stop, this_stop
        assert lab.ns("test", "-e", f"/proc/{pid}").returncode == 1  # the process is gone
        with pytest.raises(requests.ConnectionError):
            requests.get(lab.url + "/healthz", timeout=5)

    def test_invalid_registry_at_start_fails_without_a_restart_loop(self, lab):
        """Exit 2 (invalid registry) is in RestartPreventExitStatus=: restarting cannot fix
        a file, so the unit fails once, visibly, instead of cycling."""
        good = lab.registry.read_text()
        lab.registry.write_text(good.replace("family: fracast", "family: fracastt", 1))
        try:
            before = int(lab.show("tsfmd.service", "NRestarts")["NRestarts"])
            assert lab.systemctl("start", "tsfmd.service").returncode != 0
            time.sleep(3)  # past RestartSec=2: a restart would have happened by now
            props = lab.show("tsfmd.service", "ActiveState", "Result", "ExecMainStatus",
                             "NRestarts")
            assert props == {"ActiveState": "failed", "Result": "exit-code",
                             "ExecMainStatus": "2", "NRestarts": str(before)}, props
            assert "unknown family 'fracastt'" in lab.journal("tsfmd.service", "--priority=err")
        finally:
            lab.registry.write_text(good)
            lab.systemctl("reset-failed", "tsfmd.service")
