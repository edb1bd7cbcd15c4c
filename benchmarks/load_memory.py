"""Issue 14, lean loading: peak and steady RSS, and start-to-ready time, of model loads.

    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/load_memory.py
    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/load_memory.py --configs 50M \
        --dtype float32
    flock /tmp/tsfmd-bench.lock .venv/bin/python benchmarks/load_memory.py --configs "" \
        --families chronos-bolt,chronos-2,timesfm-2.5

Writes random-weight checkpoints of the released 50M and 200M configs (official layout,
bfloat16 tensors like the released files; `--file-dtype float32` for float32 files) to a
temp dir, then loads each in a fresh subprocess through `TimeMoeFamily.load`, as a
registry entry would, once with the old eager loader (`weights.load_model_eager`) and once
with the lean one (`weights.load_model`). The child measures, from /proc/self/status:

* baseline: VmRSS after importing torch and tsfmd (the peak counter is then reset with
  /proc/self/clear_refs, so VmHWM afterwards is the load's own peak);
* load peak: VmHWM after the load minus the baseline;
* steady: VmRSS after the load (then gc and malloc_trim, as the daemon does after each
  load: tsfmd/core/heap.py) minus the baseline, i.e. what the model costs;
* reload peak: with the first model still held (it would still serve), a second checkpoint
  of the same config (other seed, i.e. a changed model) is loaded: VmHWM minus the
  baseline, so the two models together at their worst;
* load s: the load call alone; ready s: from starting the subprocess to the model being
  ready (python start and imports included).

weights = the bytes of the loaded parameters (dtype `auto` on a CPU without native
bfloat16 is float32, so 2x the bfloat16 file). Target (issue 14): steady and load peak
<= 1.2 x weights + 300 MB.

`--families` does the same for Chronos-Bolt, Chronos-2 and TimesFM 2.5 at their published
sizes (benchmarks/families.py's random checkpoints, float32 files), loaded through their
tsfmd family, i.e. transformers' `from_pretrained` (which builds on the meta device and
reads safetensors by mmap itself), each load followed by one forecast (512 points,
horizon 24), since mapped weights count in RSS only once read; load s includes that
forecast; weights = the float32 safetensors bytes.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py

MB = 1024 * 1024


def status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def weight_bytes(model) -> int:
    """Parameters and buffers, plus each int8 layer's packed weight (`dtype: int8`: one
    byte per weight and a float32 scale per output channel, held outside parameters)."""
    from tsfmd.families.quantize import is_int8_linear

    total = sum(t.numel() * t.element_size()
                for t in (*model.parameters(), *model.buffers()))
    for layer in model.modules():
        if is_int8_linear(layer):
            total += layer.out_features * (layer.in_features + 4)
    return total


def measure(load, first: str, second: str, weights=None) -> None:
    """Print the measures of `load(key, source)` (baseline, load peak, steady, reload peak
    with the first model still held) as one JSON line; `weights(model)` adds its bytes.
    After each load, gc and malloc_trim, as the daemon's load_family does."""
    from tsfmd.core.heap import release_free_memory

    gc.collect()
    base = status()["VmRSS"]
    reset_peak()
    t0 = time.perf_counter()
    fam = load("a", first)
    load_s = time.perf_counter() - t0
    peak = status()["VmHWM"] - base
    print("READY", flush=True)
    release_free_memory("load")
    now = status()
    steady = now["VmRSS"] - base
    reset_peak()
    other = load("b", second)
    reload_peak = status()["VmHWM"] - base
    release_free_memory("load")
    both = status()["VmRSS"] - base
    assert other is not fam
    result = {
        "load_s": load_s, "peak": peak, "steady": steady, "reload_peak": reload_peak,
        "both_steady": both, "rss_file": now["RssFile"],
        # the feed-forward's dtype (attention and norms stay float32 on CPUs)
        "dtype": fam.capabilities().dtype,
    }
    if weights is not None:
        result["weights"] = weights(fam)
    print(json.dumps(result), flush=True)


def child(loader: str, dtype: str, first: str, second: str) -> None:
    import torch  # noqa: F401
    from tsfmd.families.base import LoadSpec
    from tsfmd.families.timemoe import family as family_module, weights
    if loader == "eager":
        family_module.load_model = weights.load_model_eager

    def load(key: str, source: str):
        return family_module.TimeMoeFamily.load(LoadSpec(key=key, source=source, dtype=dtype))

    measure(load, first, second, weights=lambda fam: weight_bytes(fam.model))


def family_child(name: str, dtype: str, first: str, second: str) -> None:
    """The same measures for another family's load (loader "family:<name>"), each load
    followed by one forecast: from_pretrained maps float32 files without reading them, so
    the weights count in RSS only once a forward pass has touched them."""
    import numpy as np
    import torch
    from tsfmd.families import get_family
    from tsfmd.families.base import LoadSpec, SeriesInput

    family = get_family(name)
    probe = [SeriesInput(values=np.sin(np.arange(512) / 7.0) + 10.0)]

    def load_and_forecast(key: str, source: str):
        fam = family.load(LoadSpec(key=key, source=source, dtype=dtype))
        with torch.inference_mode():
            fam.forecast(probe, 24)
        return fam

    measure(load_and_forecast, first, second)


def run_child(loader, dtype, first, second) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", loader, dtype, str(first), str(second)],
        stdout=subprocess.PIPE, text=True,
    )
    ready = None
    result = None
    for line in proc.stdout:
        if line.startswith("READY"):
            ready = time.perf_counter() - start
        elif line.startswith("{"):
            result = json.loads(line)
    if proc.wait() != 0 or result is None:
        raise SystemExit(f"{loader} load of {first} failed")
    result["ready_s"] = ready
    return result


def measure_family(name: str, dtype: str, tmp: Path) -> dict:
    """Two copies of one published-size random checkpoint (the builders seed themselves),
    loaded by one child: the second stands for the changed model of a reload."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from families import build  # benchmarks/families.py

    dirs = [build(name, tmp / f"{name}-{copy}") for copy in (0, 1)]
    weights = sum(f.stat().st_size for f in Path(dirs[0]).glob("*.safetensors"))
    r = run_child(f"family:{name}", dtype, dirs[0], dirs[1])
    r.update(size=name, loader="from_pretrained", file=weights, weights=weights)
    return r


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        loader = sys.argv[2]
        if loader.startswith("family:"):
            family_child(loader.split(":", 1)[1], *sys.argv[3:6])
        else:
            child(*sys.argv[2:6])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="50M,200M")
    ap.add_argument("--dtype", default="auto",
                    help="registry dtype (auto, float32, bfloat16, int8)")
    ap.add_argument("--file-dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--loaders", default="eager,lean")
    ap.add_argument("--families", default="",
                    help="also: chronos-bolt,chronos-2,timesfm-2.5 at their published sizes")
    args = ap.parse_args()

    import torch
    from tsfmd.families.timemoe.config import OFFICIAL
    from tsfmd.families.timemoe.weights import WEIGHTS_FILE, write_random_checkpoint

    print("machine:", describe(bfloat16=False))
    files = f", Time-MoE file dtype {args.file_dtype}" if args.configs else ""
    print(f"torch {torch.__version__}, registry dtype {args.dtype}{files}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tsfmd-loadmem-") as tmp:
        for size in filter(None, args.configs.split(",")):
            dirs = []
            for seed in (0, 1):
                d = Path(tmp) / f"{size}-{seed}"
                write_random_checkpoint(d, OFFICIAL[f"TimeMoE-{size}"], seed=seed,
                                        dtype=getattr(torch, args.file_dtype))
                dirs.append(d)
            file_bytes = (dirs[0] / WEIGHTS_FILE).stat().st_size
            for loader in args.loaders.split(","):
                r = run_child(loader, args.dtype, dirs[0], dirs[1])
                r.update(size=size, loader=loader, file=file_bytes)
                rows.append(r)
                print(json.dumps(r), flush=True)
        for name in filter(None, args.families.split(",")):
            rows.append(measure_family(name, args.dtype, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print("| config | loader | file MB | ffn dtype | weights MB | load peak MB | steady MB "
          "| reload peak (2 models) MB | load s | ready s | target MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        target = 1.2 * r["weights"] + 300 * MB
        print(f"| {r['size']} | {r['loader']} | {r['file'] / MB:.0f} | {r['dtype']} "
              f"| {r['weights'] / MB:.0f} | {r['peak'] / MB:.0f} | {r['steady'] / MB:.0f} "
              f"| {r['reload_peak'] / MB:.0f} | {r['load_s']:.2f} | {r['ready_s']:.2f} "
              f"| {target / MB:.0f} |")


if __name__ == "__main__":
    main()
