"""`dtype: int8` against float32 on this CPU, in one run (issue 14).

Prints the CPU's SIMD flags; the measured GFLOP/s of float32, dynamic int8 with per-row
input scales (what tsfmd runs) and weight-only int8 (torch._weight_int8pack_mm) at a
model-shaped GEMM; then, for random-weight Time-MoE 50M and 200M checkpoints (loaded
through the family's own path), the seconds per forecast of float32 and int8 at each context and batch size, repeats
interleaved (fp32, int8, fp32, int8, ...) so load from other work on the cores hits both
alike, the ratio of the fastest runs, and int8's forecast error against float32 over 64
random series at the shortest context (max over the horizon / the series' std; median and
worst series). Then the same for Chronos-Bolt, Chronos-2 and TimesFM 2.5 at their
published sizes with random weights (context 512; median forecasts).

    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/int8.py [--configs 50M] \
        [--families chronos-2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import cpu_flags  # benchmarks/machine.py
from timemoe import timed  # benchmarks/timemoe.py: the fastest of repeats after a warm-up
from tsfmd.families import get_family
from tsfmd.families.base import LoadSpec, SeriesInput
from tsfmd.families.quantize import int8_linear
from tsfmd.families.timemoe.config import OFFICIAL
from tsfmd.families.timemoe.family import TimeMoeFamily
from tsfmd.families.timemoe.weights import write_random_checkpoint

OTHERS = ("chronos-bolt", "chronos-2", "timesfm-2.5")


def gemm_peaks(hidden: int, inner: int) -> None:
    """One expert-shaped product [rows, hidden] x [hidden, 2*inner] three ways."""
    weight = torch.randn(2 * inner, hidden)
    scales = weight.abs().amax(dim=1) / 127
    packed = torch.round(weight / scales[:, None]).to(torch.int8)
    dynamic = int8_linear(weight)
    for rows in (8, 512):
        x = torch.randn(rows, hidden)
        flop = 2 * rows * hidden * 2 * inner / 1e9
        with torch.inference_mode():
            fp32 = timed(lambda: torch.nn.functional.linear(x, weight), 20)
            int8 = timed(lambda: dynamic(x), 20)
            wonly = timed(lambda: torch._weight_int8pack_mm(x, packed, scales), 5)
        print(f"  GEMM {rows}x{hidden} @ {hidden}x{2 * inner}: float32 {flop / fp32:.0f} GFLOP/s,"
              f" int8 per-row (tsfmd) {flop / int8:.0f}, weight-only int8 {flop / wonly:.0f}")


def series(count: int, length: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return [SeriesInput(values=rng.normal(0, 50) + rng.normal(0, 0.05) * t
                        + rng.uniform(0.5, 5) * np.sin(t / rng.uniform(3, 40))
                        + rng.uniform(0.1, 2) * rng.standard_normal(length))
            for _ in range(count)]


def interleaved(families: dict, batch: list, horizon: int, repeat: int) -> dict:
    best = {label: float("inf") for label in families}
    for fam in families.values():
        fam.forecast(batch, horizon)  # warm-up
    for _ in range(repeat):
        for label, fam in families.items():
            started = time.perf_counter()
            fam.forecast(batch, horizon)
            best[label] = min(best[label], time.perf_counter() - started)
    return best


def accuracy(families: dict, context: int, horizon: int, count: int = 64) -> str:
    rows = series(count, context, seed=7)
    want = np.concatenate([families["float32"].forecast(rows[i:i + 8], horizon).point
                           for i in range(0, count, 8)])
    got = np.concatenate([families["int8"].forecast(rows[i:i + 8], horizon).point
                          for i in range(0, count, 8)])
    assert np.isfinite(got).all()
    std = np.array([np.std(r.values, ddof=1) for r in rows])
    err = np.abs(got - want).max(axis=1) / std
    return f"median {np.median(err):.4f}, worst {err.max():.4f}"


def compare(families: dict, contexts, batches, horizon: int, repeat: int) -> None:
    with torch.inference_mode():
        for context in contexts:
            for size_b in batches:
                best = interleaved(families, series(size_b, context, seed=1), horizon, repeat)
                print(f"  context {context:5d} batch {size_b}: float32 {best['float32']:.3f}"
                      f" s, int8 {best['int8']:.3f} s, {best['float32'] / best['int8']:.2f}x")
        # at the shortest context only: 64 series at 2048 on 200M take minutes here
        print(f"  context {contexts[0]:5d} int8 vs float32, 64 series, error / std: "
              f"{accuracy(families, contexts[0], horizon)}")


def run_timemoe(size: str, contexts, batches, horizon: int, repeat: int) -> None:
    cfg = OFFICIAL[f"TimeMoE-{size}"]
    print(f"\nTime-MoE {size} (random weights), horizon {horizon}, best of {repeat} interleaved")
    gemm_peaks(cfg["hidden_size"], cfg["intermediate_size"] // cfg["num_experts_per_tok"])
    with tempfile.TemporaryDirectory() as tmp:
        write_random_checkpoint(tmp, cfg, seed=0, dtype=torch.bfloat16)
        families = {dtype: TimeMoeFamily.load(LoadSpec(key="b", source=tmp, dtype=dtype))
                    for dtype in ("float32", "int8")}
        compare(families, contexts, batches, horizon, repeat)


def run_other(name: str, batches, horizon: int, repeat: int) -> None:
    """Chronos-Bolt (small), Chronos-2 and TimesFM 2.5 at their published sizes, context 512
    (benchmarks/families.py builds them)."""
    from families import build

    print(f"\n{name} (random weights, published size), horizon {horizon}, best of {repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        source = build(name, Path(tmp) / name)
        families = {dtype: get_family(name).load(LoadSpec(key="b", source=str(source),
                                                          dtype=dtype))
                    for dtype in ("float32", "int8")}
        compare(families, [512], batches, horizon, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=["50M", "200M"], choices=["50M", "200M"])
    parser.add_argument("--families", nargs="*", default=list(OTHERS), choices=list(OTHERS))
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU flags: {cpu_flags()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, quantized engine "
          f"{torch.backends.quantized.engine}")
    for size in args.configs:
        run_timemoe(size, args.contexts, args.batches, args.horizon, args.repeat)
    for name in args.families:
        run_other(name, args.batches, args.horizon, args.repeat)


if __name__ == "__main__":
    main()
