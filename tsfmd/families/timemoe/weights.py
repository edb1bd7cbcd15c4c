"""Official Time-MoE checkpoints <-> this engine's module.

A checkpoint in the official Hugging Face layout is a directory with `config.json` and
`model.safetensors` whose keys are the original module names (`model.layers.0.self_attn.
q_proj.weight`, `lm_heads.0.out_layer.weight`, ...). `load_model` checks that the file has
exactly the keys and shapes the config implies (an error names what is missing, unexpected
or misshapen), then fuses them into model.py's layout. No code from the checkpoint runs.

Loading is lean (issue 14): the keys and shapes are checked from the safetensors header,
the module is built on the meta device, and each fused tensor is allocated once, in its
final dtype, and filled from the memory-mapped file, so a load peaks near one copy of the
weights (benchmarks/load_memory.py). No parameter stays backed by the file.

`write_random_checkpoint` writes a random-weight checkpoint in the official layout (the
original's initialisation: normal(0, initializer_range) products, zero biases, unit norms),
for tests and benchmarks that need a model of a released size without downloading it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
# at module level, so that tsfmd.families.get_family imports it under its lock
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tsfmd.core.heap import trim_heap
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
    check_shapes(cfg, {k: tuple(v.shape) for k, v in tensors.items()})


def check_shapes(cfg: TimeMoeConfig, shapes: Mapping[str, Tuple[int, ...]]) -> None:
    """check_keys on the shapes alone (a safetensors header): no tensor is read."""
    compare_shapes(official_shapes(cfg), shapes)


def compare_shapes(
    expected: Mapping[str, Tuple[int, ...]], shapes: Mapping[str, Tuple[int, ...]]
) -> None:
    """Strict: CheckpointError naming missing, unexpected and misshapen keys (any layout)."""
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    misshapen = [
        f"{k} is {tuple(shapes[k])}, expected {expected[k]}"
        for k in sorted(set(expected) & set(shapes))
        if tuple(shapes[k]) != expected[k]
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


Layout = Dict[str, Tuple[Tuple[int, ...], List[Tuple[str, tuple]]]]


def native_layout(cfg: TimeMoeConfig) -> Layout:
    """model.py's parameters -> (shape, [(official key, where it goes)]), in file order of
    layers: `where` indexes the native tensor (() is all of it); the official tensor is
    reshaped to that part's shape ([h, 1] embeddings -> [h]). The same fusion as
    `to_native`, written as copies into one tensor instead of torch.cat/stack."""
    h, inner, ex = cfg.hidden_size, cfg.intermediate_size, cfg.expert_intermediate_size
    q_width = cfg.num_attention_heads * cfg.head_dim
    kv_width = cfg.num_key_value_heads * cfg.head_dim
    out: Layout = {
        "embed_value": ((h,), [("model.embed_layer.emb_layer.weight", ())]),
        "embed_gate": ((h,), [("model.embed_layer.gate_layer.weight", ())]),
        "norm.weight": ((h,), [("model.norm.weight", ())]),
    }

    def rows(keys, widths, extra=()):
        parts, at = [], 0
        for key, width in zip(keys, widths):
            parts.append((key, extra + (slice(at, at + width),)))
            at += width
        return parts

    def swiglu(src, dst, width, extra=()):
        return {
            dst + "gate_up.weight": rows([src + "gate_proj.weight", src + "up_proj.weight"],
                                         [width, width], extra),
            dst + "down.weight": [(src + "down_proj.weight", extra)],
        }

    for i in range(cfg.num_hidden_layers):
        p, n = f"model.layers.{i}.", f"layers.{i}."
        attn = p + "self_attn."
        widths = [q_width, kv_width, kv_width]
        out[n + "attn_norm.weight"] = ((h,), [(p + "input_layernorm.weight", ())])
        out[n + "ffn_norm.weight"] = ((h,), [(p + "post_attention_layernorm.weight", ())])
        out[n + "attn.wqkv.weight"] = ((sum(widths), h),
                                       rows([f"{attn}{x}_proj.weight" for x in "qkv"], widths))
        out[n + "attn.wqkv.bias"] = ((sum(widths),),
                                     rows([f"{attn}{x}_proj.bias" for x in "qkv"], widths))
        out[n + "attn.wo.weight"] = ((h, q_width), [(attn + "o_proj.weight", ())])
        ffn = p + "ffn_layer."
        if cfg.use_dense:
            parts = swiglu(ffn, "", inner)
            out[n + "ffn.mlp.gate_up.weight"] = ((2 * inner, h), parts["gate_up.weight"])
            out[n + "ffn.mlp.down.weight"] = ((h, inner), parts["down.weight"])
            continue
        out[n + "ffn.router.weight"] = ((cfg.num_experts + 1, h), rows(
            [ffn + "gate.weight", ffn + "shared_expert_gate.weight"], [cfg.num_experts, 1]))
        parts = swiglu(ffn + "shared_expert.", "", inner)
        out[n + "ffn.shared.gate_up.weight"] = ((2 * inner, h), parts["gate_up.weight"])
        out[n + "ffn.shared.down.weight"] = ((h, inner), parts["down.weight"])
        gate_up, down = [], []
        for e in range(cfg.num_experts):
            parts = swiglu(f"{ffn}experts.{e}.", "", ex, (e,))
            gate_up += parts["gate_up.weight"]
            down += parts["down.weight"]
        out[n + "ffn.gate_up"] = ((cfg.num_experts, 2 * ex, h), gate_up)
        out[n + "ffn.down"] = ((cfg.num_experts, h, ex), down)
    for j, horizon in enumerate(cfg.horizon_lengths):
        out[f"heads.{j}.weight"] = ((horizon * cfg.input_size, h),
                                    [(f"lm_heads.{j}.out_layer.weight", ())])
    return out


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _group(name: str) -> str:
    """Parameters read under one file mapping: one decoder layer, or the rest."""
    return ".".join(name.split(".")[:2]) if name.startswith("layers.") else ""


def load_model(
    directory: Union[str, Path],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    attention_dtype: Optional[torch.dtype] = None,
    int8: bool = False,
) -> TimeMoe:
    """Build a TimeMoe from an official checkpoint directory, ready for inference.
    `dtype` is the feed-forward's, `attention_dtype` attention's (default: `dtype`).
    `int8` (CPU, `dtype` float32): each decoder layer's feed-forward is quantized as soon
    as that layer is filled (TimeMoe.quantize_layer_int8) and the freed float32 layer is
    given back to the OS (core/heap.py), so the model never exists whole in float32: peak
    is the int8 model plus one float32 layer.

    Lean, like gpt-fast: the module is built on the meta device (no memory, no random
    init), the keys and shapes are checked from the file's header alone, and each native
    tensor is allocated once, in its final dtype, and filled straight from the
    memory-mapped file (safetensors' safe_open maps it on CPU; a cast happens in that
    copy, tensor by tensor), then put in place with load_state_dict(assign=True), layer
    by layer. Peak memory is one copy of the weights plus the file pages of one layer: the
    file is mapped once per layer and unmapped when the layer is done, since any live
    tensor from a mapping keeps every page touched through it resident. No parameter
    stays backed by the file (the fused layout needs copies for nearly all bytes anyway,
    and one file-backed tensor would pin the whole mapping). `load_model_eager` is the old
    path, kept as the reference."""
    directory = Path(directory)
    cfg = read_config(directory)
    path = directory / WEIGHTS_FILE
    with _open(path) as handle:
        try:
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except SafetensorError as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
    check_shapes(cfg, shapes)
    with torch.device("meta"):
        model = TimeMoe(cfg)
    dtypes = model.compute_dtypes(dtype, attention_dtype)
    layout = native_layout(cfg)
    groups: Dict[str, List[str]] = {}
    for name in layout:
        groups.setdefault(_group(name), []).append(name)
    for group, names in groups.items():
        state: Dict[str, torch.Tensor] = {}
        with _open(path) as handle:  # one mapping per layer: unmapped at the end of it
            for name in names:
                shape, parts = layout[name]
                tensor = torch.empty(shape, dtype=dtypes.get(name, torch.float32))
                for key, where in parts:
                    part = tensor[where] if where else tensor
                    part.copy_(handle.get_tensor(key).reshape(part.shape))
                state[name[len(group) + 1:] if group else name] = tensor
        # strict per group: every tensor of the module is in its group (native_layout)
        target = model.get_submodule(group) if group else model
        result = target.load_state_dict(state, strict=bool(group), assign=True)
        if not group and (result.unexpected_keys or any(
                not key.startswith("layers.") for key in result.missing_keys)):
            raise CheckpointError(f"the native layout does not fit the model: {result}")
        del state
        if int8 and group:
            model.quantize_layer_int8(int(group.split(".")[1]))
            trim_heap()  # the float32 layer just freed: its pages are not the next one's
    model.materialise_buffers()
    if not int8:
        model.set_compute_dtype(dtype, attention_dtype)  # a no-op: built in these dtypes
    return model.to(device).eval().requires_grad_(False)


def load_model_eager(
    directory: Union[str, Path],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    attention_dtype: Optional[torch.dtype] = None,
    int8: bool = False,
) -> TimeMoe:
    """The pre-issue-14 loader (whole file read, fused with torch.cat, copied into a
    randomly initialised module, then cast): about three copies of the weights at peak.
    `int8` quantizes once the whole float32 model is built, as tsfmd first did. Kept as
    the reference that tests and benchmarks/load_memory.py compare against."""
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
    for index in range(len(model.layers) if int8 else 0):
        model.quantize_layer_int8(index)
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
