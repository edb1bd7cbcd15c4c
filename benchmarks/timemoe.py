"""Time-MoE engine speed: seconds per forecast, context 512, horizon 96 (issue 4).

Builds random-weight checkpoints of the released 50M and 200M configs (official layout,
weights stored in bfloat16 like the released files, loaded through the same path as real
weights) and prints, per config:
  * float32 and the default CPU mode (`auto`), batch 1 (s/forecast) and batch 8 (s/series);
  * the naive generation loop without the KV cache, in the same run, and the ratio;
  * the default mode's largest deviation from float32, in units of each series' std.
The original implementation (trust_remote_code, transformers 4.40.1) measured on this
machine kind: 0.68 s fp32 and 0.46 s bf16 per forecast (50M, batch 1); the goal for the
default mode is <= 0.34 s. Run under `flock /tmp/tsfmd-bench.lock` so benchmarks never
share the cores:

    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/timemoe.py [--configs 50M]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from tsfmd.families.base import SeriesInput
from tsfmd.families.timemoe.config import OFFICIAL
from tsfmd.families.timemoe.family import TimeMoeFamily, normalise, resolve_dtype
from tsfmd.families.timemoe.generate import generate_without_cache
from tsfmd.families.timemoe.weights import load_model, write_random_checkpoint

ORIGINAL_FP32_S = 0.68  # the original code, 50M, batch 1, this machine kind (issue 4)


def series(count: int, length: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return [
        SeriesInput(values=10 + 0.01 * t + np.sin(t / (5 + i)) + 0.3 * rng.standard_normal(length))
        for i in range(count)
    ]


def timed(fn, repeat: int) -> float:
    fn()  # warm-up: allocator, oneDNN kernels
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def family(directory: str, dtype: torch.dtype) -> TimeMoeFamily:
    model = load_model(directory, dtype=dtype)
    from tsfmd.families.base import Capabilities
    return TimeMoeFamily(model, Capabilities(context_limit=4096, horizon_limit=2048))


def run(name: str, context: int, horizon: int, repeat: int) -> None:
    default = resolve_dtype("auto", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        # bfloat16 on disk, as the released checkpoints store their weights
        write_random_checkpoint(tmp, OFFICIAL[name], seed=0, dtype=torch.bfloat16)
        fp32 = family(tmp, torch.float32)
        fast = family(tmp, default)
        one, eight = series(1, context), series(8, context, seed=1)
        print(f"\n{name}: context {context}, horizon {horizon}, {torch.get_num_threads()} threads")
        rows = {}
        with torch.inference_mode():
            for label, fam in (("float32", fp32), (f"default ({str(default)[6:]})", fast)):
                b1 = timed(lambda: fam.forecast(one, horizon), repeat)
                b8 = timed(lambda: fam.forecast(eight, horizon), max(1, repeat // 2)) / 8
                rows[label] = b1
                print(f"  {label:20s} batch 1: {b1:.3f} s/forecast   batch 8: {b8:.3f} s/series")
            normed = [normalise(s.values)[0] for s in one]
            naive = timed(lambda: generate_without_cache(fp32.model, normed, horizon),
                          max(1, repeat // 2))
            print(f"  {'float32, no KV cache':20s} batch 1: {naive:.3f} s/forecast")
            cached = rows["float32"]
            print(f"  KV cache speed-up (float32): {naive / cached:.2f}x")
            for label, b1 in rows.items():
                print(f"  {label}: {ORIGINAL_FP32_S / b1:.2f}x the original's float32 "
                      f"({ORIGINAL_FP32_S} s)" if name == "TimeMoE-50M" else "", end="")
                print() if name == "TimeMoE-50M" else None
            ref = fp32.forecast(eight, horizon).point
            got = fast.forecast(eight, horizon).point
            std = np.array([np.std(s.values, ddof=1) for s in eight])[:, None]
            print(f"  default vs float32: max |diff| = {np.max(np.abs(got - ref) / std):.4f} "
                  "series std (goal <= 0.01)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["50M", "200M"], choices=["50M", "200M"])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for size in args.configs:
        run(f"TimeMoE-{size}", args.context, args.horizon, args.repeat)


if __name__ == "__main__":
    main()
