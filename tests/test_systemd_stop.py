"""tsfmd.service under a real systemd (systemd_lab.py): stop under keep-alive load, a port
that is taken, and an OOM kill at MemoryMax=.

One lab for the module, booted in a cgroup of its own in the memory hierarchy too, so a
test's MemoryMax= applies to the lab's tsfmd.service only. The tests run in file order.
The memory drop-in and the OOM report are also checked without a lab (systemd-analyze
verify, fake cgroup files).
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import free_port, wait_until
from systemd_lab import SystemdLab, unavailable_reason
from test_stop import assert_nothing_lost, through_stop
from tsfmd.daemon.exit_report import memory_report, oom_message
from tsfmd.daemon.server import DRAIN_SECONDS

REASON = unavailable_reason()
LAB = [pytest.mark.systemd, pytest.mark.slow,
       pytest.mark.skipif(REASON is not None, reason=f"no systemd lab: {REASON}")]
TSFMD = str(Path(sys.executable).parent / "tsfmd")


def under_lab(test):
    for mark in LAB:
        test = mark(test)
    return test


MODEL = "  fracast:\n    family: fracast\n    source: bundled\n    device: cpu\n"


def registry(port: int) -> str:
    return f"server:\n  host: 127.0.0.1\n  port: {port}\n  threads: 8\nmodels:\n{MODEL}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    port = free_port()
    lab = SystemdLab(tmp_path_factory.mktemp("systemd-stop") / "lab", registry(port),
                     memory_cgroup=True)
    lab.port, lab.url = port, f"http://127.0.0.1:{port}"
    try:
        lab.boot()
        yield lab
    finally:
        lab.teardown()


def since_last_start(journal: str) -> str:
    return journal[journal.rindex("Starting tsfmd"):]


@under_lab
def test_systemctl_stop_during_keep_alive_load(lab):
    started = lab.systemctl("start", "tsfmd.service")
    assert started.returncode == 0, started.stderr + lab.journal()
    clients, stopped, took = through_stop(
        lab.port, 4, lambda: lab.systemctl("stop", "tsfmd.service"))
    assert stopped.returncode == 0, stopped.stderr
    assert_nothing_lost(clients)
    props = lab.show("tsfmd.service", "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert took < DRAIN_SECONDS, f"systemctl stop took {took:.1f}s"
    this_stop = lab.journal()[lab.journal().rindex("Stopping tsfmd"):]
    assert "INFO tsfmd.server: stopped" in this_stop and "still in flight" not in this_stop
    assert "Deactivated successfully" in this_stop


@under_lab
def test_port_in_use_ends_failed_after_a_bounded_number_of_restarts(lab):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", lab.port))
    holder.listen(1)
    try:
        before = int(lab.show("tsfmd.service", "NRestarts")["NRestarts"])
        assert lab.systemctl("start", "tsfmd.service").returncode != 0

        def settled():
            props = lab.show("tsfmd.service", "ActiveState", "SubState", "Result", "NRestarts")
            return props if props["ActiveState"] == "failed" else None

        props = wait_until(settled, timeout=300, interval=1.0)
        time.sleep(3)  # past RestartSec=2: no further restart comes
        again = lab.show("tsfmd.service", "ActiveState", "NRestarts")
    finally:
        holder.close()
    # the last restart is refused by the start limit (StartLimitBurst=5): no more come
    assert props["Result"] in ("exit-code", "start-limit-hit"), props
    restarts = int(props["NRestarts"]) - before
    assert 1 <= restarts <= 5 and again == {"ActiveState": "failed",
                                            "NRestarts": props["NRestarts"]}, (props, again)
    journal = lab.journal()
    attempts = journal.count(f"cannot listen on 127.0.0.1:{lab.port}: ")
    assert restarts <= attempts <= restarts + 1, (attempts, restarts)
    assert "already listens there" in journal
    assert "Start request repeated too quickly" in journal
    assert "status=3/NOTIMPLEMENTED" in journal  # systemd's name for exit status 3
    # once the cause is gone, reset-failed and a start serve again
    lab.systemctl("reset-failed", "tsfmd.service", check=True)
    assert lab.systemctl("start", "tsfmd.service").returncode == 0, lab.journal()[-3000:]
    assert requests.get(lab.url + "/readyz", timeout=10).status_code == 200
    lab.systemctl("stop", "tsfmd.service", check=True)


@under_lab
def test_oom_kill_at_memory_max_is_reported_as_such(lab):
    """A MemoryMax= below what torch and a model need: the kernel kills tsfmd in its cgroup
    during the start; the journal (and so `systemctl status`) says it was the OOM killer."""
    limit = 80 * 1024 * 1024
    lab.dropin("60-oom.conf", f"[Service]\nMemoryMax={limit}\nMemoryHigh=infinity\n"
                              "Restart=no\n")
    try:
        assert lab.systemctl("start", "tsfmd.service").returncode != 0
        props = lab.show("tsfmd.service", "ActiveState", "Result", "ExecMainCode",
                         "ExecMainStatus", "MemoryMax")
        status = lab.systemctl("status", "tsfmd.service").stdout
        journal = since_last_start(lab.journal())
    finally:
        lab.dropin("60-oom.conf", "")
        lab.systemctl("reset-failed", "tsfmd.service")
    assert props["MemoryMax"] == str(limit)
    assert props["ActiveState"] == "failed", props
    # systemd sees the kill as such only with memory on cgroup v2; here it may be a SIGKILL
    assert props["Result"] in ("oom-kill", "signal"), props
    assert props["ExecMainStatus"] == "9", props
    message = re.search(r"tsfmd was killed by the kernel's OOM killer \((\d+) OOM kill\(s\) "
                        rf"in its cgroup\): it needed more than its memory limit \({limit} "
                        r"bytes\); peak use (\d+) bytes", journal)
    assert message, journal[-3000:]
    assert int(message.group(1)) >= 1 and int(message.group(2)) >= limit * 0.9
    assert "killed by the kernel's OOM killer" in status  # `systemctl status` shows it
    assert "OOM killer" in lab.journal("tsfmd.service", "--priority=err")


# -- without a lab --------------------------------------------------------------------------


def fake_cgroup(root: Path, path: str, files: dict) -> None:
    directory = root / path.lstrip("/")
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)


HYBRID = "9:name=systemd:/system.slice/tsfmd.service\n4:memory:/system.slice/tsfmd.service\n" \
         "0::/system.slice/tsfmd.service\n"
UNIFIED = "0::/system.slice/tsfmd.service\n"


def test_exit_report_reads_the_v1_memory_controller(tmp_path):
    fake_cgroup(tmp_path, "memory/system.slice/tsfmd.service", {
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        "memory.limit_in_bytes": "1073741824\n", "memory.max_usage_in_bytes": "1073700000\n"})
    report = memory_report(HYBRID, tmp_path)
    assert report == {"oom_kills": 2, "limit": "1073741824", "peak": "1073700000"}
    assert oom_message(report, "signal").startswith(
        "tsfmd was killed by the kernel's OOM killer (2 OOM kill(s) in its cgroup): it needed "
        "more than its memory limit (1073741824 bytes); peak use 1073700000 bytes.")


def test_exit_report_reads_cgroup_v2_and_is_silent_without_a_kill(tmp_path):
    fake_cgroup(tmp_path, "system.slice/tsfmd.service", {
        "memory.events": "low 0\nhigh 10\nmax 3\noom 1\noom_kill 0\n",
        "memory.max": "max\n", "memory.peak": "5000\n"})
    report = memory_report(UNIFIED, tmp_path)
    assert report == {"oom_kills": 0, "limit": "max", "peak": "5000"}
    assert oom_message(report, "exit-code") is None
    # systemd saw it itself (v2): said even if the counter was read after a reset
    assert "more than the memory available to it; peak use 5000" in oom_message(
        report, "oom-kill")
    assert memory_report(UNIFIED, tmp_path / "nowhere") is None


def test_exit_report_command_never_fails():
    done = subprocess.run([TSFMD, "exit-report"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "OOM" not in done.stderr  # this test's cgroup had none


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("size, high", [("12G", "10952166604"), ("60%", "51%")])
def test_memory_dropin_verifies_clean(tmp_path, size, high):
    subprocess.run([TSFMD, "install-unit", "--root", str(tmp_path), "--memory-max", size],
                   check=True, capture_output=True, timeout=60)
    dropin = tmp_path / "etc/systemd/system/tsfmd.service.d/20-memory.conf"
    assert f"[Service]\nMemoryMax={size}\nMemoryHigh={high}\n" in dropin.read_text()
    unit = tmp_path / "etc/systemd/system/tsfmd.service"
    assert f"ExecStopPost={TSFMD} exit-report" in unit.read_text()
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


def test_memory_max_that_is_not_a_size_is_refused(tmp_path):
    done = subprocess.run([TSFMD, "install-unit", "--root", str(tmp_path), "--memory-max",
                           "lots"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "not a size like 12G" in done.stderr
    assert not (tmp_path / "etc").exists()
