"""Issue 14, lean loading: weights.load_model builds on the meta device and fills the
module from the memory-mapped file with assign=True. It must give the same module as the
old eager path (weights.load_model_eager: load_file, torch.cat, load_state_dict copies)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from tsfmd.families.timemoe.config import TimeMoeConfig
from tsfmd.families.timemoe.generate import generate
from tsfmd.families.timemoe.weights import (
    CheckpointError, load_model, load_model_eager, write_random_checkpoint,
)

TINY = FIXTURES / "timemoe" / "tiny"
DTYPES = [(torch.float32, None), (torch.bfloat16, torch.float32), (torch.bfloat16, None)]


def series(seed=0, n=(120, 37, 64)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(k).astype(np.float32) for k in n]


@pytest.mark.parametrize("dtype,attention", DTYPES)
def test_lean_load_equals_the_eager_path(dtype, attention):
    lean = load_model(TINY, dtype=dtype, attention_dtype=attention)
    eager = load_model_eager(TINY, dtype=dtype, attention_dtype=attention)
    lean_state, eager_state = lean.state_dict(), eager.state_dict()
    assert lean_state.keys() == eager_state.keys()
    for name, tensor in lean_state.items():
        assert not tensor.is_meta, name
        assert tensor.dtype == eager_state[name].dtype, name
        assert torch.equal(tensor, eager_state[name]), name
    for name, buf in lean.named_buffers():
        assert not buf.is_meta, name
        assert torch.equal(buf, dict(eager.named_buffers())[name]), name
    assert lean.compute_dtype == eager.compute_dtype
    with torch.inference_mode():
        got = generate(lean, series(), 40)
        want = generate(eager, series(), 40)
    assert torch.equal(got, want)


def test_int8_quantized_during_the_load_equals_quantizing_the_float32_model():
    """load_model(int8=True) quantizes each layer as soon as it is filled, so the float32
    model never exists whole (benchmarks/load_memory.py --dtype int8 shows the peak); the
    model must be the one quantizing a float32 load afterwards gives."""
    during = load_model(TINY, int8=True)
    after = load_model_eager(TINY, int8=True)  # built whole in float32, then quantized
    for layer in during.layers:
        assert layer.ffn.int8_experts is not None and layer.ffn.gate_up.numel() == 0
    with torch.inference_mode():
        got = generate(during, series(), 40)
        want = generate(after, series(), 40)
    assert torch.isfinite(got).all() and torch.equal(got, want)


def test_no_parameter_stays_backed_by_the_file():
    """Every parameter owns its storage (none is a view of the mapped file), and no two
    share one: the file can be replaced or deleted while the model serves."""
    model = load_model(TINY)
    storages = [p.untyped_storage().data_ptr() for p in model.parameters()]
    assert len(set(storages)) == len(storages)
    for p in model.parameters():
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()


def test_a_bfloat16_file_loads_like_the_eager_path(tmp_path):
    cfg = TimeMoeConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=2, num_experts=4,
                        num_experts_per_tok=2, horizon_lengths=(1, 4),
                        max_position_embeddings=256)
    write_random_checkpoint(tmp_path, cfg, seed=3, dtype=torch.bfloat16)
    lean, eager = load_model(tmp_path), load_model_eager(tmp_path)
    for name, tensor in lean.state_dict().items():
        assert torch.equal(tensor, eager.state_dict()[name]), name
    dense = TimeMoeConfig.from_dict({**cfg.to_dict(), "use_dense": True})
    write_random_checkpoint(tmp_path / "dense", dense, seed=4)
    lean, eager = load_model(tmp_path / "dense"), load_model_eager(tmp_path / "dense")
    for name, tensor in lean.state_dict().items():
        assert torch.equal(tensor, eager.state_dict()[name]), name


def test_a_missing_key_fails_with_the_same_message(tmp_path):
    import shutil
    from safetensors.torch import load_file, save_file
    shutil.copytree(TINY, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    tensors = load_file(str(path))
    tensors.pop("model.layers.0.self_attn.k_proj.bias")
    save_file(tensors, str(path))
    messages = []
    for loader in (load_model, load_model_eager):
        with pytest.raises(CheckpointError, match=r"1 missing: model\.layers\.0\.self_attn"
                                                  r"\.k_proj\.bias") as info:
            loader(tmp_path / "ckpt")
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_a_truncated_file_is_a_checkpoint_error(tmp_path):
    import shutil
    shutil.copytree(TINY, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "ckpt")
