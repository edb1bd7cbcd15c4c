"""int8 on CPU (registry `dtype: int8`): int8 weights with one scale per output channel,
activations quantized per call (dynamic quantization), results in float32.

The kernels are torch's own: torch.ao.quantization's dynamic quantized Linear, run by the
"x86" quantized engine (fbgemm's int8 GEMM, VNNI where the CPU has it; onednn for some
shapes). Why dynamic over weight-only: torch's weight-only int8 product
(_weight_int8pack_mm) measured 1-5 GFLOP/s on this CPU's expert-shaped GEMMs against
50-180 for float32 and 270-1400 for the dynamic int8 GEMM (benchmarks/int8.py prints all
three), though weight-only is the more accurate (it keeps activations in float). Why not
torchao: it is not in tsfmd's dependencies and these kernels are in the torch tsfmd already
has. torch.ao.quantization says it is deprecated in favour of torchao; it still works in
torch 2.13, and tsfmd silences that warning here only. torch is imported where used, so
family modules can import this one without it.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

from tsfmd.families.base import ModelLoadError

INT8 = "int8"


@contextmanager
def _quiet():
    """torch.ao.quantization's deprecation notices, once per call, are no news to a user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_channel.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        yield


def used_dtype(requested: str, dtype) -> str:
    """Capabilities.dtype: "int8" when asked for, else the torch dtype's name."""
    return INT8 if requested == INT8 else str(dtype).replace("torch.", "")


def refuse_int8_unless_cpu(dtype: str, device: str) -> None:
    """ModelLoadError for `dtype: int8` anywhere but the CPU (torch's int8 kernels are CPU
    ones), so the registry's mistake is told at load, not as a wrong or slow forecast."""
    if dtype == INT8 and not str(device).startswith("cpu"):
        raise ModelLoadError(
            f"dtype int8 runs on CPU only; device {device} would need float32, bfloat16 or "
            "float16 (or device: cpu)"
        )


#: parts of a module's qualified name that mark it as attention (kept float32, "as today")
ATTENTION = ("attn", "attention")


def quantize_linears(module: "nn.Module", skip: tuple = ()) -> "nn.Module":
    """Every nn.Linear under `module` replaced, in place, by an int8 dynamic Linear with
    per-channel weights, except those whose qualified name contains one of `skip`
    (lower-cased, e.g. ATTENTION); returns `module`."""
    import torch
    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {
        name for name, layer in module.named_modules()
        if isinstance(layer, nn.Linear) and not any(part in name.lower() for part in skip)
    }
    if not names:
        return module
    spec = {name: per_channel_dynamic_qconfig for name in names} if skip else {
        nn.Linear: per_channel_dynamic_qconfig}
    with _quiet():
        return quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)


def int8_linear(weight: "torch.Tensor", bias: "torch.Tensor" = None) -> "nn.Module":
    """One int8 dynamic Linear for a bare [out, in] weight (fused experts keep theirs as
    slices of one tensor, not as nn.Linear modules)."""
    import torch
    from torch import nn

    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        if bias is not None:
            layer.bias.copy_(bias.float())
    return quantize_linears(nn.Sequential(layer))[0]


def dtype_of(layer: "nn.Module") -> "torch.dtype":
    """The dtype a layer's input should be in: its weight's, float32 for an int8 layer
    (whose `weight` is a method returning the quantized tensor)."""
    import torch

    weight = layer.weight
    return weight.dtype if isinstance(weight, torch.Tensor) else torch.float32
