"""Int8Linear (families/quantize.py), the layer every `dtype: int8` family runs its
feed-forwards on: int8 weights, each input row quantized on its own scale, real fbgemm
kernels and random weights; and quantize_linears handing back the pages of a weight read
straight from its file (families/file_pages.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from tsfmd.families.quantize import int8_linear, is_int8_linear, quantize_linears


def relative_error(got: torch.Tensor, want: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per row: |error| / |the product without bias|."""
    return (got - want).norm(dim=-1) / (want - bias).norm(dim=-1)


def test_each_row_keeps_its_precision_beside_rows_a_million_times_larger():
    # One scale for the whole input would round the small rows to nothing: the token with
    # the largest activations would set the step for all of them.
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 256), torch.randn(96)
    layer = int8_linear(weight, bias)
    x = torch.randn(6, 256) * torch.tensor([[1e4], [1.0], [1e-2], [3e-3], [1e3], [1e-2]])
    with torch.inference_mode():
        err = relative_error(layer(x), nn.functional.linear(x, weight, bias), bias)
    assert err.max() < 0.03, err  # 7-bit inputs and 8-bit weights: ~1.6% per row here


def test_an_all_zero_row_gives_the_bias_and_a_batch_of_any_rank_works():
    torch.manual_seed(1)
    weight, bias = torch.randn(32, 64), torch.randn(32)
    layer = int8_linear(weight, bias)
    x = torch.randn(2, 5, 64)
    x[1, 3] = 0.0
    with torch.inference_mode():
        y = layer(x)
    assert y.shape == (2, 5, 32) and torch.isfinite(y).all()
    assert torch.equal(y[1, 3], bias)
    assert layer.weight().dtype == torch.qint8  # a method, as torch's quantized Linear


def test_quantize_linears_swaps_all_but_the_skipped_and_keeps_their_output():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    model.attn = nn.Linear(64, 64)
    x = torch.randn(10, 64)
    with torch.inference_mode():
        want = model(x)
        quantize_linears(model, skip=("attn",))
        got = model(x)
    assert is_int8_linear(model[0]) and is_int8_linear(model[2])
    assert isinstance(model.attn, nn.Linear)  # attention stays float32
    assert ((got - want).norm(dim=-1) / want.norm(dim=-1)).max() < 0.05


def test_quantize_linears_refuses_a_bare_linear_it_could_not_swap():
    with pytest.raises(ValueError, match="use int8_linear"):
        quantize_linears(nn.Linear(4, 4))


def rss_file() -> int:
    """Resident bytes of this process's file mappings (/proc/self/status RssFile)."""
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_a_linear_read_from_its_file_hands_its_pages_back_once_quantized(tmp_path):
    # transformers' from_pretrained leaves float32 weights backed by the mapped checkpoint;
    # torch.from_file maps a file the same way. Its pages must not stay resident once the
    # int8 copy replaced it, and its data must stay intact (page-out never changes data).
    rows, cols = 2048, 4096  # 32 MB of float32
    path = tmp_path / "weight.f32"
    np_weight = np.random.default_rng(3).standard_normal(rows * cols).astype(np.float32)
    with open(path, "wb") as out:
        np_weight.tofile(out)
        out.flush()
        os.fsync(out.fileno())  # clean pages: the kernel may drop them at once
    mapped = torch.from_file(str(path), shared=True, size=rows * cols).view(rows, cols)
    model = nn.Sequential(nn.Linear(cols, rows, bias=False))
    model[0].weight = nn.Parameter(mapped, requires_grad=False)
    total = float(mapped.sum())  # read: every page resident
    before = rss_file()
    quantize_linears(model)
    assert before - rss_file() >= 0.8 * rows * cols * 4
    assert float(mapped.sum()) == total  # still readable, unchanged


def test_page_out_leaves_memory_that_no_file_backs_alone():
    from tsfmd.families.file_pages import file_mappings, page_out

    heap = torch.ones(1 << 20)
    assert page_out(heap, file_mappings()) == 0 and float(heap.sum()) == 1 << 20
