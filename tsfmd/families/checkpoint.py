"""Helpers for families whose weights are a Hugging Face style checkpoint directory.

`open_checkpoint` finds the directory (through `resolve_model_dir`, so every family words
a missing model the same way), checks that weights are there and reads `config.json`, so
that a family can refuse a checkpoint of another kind with a sentence instead of a deep
traceback from `from_pretrained`. Nothing here imports torch at module level.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence, Tuple

from tsfmd.families.base import LoadSpec, ModelLoadError
from tsfmd.families.hub import resolve_model_dir

#: any one of these is a loadable set of weights in the published layouts
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
#: tsfmd loads models in parallel threads, but neither a library's first import nor
#: transformers' from_pretrained is safe to run in two threads at once: two loads failed
#: with "Tensor.item() cannot be called on meta tensors", and two families importing at
#: once got half-initialised modules ("cannot import name TimesFm2_5ModelForPrediction",
#: chronos' "unknown pipeline class"). Every import of a family's module or libraries
#: (tsfmd.families.get_family, each family's load) and every from_pretrained holds this
#: one lock; it is re-entrant so a load may import while it holds it.
LIBRARY_LOCK = threading.RLock()
#: what a hub download needs: configs and safetensors, never optimizer states or ONNX copies
HUB_PATTERNS = ("*.json", "*.safetensors")


def open_checkpoint(spec: LoadSpec, offline: bool = False) -> Tuple[Path, dict]:
    """The local checkpoint directory for `spec.source` and its parsed config.json;
    `offline` never downloads (a family's `check_source`)."""
    directory = resolve_model_dir(
        spec.source, spec.cache_dir, required=("config.json",), allow_patterns=HUB_PATTERNS,
        offline=offline,
    )
    if not any((directory / name).exists() for name in WEIGHT_FILES):
        raise ModelLoadError(
            f"no weights in {directory} (source {spec.source}): expected one of "
            f"{', '.join(WEIGHT_FILES)}"
        )
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {directory / 'config.json'}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{directory / 'config.json'} is not a JSON object")
    return directory, config


def torch_dtype(spec: LoadSpec, family: str, allowed: Sequence[str], auto_cuda: str = "float32"):
    """The torch dtype for `spec.dtype`: "auto" is float32 on CPU and `auto_cuda` on a GPU;
    "int8" (where `allowed` has it; CPU only) loads float32 for the family to quantize."""
    import torch

    from tsfmd.families.quantize import INT8, refuse_int8_unless_cpu

    name = spec.dtype
    if name == INT8 and INT8 in allowed:  # built in float32, quantized by the family
        refuse_int8_unless_cpu(name, spec.device)
        return torch.float32
    if name == "auto":
        name = auto_cuda if spec.device.startswith("cuda") else "float32"
    if name not in allowed:
        raise ModelLoadError(f"{family} runs in {' or '.join(allowed)}, not {name}")
    return getattr(torch, name)
