"""A real local Ray cluster for the Ray Serve tests and benchmark: a head and a second node
process on this machine, a temp dir of its own, every step bounded in time.

`ray start` without the dashboard (a heavy process this machine has no cores for), so a
config is deployed with `serve run CONFIG --non-blocking`, which applies a config file the
way `serve deploy` does (unchanged applications are left alone) but talks to the cluster
directly instead of through the dashboard's REST API. `stop()` runs `ray stop` always.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import requests

BIN = Path(sys.executable).parent


def ray_available() -> bool:
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        return False
    return (BIN / "ray").exists() and (BIN / "serve").exists()


class RayCluster:
    """`head_cpus` on the head, `worker_cpus` on the second node, both on loopback."""

    def __init__(self, port: int, head_cpus: int = 2, worker_cpus: int = 1):
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        # short: Ray's unix sockets live under it (a path of at most ~107 bytes)
        self.temp_dir = tempfile.mkdtemp(prefix="tsfmd-ray-", dir="/tmp")
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        self.log: List[str] = []

    def _run(self, args: List[str], timeout: float) -> str:
        done = subprocess.run(args, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        self.log.append(f"$ {' '.join(args)}\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])} failed ({done.returncode}):\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        return done.stdout

    def start(self) -> "RayCluster":
        # Ray swaps a loopback node address for this host's own one (ray._private.services.
        # resolve_ip_for_localhost) and binds its gRPC ports on all interfaces: the nodes
        # talk over this machine's own address, the HTTP proxy listens on 127.0.0.1 only
        common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        self._run([str(BIN / "ray"), "start", "--head", "--port", str(self.port),
                   "--num-cpus", str(self.head_cpus), "--include-dashboard", "false",
                   "--temp-dir", self.temp_dir, *common], timeout=180)
        self._run([str(BIN / "ray"), "start", "--address", self.address,
                   "--num-cpus", str(self.worker_cpus), *common], timeout=180)
        return self

    def deploy(self, config: Path) -> None:
        self._run([str(BIN / "serve"), "run", str(config), "--non-blocking",
                   "--address", self.address], timeout=300)

    def nodes(self) -> int:
        """Alive nodes, from `ray status`."""
        out = self._run([str(BIN / "ray"), "status", "--address", self.address], timeout=60)
        active = out.split("Active:", 1)[1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if line.strip().startswith("1 node_"))

    def stop(self) -> None:
        try:
            self._run([str(BIN / "ray"), "stop", "--grace-period", "20"], timeout=120)
        except (RuntimeError, subprocess.TimeoutExpired):
            subprocess.run([str(BIN / "ray"), "stop", "--force"], env=self.env,
                           capture_output=True, timeout=120)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_ready(url: str, timeout: float = 300.0, models: Optional[List[str]] = None) -> dict:
    """Poll `url`/readyz until it answers 200 (and lists `models`); its JSON body."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = requests.get(url + "/readyz", timeout=10)
            last = f"{answer.status_code} {answer.text[:300]}"
            if answer.status_code == 200 and set(models or ()) <= set(answer.json()["models"]):
                return answer.json()
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(1.0)
    raise TimeoutError(f"{url} not ready within {timeout:.0f}s: {last}")


def write_serve_config(registry: Path, out: Path, http_port: int) -> Path:
    """`tsfmd ray config` through the real CLI."""
    done = subprocess.run(
        [sys.executable, "-m", "tsfmd", "ray", "config", "--config", str(registry),
         "--http-port", str(http_port), "-o", str(out)],
        capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"tsfmd ray config failed: {done.stderr}")
    return out
