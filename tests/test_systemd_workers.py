"""Worker processes under a real systemd (see systemd_lab.py): the shipped unit, its sandbox.

A worker lives in the unit's cgroup; a SIGKILLed worker is restarted by tsfmd, not by
systemd (no unit restart, the same MainPID); `systemctl stop` leaves no worker behind.
Tests run in file order against one lab. `systemd-analyze security` of the unit is checked
by test_systemd.py::test_security_exposure_at_most_2_5 (the unit is unchanged by workers).
"""
from __future__ import annotations

import pytest
import requests

from conftest import free_port, wait_until
from systemd_lab import SystemdLab, unavailable_reason
from test_systemd import body, main_pid, registry

REASON = unavailable_reason()
pytestmark = [pytest.mark.systemd, pytest.mark.slow,
              pytest.mark.skipif(REASON is not None, reason=f"no systemd lab: {REASON}")]

MODELS = """\
  fracast-w:
    family: fracast
    source: bundled
    device: cpu
    isolation: process
  fracast-a:
    family: fracast
    source: bundled
    device: cpu
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    port = free_port()
    lab = SystemdLab(tmp_path_factory.mktemp("systemd-workers") / "lab", registry(port, MODELS))
    lab.url = f"http://127.0.0.1:{port}"
    try:
        lab.boot()
        yield lab
    finally:
        lab.teardown()


def worker(lab) -> dict:
    models = requests.get(lab.url + "/v1/models", timeout=10).json()["models"]
    found = next(m for m in models if m["key"] == "fracast-w")
    return dict(found["worker"], status=found["status"])


def alive_in_lab(lab, pid) -> bool:
    """The lab's pids are its own namespace's: look at its /proc from inside."""
    return lab.ns("test", "-e", f"/proc/{pid}").returncode == 0


def post(lab, route):
    return requests.post(lab.url + route, json=body(), timeout=60)


def test_the_worker_runs_in_the_units_cgroup(lab):
    result = lab.systemctl("start", "tsfmd.service")
    assert result.returncode == 0, result.stderr + lab.journal()
    assert post(lab, "/fracast-w").json()["output"] == post(lab, "/fracast-a").json()["output"]
    pid = worker(lab)["pid"]
    cgroup = lab.ns("cat", f"/proc/{pid}/cgroup", check=True).stdout
    assert "/tsfmd.service" in cgroup, cgroup
    owner = lab.ns("stat", "-c", "%u", f"/proc/{pid}", check=True).stdout.strip()
    assert owner == str(lab.user_id("tsfmd"))  # the unit's user, its sandbox


def test_a_killed_worker_restarts_the_worker_not_the_unit(lab):
    before = main_pid(lab)
    old = wait_until(lambda: (w := worker(lab))["standby_pid"] and w, timeout=60)
    lab.ns("kill", "-KILL", str(old["pid"]), check=True)
    new = wait_until(lambda: (w := worker(lab))["status"] == "ready" and w["pid"] != old["pid"]
                     and w, timeout=60, interval=0.2)
    assert new["restarts"] == 1
    assert not alive_in_lab(lab, old["pid"])
    props = lab.show("tsfmd.service", "NRestarts", "MainPID", "ActiveState")
    assert props == {"NRestarts": "0", "MainPID": str(before), "ActiveState": "active"}
    assert post(lab, "/fracast-w").status_code == 200
    journal = lab.journal()
    assert f"model fracast-w: its worker pid {old['pid']} was killed by SIGKILL" in journal


def test_stop_leaves_no_worker_behind(lab):
    current = worker(lab)
    pids = [p for p in (current["pid"], current["standby_pid"]) if p]
    assert pids and all(alive_in_lab(lab, p) for p in pids)
    result = lab.systemctl("stop", "tsfmd.service")
    assert result.returncode == 0, result.stderr
    props = lab.show("tsfmd.service", "ActiveState", "Result")
    assert props == {"ActiveState": "inactive", "Result": "success"}
    assert not any(alive_in_lab(lab, p) for p in pids)
    left = lab.ns("pgrep", "-f", "tsfmd.runners.worker").stdout.split()
    assert left == []
