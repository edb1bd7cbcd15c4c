"""The `time-moe` family: Time-MoE checkpoints served by tsfmd's own engine.

Forecasting follows the reference service (TDgpt's timemoe-server): each series is
normalised by its mean and sample standard deviation, the model generates the normalised
continuation, and that is scaled back. A constant series (std 0) is normalised with
scale 1 and scaled back with 0, so its forecast is the constant, never NaN. Context plus
horizon must fit the model's position limit (4096 for the released models): longer input
keeps its most recent points, cut for each request's own horizon when it is parsed
(Capabilities.position_limit), so a batch-mate asking more steps never shortens it. The
first steps depend on the total horizon (the head is chosen by the steps left), so only
requests of equal horizons share a generation (Capabilities.horizon_block = 1). The
normalisation makes the family affine-equivariant: tsfmd scales each series in float64
before it, so magnitudes float32 cannot hold forecast like any other.

Precision (registry `dtype`): float32, bfloat16 or float16 for the feed-forward products;
on CPUs attention always runs in float32 (see model.TimeMoe.set_compute_dtype). `auto` is
bfloat16 on GPUs and on CPUs with native bfloat16 (avx512_bf16, AMX), else float32.
`int8` (CPU only, opt-in, never `auto`): the feed-forwards as int8 weights with per-channel
scales and dynamic per-row activation quantization (families/quantize.py), attention float32.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

from tsfmd.families.base import (
    Capabilities, Family, Forecast, LoadSpec, ModelLoadError, SeriesInput, resolve_limit,
)
from tsfmd.families.timemoe.generate import generate, plan_groups
from tsfmd.families.timemoe.weights import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, load_model
from tsfmd.families.hub import resolve_model_dir
from tsfmd.families.quantize import INT8, refuse_int8_unless_cpu, used_dtype

#: int8's largest forecast error against float32, in each series' std, that the tiny
#: checkpoint's test holds to (tests/test_timemoe_int8.py: 2.1% median, 3.1% worst there).
#: Random 50M weights measured 2.4% median and 4.6% worst over 64 series with per-row input
#: scales (11% worst with one scale per input; benchmarks/int8.py). int8 weights alone,
#: activations left in float32, already give 1.05% median and 3.2% worst there: the 1%
#: that would let `auto` choose int8 is out of reach of per-channel int8 weights on random
#: weights, so int8 is opt-in only.
INT8_BOUND = 0.05
#: On CPUs one pass of about a thousand points (context + horizon, summed over the batch)
#: already keeps the cores busy: more rows only add latency and cache misses. Measured
#: with random 50M/200M weights, 2 cores (avx512_bf16/AMX), seconds per forecast by batch
#: size: 50M 512x96 0.16 (1), 0.17 (2), 0.19 (4), 0.24 (8); 200M 512x96 0.42, 0.42, 0.44,
#: 0.47; 50M 128x96 0.076 (1), 0.055 (4), 0.050 (16); 64x8 0.042 (1), 0.025 (4). So
#: 512x96 requests pair up at most, short ones gather by the dozen (max_batch still caps).
#: On GPUs tsfmd has no measure (none here): batches are bounded by count alone.
CPU_BATCH_POINTS = 1280
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bfloat16 natively (avx512_bf16 or AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The registry's dtype; "auto" is bfloat16 on GPUs and bf16-capable CPUs, else float32.
    "int8" is not one: a family that quantizes (TimeMoeFamily.load) handles it itself."""
    if name == "auto":
        if device.startswith("cuda") or cpu_has_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise ModelLoadError(f"dtype must be auto, float32, bfloat16 or float16, not {name!r}")
    return _DTYPES[name]


def normalise(values: np.ndarray):
    """(normalised float32 values, mean, std) as the reference: sample std, ddof=1."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    if not np.isfinite(std):
        std = 0.0
    scale = std if std > 0.0 else 1.0
    return ((values - mean) / scale).astype(np.float32), mean, std


class TimeMoeFamily(Family):
    name = "time-moe"
    option_values = {}
    # Maple728/TimeMoE-50M and -200M's cards say apache-2.0 (their first README said mit;
    # a pulled card's own `license:` wins over this)
    license = "apache-2.0"
    hub_patterns = (CONFIG_FILE, WEIGHTS_FILE, "generation_config.json")

    def __init__(self, model, caps: Capabilities):
        self._model = model
        self._caps = caps
        self.position_limit = model.config.max_position_embeddings

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        _checkpoint_dir(spec, offline=True)

    @classmethod
    def load(cls, spec: LoadSpec) -> "TimeMoeFamily":
        if spec.dtype == INT8:  # read in float32, quantized layer by layer (load_model)
            refuse_int8_unless_cpu(spec.dtype, spec.device)
            dtype = torch.float32
        else:
            dtype = resolve_dtype(spec.dtype, spec.device)
        directory = _checkpoint_dir(spec)
        # On CPUs attention stays float32 whatever the dtype: it is ~15% of the work and
        # most of bfloat16's error (model.TimeMoe.set_compute_dtype has the numbers).
        attention = torch.float32 if spec.device == "cpu" else dtype
        try:
            model = load_model(directory, dtype=dtype, device=spec.device,
                               attention_dtype=attention, int8=spec.dtype == INT8)
        except CheckpointError as exc:
            raise ModelLoadError(f"cannot load Time-MoE from {directory}: {exc}") from exc
        except (RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"cannot load Time-MoE from {directory} onto {spec.device}: {exc}"
            ) from exc
        limit = model.config.max_position_embeddings
        caps = Capabilities(
            context_limit=resolve_limit(spec.context_limit, limit),
            # autoregressive chunks drift on very long horizons; keep half the positions
            horizon_limit=resolve_limit(spec.horizon_limit, max(1, limit // 2)),
            min_context=1,
            point_forecast="mean",
            affine_equivariant=True,
            position_limit=limit,
            # Horizons made of whole longest-head chunks (64, 128, ...) are prefixes of one
            # another, but the longer one needs more positions: a long series cut for 64
            # steps cannot run 128 without losing context. Equal horizons only.
            horizon_block=1,
            dtype=used_dtype(spec.dtype, dtype),
            batch_points=CPU_BATCH_POINTS if spec.device == "cpu" else None,
        )
        return cls(model, caps)

    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def model(self):
        return self._model

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        horizon = int(horizon)
        # context + horizon <= position limit; served requests were cut for their own
        # horizon already (protocol), this guards direct calls
        keep = max(1, self.position_limit - horizon)
        normed: List[np.ndarray] = []
        stats = np.zeros((len(batch), 2))
        for i, series in enumerate(batch):
            values, mean, std = normalise(np.asarray(series.values)[-keep:])
            normed.append(values)
            stats[i] = mean, std
        point = np.empty((len(batch), horizon))
        with torch.inference_mode():
            for group in plan_groups([len(v) for v in normed]):
                out = generate(self._model, [normed[i] for i in group], horizon)
                point[group] = out.float().cpu().numpy()
        point = point * stats[:, 1:2] + stats[:, 0:1]
        return Forecast(point=point)

    def close(self) -> None:
        self._model = None


def _checkpoint_dir(spec: LoadSpec, offline: bool = False) -> Path:
    """The directory with the checkpoint's config and weights (a hub download fetches only
    those and generation_config.json); `offline` never downloads."""
    return resolve_model_dir(
        spec.source, spec.cache_dir, required=(CONFIG_FILE, WEIGHTS_FILE),
        allow_patterns=list(TimeMoeFamily.hub_patterns), offline=offline,
    )
