"""Worker overhead: the same model in the daemon's process vs in a worker process (issue 16).

One `tsfmd serve` (a subprocess on a free loopback port) serves the bundled fracast twice:
`bench-inproc` (in-process) and `bench-worker` (`isolation: process`), same batching. Then:

* per-request overhead at batch 1: one client, requests one at a time, the two routes
  alternating in blocks of 10; overhead = median latency (worker) - median (in-process).
  The runners are also timed in this process, without HTTP: the same batch-of-1 forecast
  through an InProcessRunner and a ProcessRunner, for fracast and for a family that does
  no arithmetic (tests/workerfamilies.py): the latter is the pipe round trip, the framing
  and the worker's dispatch alone, which the load of a shared machine hardly moves;
* throughput at 16 closed-loop clients, the two routes alternating in rounds: worker / in-process.

Targets (issue 16): overhead <= 2 ms, throughput within 5% (ratio >= 0.95).

    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/worker_overhead.py
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402 (the benchmarks share their helpers)
from serving import Daemon, bodies, free_port, machine, run_clients  # noqa: E402

ROUTES = {"inproc": "/bench-inproc", "worker": "/bench-worker"}


def write_registry(path: Path, port: int, args) -> None:
    batching = (f"    batching: {{max_batch: {args.max_batch}, max_wait_ms: {args.max_wait_ms}, "
                "queue_size: 1024, timeout_s: 600}\n")
    models = "".join(
        f"  bench-{name}:\n    family: fracast\n    source: bundled\n    device: cpu\n"
        f"    isolation: {isolation}\n{batching}"
        for name, isolation in (("inproc", "inprocess"), ("worker", "process")))
    path.write_text(f"server:\n  host: 127.0.0.1\n  port: {port}\n  threads: 64\n"
                    f"models:\n{models}")


def alternating(names, requests: int, call) -> dict:
    """Median seconds of `call(name, k)` per name, the names taking turns in blocks of 10
    (two torch processes each forecasting in turn would meet each other's spinning
    OpenMP threads: a cost of the benchmark, not of serving)."""
    times = {name: [] for name in names}
    for block in range(0, requests, 10):
        order = names if block % 20 == 0 else names[::-1]
        for name in order:
            for k in range(block, min(requests, block + 10)):
                times[name].append(call(name, k))
    return {name: float(np.median(v)) for name, v in times.items()}


def single_client(port: int, payloads: List[bytes], requests: int, horizon: int) -> dict:
    """Batch 1: one client, one request at a time."""
    def call(name, k):
        result = run_clients(port, ROUTES[name], 1, 1, [payloads[k % len(payloads)]], 1e9,
                             horizon)
        if result["errors"]:
            raise SystemExit(f"{name}: {result['errors'][0]}")
        return result["latencies"][0]

    return alternating(tuple(ROUTES), requests, call)


def many_clients(port: int, payloads: List[bytes], clients: int, rounds: int,
                 per_client: int, horizon: int) -> dict:
    done = {name: 0 for name in ROUTES}
    seconds = {name: 0.0 for name in ROUTES}
    ratios = []
    for round_ in range(rounds):
        speed = {}
        for name in (("inproc", "worker") if round_ % 2 == 0 else ("worker", "inproc")):
            result = run_clients(port, ROUTES[name], clients, per_client, payloads, 1e9,
                                 horizon)
            if result["errors"]:
                raise SystemExit(f"{name}: {result['errors'][0]}")
            done[name] += result["done"]
            seconds[name] += result["seconds"]
            speed[name] = result["done"] / result["seconds"]
        ratios.append(speed["worker"] / speed["inproc"])
    return {"throughput": {n: done[n] / seconds[n] for n in ROUTES}, "round_ratios": ratios}


def runner_round_trip(family_name: str, requests: int, context: int, horizon: int) -> dict:
    """The runners alone, in this process: median seconds per batch-of-1 forecast."""
    from tsfmd.families import get_family
    from tsfmd.families.base import LoadSpec, SeriesInput
    from tsfmd.runners import start_runner

    family = get_family(family_name)
    spec = LoadSpec(key="bench", source="bundled", device="cpu")
    runners = {"inproc": start_runner(family, spec), "worker": start_runner(family, spec,
                                                                            sys.executable)}
    rng = np.random.default_rng(16)
    batch = [SeriesInput(values=(100 + rng.normal(size=context).cumsum()).astype(np.float32))]

    def call(name, _):
        began = time.perf_counter()
        runners[name].forecast(batch, horizon)
        return time.perf_counter() - began

    try:
        for name in runners:  # the first forecasts of a shape allocate
            runners[name].forecast(batch, horizon)
        return alternating(tuple(runners), requests, call)
    finally:
        for runner in runners.values():
            runner.close()


def use_noop_family() -> None:
    """The tests' family that only adds step numbers (no model): the round trip alone."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    sys.path.insert(0, tests)
    os.environ["TSFMD_WORKER_PATH"] = tests
    from tsfmd.families import register_family

    register_family("fault-test", "workerfamilies:FaultFamily")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--single-requests", type=int, default=100,
                        help="batch-1 requests per route")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tsfmd-bench-worker-"))
    port = free_port()
    config = work / "tsfmd.yaml"
    write_registry(config, port, args)
    print(f"machine: {machine()}")
    print(f"machine: {describe(bfloat16=False)}")
    print(f"model: fracast bundled, context {args.context}, horizon {args.horizon}; "
          f"max_batch {args.max_batch}, max_wait_ms {args.max_wait_ms}")
    print(f"load average at the start: {os.getloadavg()[0]:.1f}")
    payloads = bodies(64, args.context, args.horizon, seed=16)
    use_noop_family()
    noop = runner_round_trip("fault-test", 500, args.context, args.horizon)
    direct = runner_round_trip("fracast", args.single_requests, args.context, args.horizon)
    daemon = Daemon(config, port, work / "tsfmd.log")
    try:
        daemon.wait_ready(600)
        run_clients(port, ROUTES["inproc"], 1, 2, payloads, 1e9, args.horizon)  # warm both
        run_clients(port, ROUTES["worker"], 1, 2, payloads, 1e9, args.horizon)
        single = single_client(port, payloads, args.single_requests, args.horizon)
        many = many_clients(port, payloads, args.clients, args.rounds, args.per_client,
                            args.horizon)
    finally:
        daemon.stop()

    noop_ms = (noop["worker"] - noop["inproc"]) * 1000
    runner_ms = (direct["worker"] - direct["inproc"]) * 1000
    http_ms = (single["worker"] - single["inproc"]) * 1000
    ratio = many["throughput"]["worker"] / many["throughput"]["inproc"]
    spread = many["round_ratios"]
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"\nround trip alone (no-op family, batch 1, context {args.context}, median of 500):"
          f" in-process {noop['inproc'] * 1000:.3f} ms, worker {noop['worker'] * 1000:.3f} ms"
          f" -> overhead {noop_ms:+.3f} ms")
    print(f"fracast runner alone, batch 1 (median of {args.single_requests}): in-process "
          f"{direct['inproc'] * 1000:.2f} ms, worker {direct['worker'] * 1000:.2f} ms -> "
          f"overhead {runner_ms:+.2f} ms (ratio {direct['worker'] / direct['inproc']:.3f})")
    print(f"HTTP, batch 1, one client (median of {args.single_requests}): in-process "
          f"{single['inproc'] * 1000:.2f} ms, worker {single['worker'] * 1000:.2f} ms -> "
          f"overhead {http_ms:+.2f} ms (ratio {single['worker'] / single['inproc']:.3f})")
    print(f"HTTP, {args.clients} clients: in-process {many['throughput']['inproc']:.2f}/s, "
          f"worker {many['throughput']['worker']:.2f}/s -> worker/in-process {ratio:.3f} "
          f"(rounds {min(spread):.2f}-{max(spread):.2f})")
    print("\ngoals:")
    print(f"  per-request overhead at batch 1: {noop_ms:+.3f} ms round trip, {runner_ms:+.2f} ms "
          f"fracast runner, {http_ms:+.2f} ms over HTTP -> "
          f"{'PASS' if noop_ms <= 2.0 else 'FAIL'} (goal: <= 2 ms)")
    print(f"  throughput at {args.clients} clients: worker/in-process {ratio:.3f} -> "
          f"{'PASS' if ratio >= 0.95 else 'FAIL'} (goal: >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
