"""The serial path's footprint: threads and RSS of a tsfmd serving one model with batching off.

Starts `tsfmd serve` (a subprocess on a free loopback port) with one Time-MoE model
(official config, random weights) and `batching: {enabled: false}`, sends closed-loop
clients at it, then reads the daemon's /proc/<pid>/status: `Threads`, `VmRSS`, `VmHWM`
(peak RSS). Forecasts that ran on waitress's request threads left one OpenMP pool per
request thread that ever ran one; on the model's own thread there is one pool. Run it
against two trees to compare (PYTHONPATH picks the tsfmd under test):

    PYTHONPATH=$PWD flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/serial_threads.py
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from serving import Daemon, bodies, checkpoint, free_port, machine, run_clients


def status(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Threads", "VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("50M", "200M"), default="50M")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="in all, spread over clients")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=96)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tsfmd-serial-"))
    source = checkpoint(args.size, work)
    port = free_port()
    config = work / "tsfmd.yaml"
    config.write_text(
        f"server:\n  host: 127.0.0.1\n  port: {port}\n  threads: 32\nmodels:\n"
        f"  serial:\n    family: time-moe\n    source: {source}\n    device: cpu\n"
        "    batching: {enabled: false, queue_size: 1024, timeout_s: 600}\n")
    print(f"machine: {machine()}")
    import tsfmd

    print(f"tsfmd from {Path(tsfmd.__file__).parent}")
    daemon = Daemon(config, port, work / "tsfmd.log")
    try:
        daemon.wait_ready(600)
        idle = status(daemon.proc.pid)
        payloads = bodies(64, args.context, args.horizon, seed=1)
        per_client = max(1, args.requests // args.clients)
        result = run_clients(port, "/serial", args.clients, per_client, payloads, 600.0,
                             args.horizon)
        after = status(daemon.proc.pid)
    finally:
        daemon.stop()
    rate = result["done"] / result["seconds"]
    print(f"Time-MoE {args.size} {args.context}x{args.horizon}, batching off, "
          f"{args.clients} clients: {result['done']} forecasts, {rate:.2f}/s, "
          f"{len(result['errors'])} errors")
    print(f"ready, idle: {idle['Threads']} threads, RSS {idle['VmRSS'] / 1024:.0f} MB")
    print(f"after the clients: {after['Threads']} threads, RSS {after['VmRSS'] / 1024:.0f} MB, "
          f"peak RSS {after['VmHWM'] / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
