"""Serving benchmark: many concurrent clients against a real tsfmd, batching on vs off.

Starts `tsfmd serve` as a subprocess on a free loopback port with one model served twice
from the same files: `<name>-on` (batching enabled) and `<name>-off` (batching.enabled:
false, the serial path), so both answer from the same process under the same conditions.
The model is Time-MoE built from an official config (50M or 200M) with random weights
(speed does not depend on the weight values); `--family fracast` serves the bundled model.

For each shape (context x horizon) and each client count, closed-loop clients (one
keep-alive connection each, the next request as soon as the last answer arrives) send
requests; throughput is forecasts answered per second of wall time, latency the time from
send to the full answer. On and off alternate in rounds so that other load on a shared
machine hits both alike. Every count and time is bounded; nothing leaves loopback.

    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/serving.py            # 50M
    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/serving.py --size 200M \
        --shapes 512x96 --clients 1,16
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from machine import describe as machine  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------
# The daemon under test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_entry(name: str, family: str, source: str, batching: str) -> str:
    return (f"  {name}:\n    family: {family}\n    source: {source}\n    device: cpu\n"
            f"    batching:\n{batching}")


def write_registry(path: Path, port: int, family: str, source: str, args) -> None:
    on = (f"      max_batch: {args.max_batch}\n      max_wait_ms: {args.max_wait_ms}\n"
          f"      queue_size: 1024\n      timeout_s: 600\n")
    off = "      enabled: false\n      queue_size: 1024\n      timeout_s: 600\n"
    path.write_text(
        "server:\n  host: 127.0.0.1\n"
        f"  port: {port}\n"
        "  threads: 96\n"  # every client in the app at once, so the batcher can see them
        "models:\n"
        + model_entry("bench-on", family, source, on)
        + model_entry("bench-off", family, source, off)
    )


def checkpoint(size: str, directory: Path) -> str:
    """An official-layout Time-MoE checkpoint with random weights; returns its directory."""
    from tsfmd.families.timemoe.config import OFFICIAL
    from tsfmd.families.timemoe.weights import write_random_checkpoint

    target = directory / f"TimeMoE-{size}-random"
    if not (target / "config.json").exists():
        write_random_checkpoint(target, OFFICIAL[f"TimeMoE-{size}"])
    return str(target)


class Daemon:
    def __init__(self, config: Path, port: int, log_path: Path):
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env.pop("NOTIFY_SOCKET", None)
        self.port = port
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tsfmd", "serve", "--config", str(config),
             "--log-level", "WARNING"],
            cwd=str(ROOT), env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tsfmd exited with {self.proc.returncode}; see {self.log.name}")
            try:
                status, _ = get(self.port, "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"tsfmd not ready in {timeout:.0f}s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def get(port: int, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# Clients


def bodies(count: int, context: int, horizon: int, seed: int) -> List[bytes]:
    """Distinct random-walk series, encoded once so the clients spend little CPU."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        series = 100.0 + rng.normal(0.0, 1.0, context).cumsum()
        out.append(json.dumps({"input": [round(float(v), 4) for v in series],
                               "next_len": horizon}).encode())
    return out


def run_clients(port: int, route: str, clients: int, per_client: int, payloads: List[bytes],
                budget_s: float, horizon: int) -> dict:
    """`clients` closed-loop clients, `per_client` requests each (fewer past `budget_s`)."""
    latencies: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()
    gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
        gate.wait()
        try:
            for k in range(per_client):
                if k and time.monotonic() > stop_at[0]:
                    break
                payload = payloads[(index * per_client + k) % len(payloads)]
                sent = time.monotonic()
                conn.request("POST", route, payload, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                took = time.monotonic() - sent
                with lock:
                    if response.status == 200 and len(json.loads(data)["output"]) == horizon:
                        latencies.append(took)
                    else:
                        errors.append(f"{response.status} {data[:200]!r}")
        except OSError as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    started = time.monotonic()
    stop_at[0] = started + budget_s
    gate.wait()
    for t in threads:
        t.join()
    return {"done": len(latencies), "seconds": time.monotonic() - started,
            "latencies": latencies, "errors": errors}


def measure(port: int, clients: int, context: int, horizon: int, args) -> Dict[str, dict]:
    """On and off, alternating for `args.rounds` rounds; pooled results per mode."""
    per_client = max(args.min_per_client, math.ceil(args.min_requests / clients))
    payloads = bodies(max(64, clients * 2), context, horizon, seed=context * 1000 + horizon)
    pooled = {m: {"done": 0, "seconds": 0.0, "latencies": [], "errors": []} for m in ("off", "on")}
    for mode in ("off", "on"):  # first batches of a new shape allocate: keep them out
        run_clients(port, f"/bench-{mode}", clients, 1, payloads, 1e9, horizon)
    round_ratios = []
    for round_ in range(args.rounds):
        order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
        speed = {}
        for mode in order:
            result = run_clients(port, f"/bench-{mode}", clients, per_client, payloads,
                                 args.budget_s / args.rounds, horizon)
            for key in ("done", "seconds"):
                pooled[mode][key] += result[key]
            pooled[mode]["latencies"] += result["latencies"]
            pooled[mode]["errors"] += result["errors"]
            speed[mode] = result["done"] / result["seconds"]
        round_ratios.append(speed["on"] / speed["off"] if speed["off"] else 0.0)
    out = {"round_ratios": [round(r, 3) for r in round_ratios]}
    for mode, r in pooled.items():
        lat = np.array(r["latencies"]) if r["latencies"] else np.array([float("nan")])
        out[mode] = {
            "requests": r["done"],
            "throughput": r["done"] / r["seconds"] if r["seconds"] else 0.0,
            "p50_s": float(np.percentile(lat, 50)),
            "p99_s": float(np.percentile(lat, 99)),
            "errors": len(r["errors"]),
            "first_error": r["errors"][0] if r["errors"] else "",
        }
    return out


# ---------------------------------------------------------------------------------------
# Report


def goals(results: List[dict]) -> List[str]:
    """The issue's goals, checked against this run's numbers."""
    lines = []
    by = {(r["shape"], r["clients"]): r for r in results}
    for mode in ("on", "off"):
        single = by.get(("512x96", 1))
        for n in (16, 64):
            many = by.get(("512x96", n))
            if single and many:
                a, b = many[mode]["throughput"], single[mode]["throughput"]
                verdict = ("PASS" if a >= b else "FAIL") if mode == "on" else (
                    f"{a / b:.2f}x, for comparison")  # the goal is for the default (on)
                lines.append(f"512x96 batching {mode}: {n} clients {a:.2f}/s vs 1 client "
                             f"{b:.2f}/s -> {verdict} (goal: >=)")
    for r in results:
        if r["shape"] == "512x96":
            ratio = r["ratio"]
            lines.append(f"512x96 {r['clients']} clients: on/off {ratio:.2f} -> "
                         f"{'PASS' if ratio >= 1.0 else 'FAIL'} (goal: >= 1.0, batching "
                         f"never below serial)")
    short = by.get(("64x8", 16))
    if short:
        lines.append(f"64x8 16 clients: on/off {short['ratio']:.2f} -> "
                     f"{'PASS' if short['ratio'] >= 2.0 else 'FAIL'} (goal: >= 2.0)")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("time-moe", "fracast"), default="time-moe")
    parser.add_argument("--size", choices=("50M", "200M"), default="50M")
    parser.add_argument("--shapes", default="512x96,64x8",
                        help="context x horizon list (default 512x96,64x8)")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--short-clients", default="16",
                        help="client counts for shapes other than 512x96 (default 16)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=4, help="on/off alternations per cell")
    parser.add_argument("--min-requests", type=int, default=32,
                        help="requests per mode and round, at least (spread over clients)")
    parser.add_argument("--min-per-client", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="per cell and mode: stop sending new requests after this")
    parser.add_argument("--checkpoints", default=None,
                        help="where random checkpoints are written/reused (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tsfmd-bench-"))
    if args.family == "time-moe":
        source = checkpoint(args.size, Path(args.checkpoints or work))
        label = f"Time-MoE {args.size} config, random weights (dtype auto)"
    else:
        source, label = "bundled", "fracast bundled"
    port = free_port()
    config = work / "tsfmd.yaml"
    write_registry(config, port, args.family, source, args)
    host = machine()  # measured before the daemon starts: a quiet machine's peak
    print(f"machine: {host}")
    print(f"model: {label}; batching on: max_batch {args.max_batch}, "
          f"max_wait_ms {args.max_wait_ms}; off: serial")
    daemon = Daemon(config, port, work / "tsfmd.log")
    results = []
    try:
        started = time.monotonic()
        daemon.wait_ready(600)
        print(f"tsfmd ready in {time.monotonic() - started:.1f}s on 127.0.0.1:{port}\n")
        print(f"{'shape':>7} {'clients':>7} | {'off/s':>7} {'p50':>7} {'p99':>7} | "
              f"{'on/s':>7} {'p50':>7} {'p99':>7} | {'on/off':>6} {'rounds':>11}  n(off,on) err")
        for shape in args.shapes.split(","):
            context, horizon = (int(x) for x in shape.lower().split("x"))
            counts = args.clients if shape == "512x96" else args.short_clients
            for clients in (int(c) for c in counts.split(",")):
                cell = measure(port, clients, context, horizon, args)
                off, on = cell["off"], cell["on"]
                ratio = on["throughput"] / off["throughput"] if off["throughput"] else 0.0
                spread = cell["round_ratios"]
                results.append({"shape": shape, "clients": clients, "on": on, "off": off,
                                "ratio": ratio, "round_ratios": spread})
                print(f"{shape:>7} {clients:>7} | {off['throughput']:7.2f} {off['p50_s']:7.3f} "
                      f"{off['p99_s']:7.3f} | {on['throughput']:7.2f} {on['p50_s']:7.3f} "
                      f"{on['p99_s']:7.3f} | {ratio:6.2f} {min(spread):5.2f}-{max(spread):<5.2f} "
                      f"({off['requests']},{on['requests']}) "
                      f"{off['errors'] + on['errors']} {off['first_error'] or on['first_error']}",
                      flush=True)
        _, models = get(port, "/v1/models")
        stats = {m["key"]: m.get("batching") for m in models["models"]}
        print(f"\nbatcher stats (bench-on): {json.dumps(stats.get('bench-on'))}")
    finally:
        daemon.stop()
    print("\ngoals:")
    for line in goals(results):
        print("  " + line)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": host, "model": label, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
