"""Ray Serve benchmark: throughput with 1 and 2 replicas of one model, and the per-request
overhead of the Ray path against `tsfmd serve`, from one run on one machine.

Starts a real local Ray cluster (a head and a second node process, tests/ray_lab.py),
deploys `tsfmd ray config`'s file for a registry serving the same model twice, `one`
(num_replicas: 1) and `two` (num_replicas: 2), and starts `tsfmd serve` on the same
registry. Then:

* overhead: one client, sequential batch-1 requests, alternating `tsfmd serve` and the Ray
  proxy request by request; the difference of the median latencies is what the Ray path
  (proxy -> ingress -> the model's replica and back) adds per request;
* throughput: `--clients` closed-loop clients for `--seconds` on `one`, then on `two`,
  alternating for `--rounds` rounds so that other load on a shared machine hits both alike.

Every count and time is bounded; nothing leaves loopback; `ray stop` at the end, always.

    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/ray_serve.py
    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/ray_serve.py --model timemoe \
        --replica-cpus 1 --clients 8
"""
from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from machine import describe  # noqa: E402  (benchmarks/machine.py)
from ray_lab import RayCluster, wait_ready, write_serve_config  # noqa: E402
from serving import Daemon, bodies, free_port, machine, run_clients  # noqa: E402

SOURCES = {"fracast": ("fracast", "bundled", ""),
           "timemoe": ("time-moe", str(ROOT / "tests/fixtures/timemoe/tiny"),
                       "    dtype: float32\n")}


def registry(port: int, model: str, replica_cpus: float, max_batch: int) -> str:
    family, source, extra = SOURCES[model]
    # one intra-op thread in the daemon as in each replica: the paths differ only in Ray
    text = (f"server:\n  host: 127.0.0.1\n  port: {port}\n  threads: 64\n"
            "  torch_threads: 1\nmodels:\n")
    for name, replicas in (("one", 1), ("two", 2)):
        text += (f"  {name}:\n    family: {family}\n    source: {source}\n    device: cpu\n"
                 f"{extra}    batching: {{max_batch: {max_batch}, timeout_s: 120}}\n"
                 f"    ray: {{num_replicas: {replicas}, num_cpus: {replica_cpus}}}\n")
    return text


def one_request(port: int, route: str, payload: bytes) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        began = time.perf_counter()
        conn.request("POST", route, payload, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        took = time.perf_counter() - began
        if response.status != 200:
            raise RuntimeError(f"{route} answered {response.status}")
        return took
    finally:
        conn.close()


def overhead(daemon_port: int, ray_port: int, payload: bytes, count: int) -> dict:
    """Median batch-1 latency of each path, requests alternating (new connection each, as
    TDgpt's adapters do)."""
    direct: List[float] = []
    via_ray: List[float] = []
    for _ in range(count):
        direct.append(one_request(daemon_port, "/one", payload))
        via_ray.append(one_request(ray_port, "/one", payload))
    return {"serve_ms": 1000 * statistics.median(direct),
            "ray_ms": 1000 * statistics.median(via_ray)}


def throughput(port: int, route: str, args, payloads, horizon: int) -> dict:
    result = run_clients(port, route, args.clients, 10_000, payloads, args.seconds, horizon)
    return {"rps": result["done"] / result["seconds"], "errors": len(result["errors"]),
            "first_error": result["errors"][0] if result["errors"] else ""}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SOURCES), default="fracast")
    parser.add_argument("--replica-cpus", type=float, default=0.5,
                        help="num_cpus of each replica (Ray's reservation)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=100, help="overhead requests per path")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=8)
    args = parser.parse_args(argv)

    print("machine:", machine())
    print("machine:", describe(bfloat16=False))
    work = Path(tempfile.mkdtemp(prefix="tsfmd-ray-bench-"))
    daemon_port, ray_port = free_port(), free_port()
    config = work / "tsfmd.yaml"
    config.write_text(registry(daemon_port, args.model, args.replica_cpus, args.max_batch))
    payloads = bodies(64, args.context, args.horizon, seed=3)
    cluster = RayCluster(free_port(), head_cpus=2, worker_cpus=1)
    daemon = Daemon(config, daemon_port, work / "tsfmd.log")
    try:
        cluster.start()
        cluster.deploy(write_serve_config(config, work / "serve.yaml", ray_port))
        daemon.wait_ready(300)
        wait_ready(f"http://127.0.0.1:{ray_port}", timeout=300, models=["one", "two"])
        for _ in range(5):  # warm both paths
            one_request(daemon_port, "/one", payloads[0])
            one_request(ray_port, "/one", payloads[0])
        cost = overhead(daemon_port, ray_port, payloads[0], args.requests)
        rounds = {"one": [], "two": []}
        for _ in range(args.rounds):
            for name in rounds:
                rounds[name].append(throughput(ray_port, f"/{name}", args, payloads,
                                               args.horizon))
    finally:
        daemon.stop()
        cluster.stop()

    print(f"\nmodel {args.model}, context {args.context}, horizon {args.horizon}, replicas "
          f"num_cpus {args.replica_cpus}, max_batch {args.max_batch}")
    print(f"per-request overhead (batch 1, {args.requests} requests each, medians): "
          f"tsfmd serve {cost['serve_ms']:.1f} ms, Ray Serve {cost['ray_ms']:.1f} ms, "
          f"overhead {cost['ray_ms'] - cost['serve_ms']:+.1f} ms "
          f"({cost['ray_ms'] / cost['serve_ms']:.2f}x)")
    best = {}
    for name, results in rounds.items():
        rps = [r["rps"] for r in results]
        errors = sum(r["errors"] for r in results)
        best[name] = max(rps)
        print(f"throughput {name} replica(s), {args.clients} clients: "
              f"{' / '.join(f'{x:.1f}' for x in rps)} forecasts/s per round; errors {errors}"
              + (f" (first: {results[0]['first_error'] or results[-1]['first_error']})"
                 if errors else ""))
    print(f"2 replicas vs 1: {best['two'] / best['one']:.2f}x (best rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
