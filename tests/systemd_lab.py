"""A real systemd (PID 1 of a private PID + mount namespace) to test tsfmd.service under.

The lab installs the unit with `tsfmd install-unit --root`, creates the tsfmd user with the
shipped sysusers file into copies of /etc/passwd etc. (bind-mounted inside the namespace
only), and boots /lib/systemd/system as PID 1 with a unit path of its own. A drop-in changes
only what the lab must: the registry path (a file of the test's) and a short WatchdogSec.
The network namespace is the host's, so tests talk to the daemon on 127.0.0.1 directly.
Nothing outside the namespace changes: /run, /var/lib, /var/log and /var/tmp are tmpfs there;
teardown SIGKILLs PID 1, which ends everything inside (see ../shared/SYSTEMD.md).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = "/lib/systemd/systemd"
#: targets the units may name; empty stubs keep the host's real ones out of the lab
STUB_TARGETS = ("sysinit", "basic", "shutdown", "network", "network-online", "multi-user",
                "sockets", "paths", "timers", "slices", "local-fs", "remote-fs")
JOURNALD_UNITS = ("systemd-journald.service", "systemd-journald.socket",
                  "systemd-journald-dev-log.socket")
TOOLS = ("timeout", "unshare", "nsenter", "systemctl", "journalctl", "systemd-sysusers")

BOOT = """#!/bin/bash
set -e
mount -t tmpfs tmpfs /run && mkdir -p /run/systemd
# state, logs and PrivateTmp's /var/tmp stay inside the lab
for d in /var/lib /var/log /var/tmp; do mount -t tmpfs tmpfs "$d"; done
# a fresh /tmp too, so PrivateTmp= leaves nothing in the host's; what the lab needs from
# the host's /tmp (the lab directory, maybe the venv) is bound back at the same paths
mkdir /run/host-tmp && mount --bind /tmp /run/host-tmp && mount -t tmpfs tmpfs /tmp
IFS=: && for p in $KEEP_TMP; do mkdir -p "$p" && mount --bind "/run/host-tmp${{p#/tmp}}" "$p"; done
unset IFS
# the tsfmd user exists only in here
for f in passwd group shadow gshadow; do
  [ -e "/etc/$f" ] && mount --bind "$LAB/sysroot/etc/$f" "/etc/$f"
done
# a cgroup of the lab's own: systemd puts its units below the cgroup it starts in, so
# two labs (or a host systemd) never share /system.slice/tsfmd.service
for h in $CGROUP_MOUNTS; do mkdir -p "$h$LABCG" && echo 0 > "$h$LABCG/cgroup.procs"; done
export SYSTEMD_UNIT_PATH="$LAB/units:$LAB/sysroot/etc/systemd/system"
# journal: PID 1 logs to the console until journald runs, then its lines about
# tsfmd.service (started, reload failed, restarted) show in `journalctl -u tsfmd`
exec {systemd} --system --unit=lab.target --log-target=journal --log-level=info
"""


def unavailable_reason() -> Optional[str]:
    """Why a real systemd cannot run here, or None when it can."""
    if sys.platform != "linux":
        return "systemd lab needs Linux"
    if os.geteuid() != 0:
        return "systemd lab needs root (unshare --pid --mount, systemd as PID 1)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is missing"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    probe = subprocess.run(["unshare", "--fork", "--pid", "--mount", "--mount-proc", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"unshare --pid --mount is not permitted here: {probe.stderr.strip()}"
    return None


class SystemdLab:
    def __init__(self, lab: Path, registry_text: str, watchdog_sec: int = 6,
                 memory_cgroup: bool = False):
        """memory_cgroup: also start the lab in a cgroup of its own in a cgroup v1 memory
        hierarchy, so MemoryMax= applies to (and OOM kills stay inside) the lab's units."""
        self.lab = lab
        self.memory_cgroup = memory_cgroup
        self.sysroot = lab / "sysroot"
        self.units = lab / "units"
        self.registry = self.sysroot / "etc" / "tsfmd" / "tsfmd.yaml"
        self.watchdog_sec = watchdog_sec
        self.pid1: Optional[int] = None
        self._unshare: Optional[subprocess.Popen] = None
        self._install(registry_text)

    # -- building the lab ---------------------------------------------------------------

    def _install(self, registry_text: str) -> None:
        tsfmd = str(Path(sys.executable).parent / "tsfmd")
        run([tsfmd, "install-unit", "--root", str(self.sysroot)])
        self.registry.write_text(registry_text)
        etc = self.sysroot / "etc"
        for name in ("passwd", "group", "shadow", "gshadow"):
            if Path("/etc", name).exists():
                shutil.copy2(Path("/etc", name), etc / name)
        # the shipped sysusers file, applied to the lab's copies only
        run(["systemd-sysusers", f"--root={self.sysroot}", str(etc / "sysusers.d" / "tsfmd.conf")])
        self.units.mkdir(parents=True)
        for target in STUB_TARGETS:
            (self.units / f"{target}.target").write_text(f"[Unit]\nDescription={target} stub\n")
        (self.units / "lab.target").write_text("[Unit]\nDescription=lab\n")
        for unit in JOURNALD_UNITS:
            shutil.copy2(Path("/lib/systemd/system", unit), self.units / unit)
        dropin = self.units / "tsfmd.service.d"
        dropin.mkdir()
        config_dir = self.registry.parent
        (dropin / "50-lab.conf").write_text(
            "# Lab only: the test's registry (bound in, it may sit under PrivateTmp's /tmp),\n"
            "# a short watchdog, and no hub.\n"
            "[Service]\n"
            "ExecStart=\n"
            f"ExecStart={tsfmd} serve --config {self.registry}\n"
            f"BindReadOnlyPaths={config_dir}\n"
            f"WatchdogSec={self.watchdog_sec}\n"
            "Environment=HF_HUB_OFFLINE=1\n"
        )
        boot = self.lab / "boot.sh"
        boot.write_text(BOOT.format(systemd=SYSTEMD))
        boot.chmod(0o755)

    def dropin(self, name: str, text: str) -> None:
        """Add (or with text "" remove) a drop-in of the lab's tsfmd.service, and reload."""
        path = self.units / "tsfmd.service.d" / name
        if text:
            path.write_text(text)
        elif path.exists():
            path.unlink()
        if self.pid1 is not None:
            self.systemctl("daemon-reload", check=True)

    def user_id(self, name: str = "tsfmd") -> int:
        for line in (self.sysroot / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2])
        raise KeyError(name)

    # -- booting and driving ------------------------------------------------------------

    def boot(self, timeout: float = 60.0) -> None:
        self.cgroup = f"{_own_cgroup()}/tsfmd-lab-{os.getpid()}-{id(self)}"
        self._cgroup_dirs = _missing_cgroup_dirs(self.cgroup)
        keep = {str(self.lab), *(os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, REPO))}
        env = dict(os.environ, LAB=str(self.lab), LABCG=self.cgroup,
                   CGROUP_MOUNTS=" ".join(_systemd_cgroup_mounts(self.memory_cgroup)),
                   KEEP_TMP=":".join(sorted(p for p in keep if p.startswith("/tmp/"))))
        log = open(self.lab / "pid1.log", "wb")
        # --kill-child: if unshare dies (the test run was killed), PID 1 dies with it;
        # timeout: a lab nobody tears down still ends within the hour.
        self._unshare = subprocess.Popen(
            ["timeout", "-s", "KILL", "3600", "unshare", "--kill-child", "--pid", "--mount",
             "--uts", "--mount-proc", "--propagation", "private",
             "bash", str(self.lab / "boot.sh")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid1 is None:
            unshare = _children(self._unshare.pid)  # timeout -> unshare -> PID 1
            pids = _children(unshare[0]) if unshare else []
            if pids:
                self.pid1 = pids[0]
            elif self._unshare.poll() is not None:
                break
            else:
                time.sleep(0.05)
        if self.pid1 is None:
            raise RuntimeError(f"the lab did not start: {self.pid1_log()}")
        state = ""
        while time.monotonic() < deadline:
            state = self.ns("systemctl", "is-system-running").stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the lab's systemd is {state!r}, not running: {self.pid1_log()}")
        self.systemctl("start", "systemd-journald.socket", "systemd-journald.service", check=True)

    def ns(self, *command: str, check: bool = False, timeout: float = 180.0):
        """Run a command inside the lab (its mounts and PID namespace)."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-m", "-p", *command],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} -> {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def systemctl(self, *args: str, check: bool = False, timeout: float = 180.0):
        return self.ns("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props), check=True)
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def journal(self, unit: str = "tsfmd.service", *args: str) -> str:
        return self.ns("journalctl", "--no-pager", "-o", "cat", "-u", unit, *args).stdout

    def pid1_log(self) -> str:
        try:
            return (self.lab / "pid1.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- teardown -------------------------------------------------------------------------

    def teardown(self) -> None:
        # SIGTERM makes systemd re-exec itself; SIGKILL of PID 1 ends the whole namespace.
        if self.pid1 is not None:
            try:
                os.kill(self.pid1, 9)
            except ProcessLookupError:
                pass
        if self._unshare is not None:
            try:
                self._unshare.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait(timeout=10)
        # the cgroups the lab's systemd made, then the parents made for them (never a sibling)
        deadline = time.monotonic() + 10
        for root, top in self._cgroup_dirs:
            lab = root + self.cgroup
            for directory in sorted((d for d, _, _ in os.walk(lab)), key=len, reverse=True):
                _rmdir(directory, deadline)
            parent = os.path.dirname(lab)
            while len(parent) >= len(top):
                _rmdir(parent, 0)  # only if empty: it may hold another lab by now
                parent = os.path.dirname(parent)


def _rmdir(directory: str, deadline: float) -> None:
    while True:  # a cgroup empties a moment after its last process died
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)


def _own_cgroup() -> str:
    """The most specific cgroup this process is in (e.g. a container's memory limit), so
    the lab's units stay inside it."""
    paths = [line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()]
    return max(paths, key=len).rstrip("/")


def _systemd_cgroup_mounts(memory: bool = False) -> list:
    """The hierarchies systemd tracks its units in: name=systemd and cgroup2 (hybrid), or
    the cgroup2 root (unified); with `memory`, also a v1 memory hierarchy (hybrid)."""
    candidates = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"]
    if memory:
        candidates.append("/sys/fs/cgroup/memory")
    mounts = [m for m in candidates if os.path.exists(f"{m}/cgroup.procs")]
    return mounts or ["/sys/fs/cgroup"]


def _missing_cgroup_dirs(cgroup: str) -> list:
    """Per hierarchy, (its mount, the topmost directory of `cgroup` not there yet): teardown
    removes those (systemd creates the path in every hierarchy it uses)."""
    roots = [str(m) for m in Path("/sys/fs/cgroup").iterdir() if (m / "cgroup.procs").exists()]
    if Path("/sys/fs/cgroup/cgroup.procs").exists():
        roots = ["/sys/fs/cgroup"]
    missing = []
    for root in roots:
        path = root
        for part in cgroup.strip("/").split("/"):
            path = f"{path}/{part}"
            if not os.path.exists(path):
                missing.append((root, path))
                break
    return missing


def _children(pid: int) -> list:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run(command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} -> {result.returncode}: {result.stderr}")
    return result
