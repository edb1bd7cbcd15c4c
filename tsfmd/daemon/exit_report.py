"""`tsfmd exit-report`: the unit's ExecStopPost=, saying in the journal when the kernel's
OOM killer ended tsfmd.

systemd reports an OOM kill itself (Result=oom-kill, "killed by the OOM killer") only where
the memory controller is on the unified cgroup hierarchy. On hosts that keep it on cgroup
v1 (hybrid layouts), the same kill reads as a bare `status=9/KILL`. This command runs in
the unit's cgroup after the daemon is gone, reads the cgroup's OOM-kill counter (v2
memory.events or v1 memory.oom_control) and, when it moved, logs an error line that
`systemctl status tsfmd` shows, naming the limit that was hit. It never fails the unit.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Optional

CGROUP_ROOT = Path("/sys/fs/cgroup")


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "exit-report", help="(the unit's ExecStopPost=) log an OOM kill of the daemon")
    parser.set_defaults(handler=cmd_exit_report)


def own_cgroups(proc_cgroup: str) -> Dict[str, str]:
    """/proc/self/cgroup as {hierarchy: path}: "" for the unified one, else its controllers."""
    found = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            found[name] = path
    return found


def _keyed(text: str) -> Dict[str, int]:
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text()
    except OSError:
        return None


def memory_report(proc_cgroup: str, root: Path = CGROUP_ROOT) -> Optional[dict]:
    """{oom_kills, limit, peak} of this process's memory cgroup, or None if unreadable."""
    cgroups = own_cgroups(proc_cgroup)
    if "memory" in cgroups:  # cgroup v1 memory controller
        directory = root / "memory" / cgroups["memory"].lstrip("/")
        control = _read(directory / "memory.oom_control")
        if control is None:
            return None
        return {"oom_kills": _keyed(control).get("oom_kill", 0),
                "limit": (_read(directory / "memory.limit_in_bytes") or "").strip(),
                "peak": (_read(directory / "memory.max_usage_in_bytes") or "").strip()}
    if "" in cgroups:  # unified: /sys/fs/cgroup itself, or /sys/fs/cgroup/unified (hybrid)
        for base in (root, root / "unified"):
            directory = base / cgroups[""].lstrip("/")
            events = _read(directory / "memory.events")
            if events is not None:
                return {"oom_kills": _keyed(events).get("oom_kill", 0),
                        "limit": (_read(directory / "memory.max") or "").strip(),
                        "peak": (_read(directory / "memory.peak") or "").strip()}
    return None


def oom_message(report: dict, service_result: str) -> Optional[str]:
    if not report or (report["oom_kills"] <= 0 and service_result != "oom-kill"):
        return None
    limit, peak = report["limit"], report["peak"]
    limit_text = f"its memory limit ({limit} bytes)" if limit.isdigit() and \
        int(limit) < 2 ** 60 else "the memory available to it"
    peak_text = f"; peak use {peak} bytes" if peak.isdigit() else ""
    return (f"tsfmd was killed by the kernel's OOM killer ({report['oom_kills']} OOM kill(s) "
            f"in its cgroup): it needed more than {limit_text}{peak_text}. Raise MemoryMax=/"
            "MemoryHigh= to fit the enabled models (`tsfmd install-unit --memory-max SIZE`, "
            "README: Memory), or serve fewer or smaller models")


def cmd_exit_report(args) -> int:
    try:
        report = memory_report(Path("/proc/self/cgroup").read_text())
        message = oom_message(report, os.environ.get("SERVICE_RESULT", ""))
    except Exception as exc:  # a report must never turn a stop into a failure
        print(f"tsfmd exit-report: cannot read the cgroup: {exc}", file=sys.stderr)
        return 0
    if message:
        print(f"<3>{message}", file=sys.stderr, flush=True)  # <3>: journal priority err
    return 0
