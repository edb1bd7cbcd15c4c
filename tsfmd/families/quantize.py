"""int8 on CPU (registry `dtype: int8`): int8 weights with one scale per output channel,
activations quantized per call and per row (dynamic quantization), results in float32.

The kernels are torch's own: the quantized engine's dynamic product
(torch.ops.quantized.linear_dynamic, fbgemm's int8 GEMM on x86, VNNI where the CPU has it),
the one torch.ao.quantization's dynamic Linear calls; Int8Linear below adds the per-row
scales around it. Why dynamic over weight-only: torch's weight-only int8 product
(_weight_int8pack_mm) measured 1-5 GFLOP/s on this CPU's expert-shaped GEMMs against
50-180 for float32 and 270-1400 for the dynamic int8 GEMM (benchmarks/int8.py prints all
three), though weight-only is the more accurate (it keeps activations in float). Why not
torchao: it is not in tsfmd's dependencies and these kernels are in the torch tsfmd already
has. torch says its quantized tensors are deprecated in favour of torchao; they still work in
torch 2.13, and tsfmd silences that warning here only. torch is imported where used, so
family modules can import this one without it.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

from tsfmd.families.base import ModelLoadError
from tsfmd.families.file_pages import file_mappings, page_out

INT8 = "int8"


@contextmanager
def _quiet():
    """torch's deprecation notices for quantized tensors are no news to a user."""
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


def _int8_linear_class():
    """Int8Linear, defined on first use so that importing this module needs no torch."""
    global _Int8Linear
    if _Int8Linear is not None:
        return _Int8Linear
    import torch
    from torch import nn

    class Int8Linear(nn.Module):
        """x @ W.T + b with W in int8 (one scale per output channel) and x quantized per
        row: each row is divided by its own largest magnitude before fbgemm's dynamic
        product (which quantizes its whole input with one scale) and the result multiplied
        back. One scale for a whole [tokens, features] input let the token with the largest
        activations set the step for all the others: random Time-MoE 50M weights, 64
        series, worst error 11.4% -> 4.6% of the series' std (median 2.6% -> 2.4%), for
        2-6% of int8's speed (benchmarks/README.md, "int8 per-row scales")."""

        def __init__(self, weight: "torch.Tensor", bias: "torch.Tensor" = None):
            super().__init__()
            w = weight.detach().float()
            scales = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
            zeros = torch.zeros(w.shape[0], dtype=torch.long)
            with _quiet():
                qweight = torch.quantize_per_channel(w, scales.double(), zeros, 0, torch.qint8)
                self._packed = torch.ops.quantized.linear_prepack(qweight, None)
            self.in_features, self.out_features = w.shape[1], w.shape[0]
            self.register_buffer("bias", None if bias is None else bias.detach().float())

        def weight(self) -> "torch.Tensor":
            """The int8 weight (a method, as torch's own quantized Linear has it: callers
            that test `isinstance(layer.weight, Tensor)` see that it is not a float one)."""
            return torch.ops.quantized.linear_unpack(self._packed)[0]

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            x = x.float()
            row_max = x.abs().amax(dim=-1, keepdim=True).clamp_min_(1e-30)
            # reduce_range=True: 7-bit activations, so that AVX2's 16-bit pair sums
            # (no VNNI) cannot saturate; fbgemm's own dynamic Linear does the same. 8-bit
            # ones on an AVX2-only CPU measured worse, not better (50M, 64 series: median
            # error 2.4% -> 3.3% of the series' std): the saturation is real.
            y = torch.ops.quantized.linear_dynamic(x / row_max, self._packed, True)
            y = y.mul_(row_max)
            return y if self.bias is None else y.add_(self.bias)

        def extra_repr(self) -> str:
            return (f"in_features={self.in_features}, out_features={self.out_features}, "
                    f"bias={self.bias is not None}, int8 per-channel weights, per-row inputs")

    _Int8Linear = Int8Linear
    return Int8Linear


_Int8Linear = None


def is_int8_linear(layer) -> bool:
    return _Int8Linear is not None and isinstance(layer, _Int8Linear)


def int8_linear(weight: "torch.Tensor", bias: "torch.Tensor" = None) -> "nn.Module":
    """One Int8Linear for a bare [out, in] weight (fused experts keep theirs as slices of
    one tensor, not as nn.Linear modules)."""
    return _int8_linear_class()(weight, bias)


def quantize_linears(module: "nn.Module", skip: tuple = ()) -> "nn.Module":
    """Every nn.Linear under `module` replaced, in place, by an Int8Linear, except those
    whose qualified name contains one of `skip` (lower-cased, e.g. ATTENTION); returns
    `module`. Each float weight is dropped as its int8 copy takes its place, and the pages
    of one read straight from its checkpoint file are handed back (file_pages.py)."""
    from torch import nn

    chosen = [
        name for name, layer in module.named_modules()
        if isinstance(layer, nn.Linear) and not any(part in name.lower() for part in skip)
    ]
    if "" in chosen:  # `module` itself is a Linear: nothing holds it to swap
        raise ValueError("quantize_linears needs a module that holds Linears; use int8_linear")
    mappings = file_mappings()  # float weights read straight from the checkpoint file
    for name in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        linear = getattr(parent, attr)
        setattr(parent, attr, int8_linear(linear.weight, linear.bias))
        page_out(linear.weight.detach(), mappings)  # its file pages are not read again
    return module


def dtype_of(layer: "nn.Module") -> "torch.dtype":
    """The dtype a layer's input should be in: its weight's, float32 for an int8 layer
    (whose `weight` is a method returning the quantized tensor)."""
    import torch

    weight = layer.weight
    return weight.dtype if isinstance(weight, torch.Tensor) else torch.float32
