"""What a benchmark ran on: the CPU, its SIMD flags and the GEMM rate measured now, so every
figure can be read against this machine's own limit (shared by the benchmarks here)."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

#: the SIMD features that decide which dtype `auto` runs and how fast
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo(prefix: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> str:
    have = set(_cpuinfo("flags").split())
    if not have:
        return "unknown"
    return " ".join(f for f in FLAGS if f in have) or "none of " + " ".join(FLAGS)


def gemm_peak(dtype, rows: int = 512, inner: int = 1024, cols: int = 4096) -> float:
    """GFLOP/s of one model-sized product on this machine now (best of 5)."""
    import torch

    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - began)
    return 2 * rows * inner * cols / best / 1e9


def describe(bfloat16: bool = True) -> str:
    """Two lines: the CPU, cores, torch and Python; its flags and GEMM peaks now."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = _cpuinfo("model name") or platform.processor() or "unknown cpu"
    peaks = f"{gemm_peak(torch.float32):.0f} GFLOP/s float32"
    if bfloat16:
        peaks += f", {gemm_peak(torch.bfloat16):.1f} bfloat16"
    return (f"{cpu}, {cores} usable cores, torch {torch.__version__}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}\n"
            f"cpu flags: {cpu_flags()}; measured GEMM peak [512x1024]x[1024x4096]: {peaks}")
