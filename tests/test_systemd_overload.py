"""The overload burst under a real systemd with a short WatchdogSec (see systemd_lab.py).

10x `server.threads` concurrent largest requests to one model, the same burst as
test_overload.py: every request gets 200 or 503 + Retry-After, /healthz and another model
answer within 1 s throughout, and the watchdog keeps being fed from in-process liveness:
no restart (NRestarts 0, same MainPID), no watchdog timeout in the journal, unit active.
"""
from __future__ import annotations

import time

import pytest
import requests

from conftest import free_port
from systemd_lab import SystemdLab, unavailable_reason
from test_overload import BURST_MODELS, burst, check_burst

REASON = unavailable_reason()
pytestmark = [pytest.mark.systemd, pytest.mark.slow,
              pytest.mark.skipif(REASON is not None, reason=f"no systemd lab: {REASON}")]

THREADS = 16
WATCHDOG_SEC = 4  # the loop counts as wedged after 2 s without running


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    port = free_port()
    text = (f"server:\n  host: 127.0.0.1\n  port: {port}\n  threads: {THREADS}\n"
            f"models:\n{BURST_MODELS}")
    lab = SystemdLab(tmp_path_factory.mktemp("systemd") / "lab", text, watchdog_sec=WATCHDOG_SEC)
    lab.url, lab.port = f"http://127.0.0.1:{port}", port
    try:
        lab.boot()
        yield lab
    finally:
        lab.teardown()


def test_a_burst_under_systemd_neither_restarts_nor_starves_health(lab):
    started = lab.systemctl("start", "tsfmd.service")
    assert started.returncode == 0, started.stderr + lab.journal()
    assert requests.get(lab.url + "/readyz", timeout=10).status_code == 200
    before = lab.show("tsfmd.service", "MainPID", "NRestarts", "WatchdogUSec",
                      "WatchdogTimestampMonotonic")
    assert before["NRestarts"] == "0" and before["WatchdogUSec"] == f"{WATCHDOG_SEC}s"

    outcome = burst(lab.port, "/big", "/other", clients=10 * THREADS)
    print("\nburst under systemd:", check_burst(outcome, 10 * THREADS))
    time.sleep(WATCHDOG_SEC * 1.5)  # a watchdog kill caused by the burst would show by now

    after = lab.show("tsfmd.service", "ActiveState", "SubState", "MainPID", "NRestarts",
                     "WatchdogTimestampMonotonic")
    assert (after["ActiveState"], after["SubState"]) == ("active", "running"), after
    assert after["NRestarts"] == "0" and after["MainPID"] == before["MainPID"], after
    assert int(after["WatchdogTimestampMonotonic"]) > int(before["WatchdogTimestampMonotonic"])
    journal = lab.journal()
    assert "Watchdog timeout" not in journal and "watchdog: not pinging" not in journal
    assert "SIGABRT" not in journal and "Traceback" not in journal
    assert requests.get(lab.url + "/healthz", timeout=5).status_code == 200
    stopped = lab.systemctl("stop", "tsfmd.service")
    assert stopped.returncode == 0, stopped.stderr
