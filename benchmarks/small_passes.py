"""Time-MoE's small passes (issue 14): the 64-step decode chunks of a long horizon and short
requests batched by the dozen, against this machine's own GEMM rate.

Cases (random weights of a released config, float32 or what --dtype says, through
TimeMoeFamily.load like a registry entry):
  * 512x720, 1 series: one 512-token prefill, then eleven 64-token decode passes;
  * 64x8, 16 series: one pass of 16 x 64 tokens (what batching makes of 64x8 requests);
  * 512x96, 1 series: the reference shape, mostly prefill.
Each prints seconds per call (best of --repeat after a warm-up) and the rate of its matrix
products (torch.profiler's FLOP count of aten::mm/addmm/_grouped_mm over their time), so a
figure reads against the GEMM peak measured in the same run.

`--before DIR` runs the same cases in a subprocess whose `tsfmd` is imported from DIR (e.g.
a `git worktree` of an older commit), alternating with this tree in `--rounds` rounds, and
prints both and their ratio: the cores are shared, so only figures from one run compare.

    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/small_passes.py
    git worktree add /tmp/before <commit>
    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/small_passes.py --before /tmp/before
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import describe  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parent.parent
CASES = {"512x720 b1": (512, 720, 1), "64x8 b16": (64, 8, 16), "512x96 b1": (512, 96, 1)}
PRODUCTS = ("aten::mm", "aten::addmm", "aten::_grouped_mm", "aten::bmm")


def measure(directory: str, dtype: str, repeat: int) -> dict:
    """{case: {"s": best seconds, "gflops": rate of its products}} for one engine."""
    from torch.profiler import ProfilerActivity, profile

    from tsfmd.families.base import LoadSpec, SeriesInput
    from tsfmd.families.timemoe.family import TimeMoeFamily

    family = TimeMoeFamily.load(LoadSpec(key="bench", source=directory, dtype=dtype,
                                         device="cpu"))
    rng = np.random.default_rng(0)
    results = {}
    for name, (context, horizon, batch) in CASES.items():
        t = np.arange(context)
        series = [SeriesInput(values=np.sin(t / (5 + i)) + 0.3 * rng.standard_normal(context))
                  for i in range(batch)]
        family.forecast(series, horizon)  # warm-up
        best = float("inf")
        for _ in range(repeat):
            began = time.perf_counter()
            family.forecast(series, horizon)
            best = min(best, time.perf_counter() - began)
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            family.forecast(series, horizon)
        products = [e for e in prof.key_averages() if e.key in PRODUCTS]
        flops = sum(e.flops for e in products)
        seconds = sum(e.self_cpu_time_total for e in products) / 1e6
        results[name] = {"s": best, "gflops": flops / 1e9 / seconds if seconds else 0.0}
    import tsfmd

    results["tsfmd"] = tsfmd.__file__  # which tree this process imported
    return results


def run_tree(tree: str, directory: str, dtype: str, repeat: int) -> dict:
    """measure() in a fresh process importing tsfmd from `tree`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, str(Path(__file__).parent)]))
    out = subprocess.run(
        [sys.executable, __file__, "--child", directory, "--dtype", dtype,
         "--repeat", str(repeat)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="50M", choices=("50M", "200M"))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", help="a tree whose tsfmd is the baseline")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.dtype, args.repeat)))
        return 0

    import torch

    sys.path.insert(0, str(ROOT))
    from tsfmd.families.timemoe.config import OFFICIAL
    from tsfmd.families.timemoe.weights import write_random_checkpoint

    print(describe())
    print(f"Time-MoE {args.size}, dtype {args.dtype}, {torch.get_num_threads()} threads, "
          f"best of {args.repeat} per round, {args.rounds} rounds")
    trees = {"this tree": str(ROOT)}
    if args.before:
        trees = {"before": str(Path(args.before).resolve()), **trees}
    with tempfile.TemporaryDirectory() as directory:
        write_random_checkpoint(directory, OFFICIAL[f"TimeMoE-{args.size}"], seed=0,
                                dtype=torch.bfloat16)
        best = {label: {} for label in trees}
        for _ in range(args.rounds):
            for label, tree in trees.items():  # alternate: other load hits both
                rows = run_tree(tree, directory, args.dtype, args.repeat)
                if not rows.pop("tsfmd").startswith(tree):
                    raise SystemExit(f"{label}: tsfmd was not imported from {tree}")
                for case, row in rows.items():
                    kept = best[label].get(case)
                    if kept is None or row["s"] < kept["s"]:
                        best[label][case] = row
    print(f"\n| case | {' | '.join(f'{label} s' for label in trees)} | "
          f"{' | '.join(f'{label} GEMM GFLOP/s' for label in trees)} |"
          + (" before / this tree |" if args.before else ""))
    print("| --- " * (2 * len(trees) + 1 + bool(args.before)) + "|")
    for case in CASES:
        rows = [best[label][case] for label in trees]
        line = (f"| {case} | " + " | ".join(f"{r['s']:.3f}" for r in rows) + " | "
                + " | ".join(f"{r['gflops']:.0f}" for r in rows) + " |")
        if args.before:
            line += f" {rows[0]['s'] / rows[1]['s']:.2f}x |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
