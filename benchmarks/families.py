"""Chronos-Bolt, Chronos-2 and TimesFM 2.5 on this CPU: seconds per forecast (issue 7).

Builds random-weight checkpoints at the published sizes (chronos-bolt-small, chronos-2,
timesfm-2.5-200m; speed does not depend on the weights' values), saves them in the
published layout and loads them through the tsfmd families, as real weights would be.
Prints, per family, with history 512 (the fastest of --repeats runs):
  * one series, horizon 24 and a long horizon (past the native block): s/forecast;
  * 8 series of different lengths as ONE batch vs the same 8 one at a time: s/series and
    the ratio (what the dynamic batcher gains on this machine).
No goal is set by the issue; the numbers size `batching.timeout_s` and adapter timeouts.
Run under the benchmark lock so benchmarks never share the cores:

    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/families.py [--families chronos-2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import tinymodels  # noqa: E402  (the builders the tests use, here at published sizes)

from machine import describe  # noqa: E402  (benchmarks/machine.py)

from tsfmd.families import get_family  # noqa: E402
from tsfmd.families.base import LoadSpec, SeriesInput  # noqa: E402

LONG = {"chronos-bolt": 192, "chronos-2": 256, "timesfm-2.5": 256}


def build(family: str, directory: Path) -> Path:
    """A random checkpoint at the published size (architecture numbers from the model cards)."""
    if family == "chronos-bolt":
        return tinymodels.chronos_bolt(
            directory, context_length=2048, prediction_length=64,
            size=dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                      num_heads=8),
        )
    if family == "chronos-2":
        return tinymodels.chronos2(
            directory, context_length=8192, max_output_patches=64,
            size=dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
        )
    return tinymodels.timesfm25(
        directory, context_length=16384, horizon_length=128,
        size=dict(num_hidden_layers=20, hidden_size=1280, intermediate_size=1280, head_dim=80,
                  num_attention_heads=16, num_key_value_heads=16, output_quantile_len=1024),
    )


def series(count: int, lengths, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = lengths[i % len(lengths)]
        t = np.arange(n)
        values = 50 + 0.02 * t + 5 * np.sin(t / (6 + i)) + rng.normal(0, 1, n)
        out.append(SeriesInput(values=values))
    return out


def seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` runs: on a 2-core machine shared with other work the
    slower runs measure the neighbours (single runs here varied from 0.1 s to 2.9 s)."""
    fn()  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(family: str, root: Path, repeats: int) -> None:
    started = time.perf_counter()
    source = build(family, root / family)
    built = time.perf_counter() - started
    started = time.perf_counter()
    model = get_family(family).load(LoadSpec(key=family, source=str(source)))
    loaded = time.perf_counter() - started
    one = series(1, [512])
    eight = series(8, [512, 300, 450, 380, 512, 333, 497, 401], seed=1)
    with torch.inference_mode():
        short = seconds(lambda: model.forecast(one, 24), repeats)
        long_ = seconds(lambda: model.forecast(one, LONG[family]), max(1, repeats // 2))
        batched = seconds(lambda: model.forecast(eight, 24), repeats) / 8
        alone = [lambda s=s: model.forecast([s], 24) for s in eight]
        singles = seconds(lambda: [f() for f in alone], max(1, repeats // 2)) / 8
    print(f"{family:13s} build {built:5.1f}s load {loaded:4.1f}s | h24 {short:6.3f} s | "
          f"h{LONG[family]} {long_:6.3f} s | batch8 {batched:6.3f} s/series vs one-at-a-time "
          f"{singles:6.3f} s/series: x{singles / batched:4.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(LONG), choices=list(LONG))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {describe(bfloat16=False)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, history 512, float32")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            bench(family, Path(tmp), args.repeats)


if __name__ == "__main__":
    main()
