"""Official Time-MoE checkpoints <-> this engine's module.

A checkpoint in the official Hugging Face layout is a directory with `config.json` and
`model.safetensors` whose keys are the original module names (`model.layers.0.self_attn.
q_proj.weight`, `lm_heads.0.out_layer.weight`, ...). `load_model` checks that the file has
exactly the keys and shapes the config implies (an error names what is missing, unexpected
or misshapen), then fuses them into model.py's layout. No code from the checkpoint runs.

`write_random_checkpoint` writes a random-weight checkpoint in the official layout (the
original's initialisation: normal(0, initializer_range) products, zero biases, unit norms),
for tests and benchmarks that need a model of a released size without downloading it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
# at module level, so that tsfmd.families.get_family imports it under its lock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tsfmd.families.timemoe.config import TimeMoeConfig
from tsfmd.families.timemoe.model import TimeMoe

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """The files are not a usable Time-MoE checkpoint; the text says what is wrong."""


def official_shapes(cfg: TimeMoeConfig) -> Dict[str, Tuple[int, ...]]:
    """Every tensor an official checkpoint of `cfg` holds, with its shape."""
    h, inner, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q_width, kv_width = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    shapes = {
        "model.embed_layer.emb_layer.weight": (h, cfg.input_size),
        "model.embed_layer.gate_layer.weight": (h, cfg.input_size),
        "model.norm.weight": (h,),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q_width, h),
            p + "self_attn.q_proj.bias": (q_width,),
            p + "self_attn.k_proj.weight": (kv_width, h),
            p + "self_attn.k_proj.bias": (kv_width,),
            p + "self_attn.v_proj.weight": (kv_width, h),
            p + "self_attn.v_proj.bias": (kv_width,),
            p + "self_attn.o_proj.weight": (h, q_width),
        })
        if cfg.use_dense:
            shapes.update(_swiglu_shapes(p + "ffn_layer.", h, inner))
            continue
        shapes[p + "ffn_layer.gate.weight"] = (cfg.num_experts, h)
        shapes[p + "ffn_layer.shared_expert_gate.weight"] = (1, h)
        shapes.update(_swiglu_shapes(p + "ffn_layer.shared_expert.", h, inner))
        for e in range(cfg.num_experts):
            shapes.update(
                _swiglu_shapes(f"{p}ffn_layer.experts.{e}.", h, cfg.expert_intermediate_size)
            )
    for j, horizon in enumerate(cfg.horizon_lengths):
        shapes[f"lm_heads.{j}.out_layer.weight"] = (horizon * cfg.input_size, h)
    return shapes


def _swiglu_shapes(prefix: str, hidden: int, inner: int) -> dict:
    return {
        prefix + "gate_proj.weight": (inner, hidden),
        prefix + "up_proj.weight": (inner, hidden),
        prefix + "down_proj.weight": (hidden, inner),
    }


def check_keys(cfg: TimeMoeConfig, tensors: Mapping[str, torch.Tensor]) -> None:
    """Strict matching: raise CheckpointError naming missing, unexpected, misshapen keys."""
    expected = official_shapes(cfg)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = [
        f"{k} is {tuple(tensors[k].shape)}, expected {expected[k]}"
        for k in sorted(set(expected) & set(tensors))
        if tuple(tensors[k].shape) != expected[k]
    ]
    problems = []
    for what, items in (("missing", missing), ("unexpected", unexpected),
                        ("wrong shape", misshapen)):
        if items:
            shown = ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")
            problems.append(f"{len(items)} {what}: {shown}")
    if problems:
        raise CheckpointError(
            "the weights do not match config.json (" + "; ".join(problems) + ")"
        )


def to_native(cfg: TimeMoeConfig, tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official names -> model.py's fused parameters (float32)."""
    t = {k: v.to(torch.float32) for k, v in tensors.items()}
    out = {
        "embed_value": t["model.embed_layer.emb_layer.weight"][:, 0],
        "embed_gate": t["model.embed_layer.gate_layer.weight"][:, 0],
        "norm.weight": t["model.norm.weight"],
    }
    for i in range(cfg.num_hidden_layers):
        p, n = f"model.layers.{i}.", f"layers.{i}."
        attn = p + "self_attn."
        out[n + "attn_norm.weight"] = t[p + "input_layernorm.weight"]
        out[n + "ffn_norm.weight"] = t[p + "post_attention_layernorm.weight"]
        out[n + "attn.wqkv.weight"] = torch.cat([t[f"{attn}{x}_proj.weight"] for x in "qkv"])
        out[n + "attn.wqkv.bias"] = torch.cat([t[f"{attn}{x}_proj.bias"] for x in "qkv"])
        out[n + "attn.wo.weight"] = t[attn + "o_proj.weight"]
        ffn = p + "ffn_layer."
        if cfg.use_dense:
            out.update(_swiglu(t, ffn, n + "ffn.mlp."))
            continue
        out[n + "ffn.router.weight"] = torch.cat(
            [t[ffn + "gate.weight"], t[ffn + "shared_expert_gate.weight"]]
        )
        out.update(_swiglu(t, ffn + "shared_expert.", n + "ffn.shared."))
        experts = [_swiglu(t, f"{ffn}experts.{e}.", "") for e in range(cfg.num_experts)]
        out[n + "ffn.gate_up"] = torch.stack([e["gate_up.weight"] for e in experts])
        out[n + "ffn.down"] = torch.stack([e["down.weight"] for e in experts])
    for j in range(len(cfg.horizon_lengths)):
        out[f"heads.{j}.weight"] = t[f"lm_heads.{j}.out_layer.weight"]
    return out


def _swiglu(t: Mapping[str, torch.Tensor], src: str, dst: str) -> dict:
    return {
        dst + "gate_up.weight": torch.cat([t[src + "gate_proj.weight"], t[src + "up_proj.weight"]]),
        dst + "down.weight": t[src + "down_proj.weight"],
    }


def read_config(directory: Union[str, Path]) -> TimeMoeConfig:
    path = Path(directory) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    try:
        return TimeMoeConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def load_model(
    directory: Union[str, Path],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    attention_dtype: Optional[torch.dtype] = None,
) -> TimeMoe:
    """Build a TimeMoe from an official checkpoint directory, ready for inference.
    `dtype` is the feed-forward's, `attention_dtype` attention's (default: `dtype`)."""
    directory = Path(directory)
    cfg = read_config(directory)
    path = directory / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    check_keys(cfg, tensors)
    model = TimeMoe(cfg)
    model.load_state_dict(to_native(cfg, tensors), strict=True)
    model.set_compute_dtype(dtype, attention_dtype)
    return model.to(device).eval().requires_grad_(False)


def random_official_tensors(cfg: TimeMoeConfig, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights under the official names, initialised as the original initialises."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in official_shapes(cfg).items():
        if key.endswith("norm.weight"):
            tensors[key] = torch.ones(shape)
        elif key.endswith(".bias"):
            tensors[key] = torch.zeros(shape)
        else:
            tensors[key] = torch.empty(shape).normal_(0.0, cfg.initializer_range,
                                                      generator=generator)
    return tensors


def write_random_checkpoint(
    directory: Union[str, Path],
    config: Union[Mapping, TimeMoeConfig],
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write config.json + model.safetensors (official layout, random weights) to `directory`.

    `config` is a config.json-style mapping (e.g. `config.OFFICIAL["TimeMoE-50M"]`) or a
    TimeMoeConfig. The result loads through the same path as released weights:
    a registry entry `family: time-moe, source: <directory>`.
    """

    cfg = config if isinstance(config, TimeMoeConfig) else TimeMoeConfig.from_dict(config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(dtype).contiguous() for k, v in random_official_tensors(cfg, seed).items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    raw = cfg.to_dict()
    raw["torch_dtype"] = str(dtype).replace("torch.", "")
    (directory / CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    return directory
