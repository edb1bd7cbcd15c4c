"""tdtsfm: TDgpt's own forecasting model (tsfmservice/tdtsfm-server.py), no TDgpt code.

Why it is not a Time-MoE checkpoint in other names. TDgpt's TaosForPrediction shares Time-MoE's
attention (rotary, q/k/v with bias, o without), its SwiGLU-style feed-forward and its
"longest head that fits" generation, but three operators differ, so its weights cannot be
mapped onto tsfmd's Time-MoE engine (tsfmd/families/timemoe/) by renaming:
* normalisation: LayerNorm (mean-centred, with a bias) *after* each residual sum
  (post-norm: h = LN1(h + attn(h)); h = LN2(h + ffn(h))), where Time-MoE applies
  RMSNorm (no centring, no bias) *before* each block (pre-norm);
* input embedding: a plain linear map of a patch of `Taos_input_token_len` points (96 in
  the shipped model) to one token, where Time-MoE embeds one value per token through a
  gated pair act(gate(x)) * emb(x);
* feed-forward: one dense block (gelu in the shipped model), no experts, no router.
and its generation normalises inside the forward pass: every pass normalises the points it
is fed by their own mean and sample std and scales its prediction back with them (revin):
the first pass the whole context, each later pass only the chunk the previous pass predicted.

So tsfmd serves it with its own decoder (this module), built from the Time-MoE engine's
parts that *are* the same: the fused rotary attention with its static KV cache, the SwiGLU
block, the grid/mask builder and the head choice (timemoe.model, timemoe.generate).

Checkpoint: TDgpt ships `taos.pth` (a torch state dict of TaosForPrediction, names
`Taos_model.Taos_layers.0.Taos_self_attn.Taos_q_proj.weight`, ..., `Taos_lm_heads.0.weight`)
with its config written in the script, not in a file: 96-point patches, hidden 1024,
8 heads, 8 layers, intermediate 2048, gelu, one 96-point output head, 2048 positions.
A `config.json` beside it with TaosConfig's `Taos_*` keys overrides those defaults (that is
what TaosConfig.save_pretrained writes); the weights' names and shapes are checked strictly.
The file is read with torch.load(weights_only=True): tensors only, no code.

Behaviour, as tdtsfm-server.py's generate: the context is cut to its last whole patches
(at least one patch: shorter input is refused, as the script refuses it); a constant
context forecasts the constant (the script answers it without the model). Two deliberate
differences: the script runs attention with dropout 0.1 at inference (it passes
dropout_p to scaled_dot_product_attention, which applies it whatever eval() says), so its
forecasts are random draws; tsfmd runs the model without dropout. Where the script would
divide by a zero or undefined std (a later pass fed one point, or a constant chunk), tsfmd
uses scale 1 instead of answering NaN.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from tsfmd.families.base import (
    Capabilities, Family, Forecast, LoadSpec, ModelLoadError, SeriesInput, UnsupportedInput,
    resolve_limit,
)
from tsfmd.families.hub import resolve_model_dir
from tsfmd.families.timemoe.config import TimeMoeConfig
from tsfmd.families.timemoe.family import resolve_dtype
from tsfmd.families.timemoe.generate import choose_head, make_step, plan_groups
from tsfmd.families.timemoe.model import Attention, KVCache, Step, SwiGLU, TimeMoe
from tsfmd.families.timemoe.weights import CheckpointError, compare_shapes

WEIGHTS_FILE = "taos.pth"  # the name TDgpt installs (/var/lib/taos/taosanode/model/tdtsfm/)
CONFIG_FILE = "config.json"  # optional: TaosConfig's Taos_* keys
#: tsfmd's cap on next_len (TDgpt's own SQL limit on forecast rows is 1024)
MAX_HORIZON = 1024


@dataclass(frozen=True)
class TaosConfig:
    """TaosConfig's fields that shape the model; defaults: tdtsfm-server.py's init_model."""

    input_token_len: int = 96
    hidden_size: int = 1024
    intermediate_size: int = 2048
    output_token_lens: Tuple[int, ...] = (96,)
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    hidden_act: str = "gelu"
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048

    @classmethod
    def from_dict(cls, raw: Mapping) -> "TaosConfig":
        """A config.json of TaosConfig's `Taos_*` keys; absent keys keep the shipped values."""
        d = cls()
        lens = raw.get("Taos_output_token_lens", list(d.output_token_lens))
        config = cls(
            input_token_len=int(raw.get("Taos_input_token_len", d.input_token_len)),
            hidden_size=int(raw.get("Taos_hidden_size", d.hidden_size)),
            intermediate_size=int(raw.get("Taos_intermediate_size", d.intermediate_size)),
            output_token_lens=tuple(int(n) for n in ([lens] if isinstance(lens, int) else lens)),
            num_hidden_layers=int(raw.get("Taos_num_hidden_layers", d.num_hidden_layers)),
            num_attention_heads=int(raw.get("Taos_num_attention_heads", d.num_attention_heads)),
            hidden_act=str(raw.get("Taos_hidden_act", d.hidden_act)),
            rope_theta=float(raw.get("Taos_rope_theta", d.rope_theta)),
            max_position_embeddings=int(
                raw.get("Taos_max_position_embeddings", d.max_position_embeddings)
            ),
        )
        config.check()
        return config

    def check(self) -> None:
        problems = []
        patch = self.input_token_len
        if patch < 1 or not self.output_token_lens:
            problems.append("Taos_input_token_len and Taos_output_token_lens must be positive")
        elif any(n < 1 or n % patch for n in self.output_token_lens):
            # the script feeds a chunk back as chunk_len // patch tokens: other lengths
            # would misalign its tokens and the points it cuts from the sequence
            problems.append(f"every output token length must be a multiple of {patch}")
        if self.hidden_size % max(1, self.num_attention_heads):
            problems.append("Taos_hidden_size must be a multiple of Taos_num_attention_heads")
        if self.hidden_act not in ("silu", "gelu", "relu"):
            problems.append(f"Taos_hidden_act {self.hidden_act!r} is not silu, gelu or relu")
        if problems:
            raise ValueError("unsupported tdtsfm config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """The config.json layout TaosConfig.save_pretrained writes (model_type taos)."""
        out = {f"Taos_{k}": v for k, v in self.__dict__.items()}
        out["Taos_output_token_lens"] = list(self.output_token_lens)
        out["model_type"] = "taos"
        return out

    def engine_config(self) -> TimeMoeConfig:
        """The fields the shared attention and KV cache read, as a (dense) TimeMoeConfig."""
        return TimeMoeConfig(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_attention_heads,
            horizon_lengths=self.output_token_lens, hidden_act=self.hidden_act,
            rope_theta=self.rope_theta, max_position_embeddings=self.max_position_embeddings,
            use_dense=True,
        )


def taos_shapes(cfg: TaosConfig) -> Dict[str, Tuple[int, ...]]:
    """Every tensor of TaosForPrediction's state dict (taos.pth), with its shape."""
    h, inner = cfg.hidden_size, cfg.intermediate_size
    shapes = {
        "Taos_model.Taos_embed_layer.Taos_emb.weight": (h, cfg.input_token_len),
        "Taos_model.Taos_norm.weight": (h,),
        "Taos_model.Taos_norm.bias": (h,),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"Taos_model.Taos_layers.{i}."
        for x in "qkv":
            shapes[f"{p}Taos_self_attn.Taos_{x}_proj.weight"] = (h, h)
            shapes[f"{p}Taos_self_attn.Taos_{x}_proj.bias"] = (h,)
        shapes[p + "Taos_self_attn.Taos_o_proj.weight"] = (h, h)
        shapes[p + "Taos_ffn_layer.Taos_gate_proj.weight"] = (inner, h)
        shapes[p + "Taos_ffn_layer.Taos_up_proj.weight"] = (inner, h)
        shapes[p + "Taos_ffn_layer.Taos_down_proj.weight"] = (h, inner)
        for norm in ("Taos_norm1", "Taos_norm2"):
            shapes[f"{p}{norm}.weight"] = (h,)
            shapes[f"{p}{norm}.bias"] = (h,)
    for j, length in enumerate(cfg.output_token_lens):
        shapes[f"Taos_lm_heads.{j}.weight"] = (length, h)
    return shapes


def to_native(cfg: TaosConfig, t: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """taos.pth's names -> TaosDecoder's parameters (q/k/v and gate/up fused, float32)."""
    t = {k: v.to(torch.float32) for k, v in t.items()}
    out = {"embed.weight": t["Taos_model.Taos_embed_layer.Taos_emb.weight"]}
    for part in ("weight", "bias"):
        out[f"norm.{part}"] = t[f"Taos_model.Taos_norm.{part}"]
    for i in range(cfg.num_hidden_layers):
        p, n = f"Taos_model.Taos_layers.{i}.", f"layers.{i}."
        attn, ffn = p + "Taos_self_attn.", p + "Taos_ffn_layer."
        for part in ("weight", "bias"):
            out[f"{n}attn.wqkv.{part}"] = torch.cat(
                [t[f"{attn}Taos_{x}_proj.{part}"] for x in "qkv"])
            out[f"{n}norm1.{part}"] = t[f"{p}Taos_norm1.{part}"]
            out[f"{n}norm2.{part}"] = t[f"{p}Taos_norm2.{part}"]
        out[n + "attn.wo.weight"] = t[attn + "Taos_o_proj.weight"]
        out[n + "ffn.gate_up.weight"] = torch.cat(
            [t[ffn + "Taos_gate_proj.weight"], t[ffn + "Taos_up_proj.weight"]])
        out[n + "ffn.down.weight"] = t[ffn + "Taos_down_proj.weight"]
    for j in range(len(cfg.output_token_lens)):
        out[f"heads.{j}.weight"] = t[f"Taos_lm_heads.{j}.weight"]
    return out


class PostNormLayer(nn.Module):
    """h = LN1(h + attn(h)); h = LN2(h + ffn(h)), as TaosDecoderLayer."""

    def __init__(self, cfg: TimeMoeConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.ffn = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.norm1 = nn.LayerNorm(cfg.hidden_size)
        self.norm2 = nn.LayerNorm(cfg.hidden_size)

    def forward(self, h: torch.Tensor, step: Step, cache: KVCache, last_only: bool):
        attended = self.attn(h, step, cache, last_only)
        if last_only:
            h = h.index_select(0, step.last_rows)
        h = self.norm1(h + attended.float())
        return self.norm2(h + self.ffn(h).float())


class TaosDecoder(TimeMoe):
    """TaosForPrediction for inference on the engine's attention, cache, rotary and dtype
    plan (inherited from TimeMoe); the embedding, layers and norm are tdtsfm's own."""

    def __init__(self, cfg: TaosConfig):
        nn.Module.__init__(self)  # TimeMoe's own layers are not built
        self.taos_config = cfg
        self.config = engine = cfg.engine_config()
        self.embed = nn.Linear(cfg.input_token_len, cfg.hidden_size, bias=False)
        self.layers = nn.ModuleList(PostNormLayer(engine) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.heads = nn.ModuleList(
            nn.Linear(cfg.hidden_size, n, bias=False) for n in cfg.output_token_lens
        )
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def forward(self, patches: torch.Tensor, step: Step, caches: List[KVCache],
                last_only: bool = False) -> torch.Tensor:
        """Packed normalised patches [N, patch] -> final hidden states [N or B, hidden]."""
        h = self.embed(patches.float())
        last = len(self.layers) - 1
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            h = layer(h, step, cache, last_only and i == last)
        return self.norm(h)


def revin(chunks: Sequence[np.ndarray]):
    """(normalised float32 chunks, means [B, 1], scales [B, 1]): each chunk by its own mean
    and sample std, as the script's forward(revin=True); an undefined or zero std: 1."""
    means = np.array([c.mean() for c in chunks])[:, None]
    stds = np.array([c.std(ddof=1) if c.size > 1 else 0.0 for c in chunks])[:, None]
    scales = np.where(np.isfinite(stds) & (stds > 0), stds, 1.0)
    normed = [((c - m) / s).astype(np.float32) for c, m, s in zip(chunks, means, scales)]
    return normed, means, scales


def generate(model: TaosDecoder, contexts: Sequence[np.ndarray], horizon: int) -> np.ndarray:
    """`horizon` values for each context (whole patches, float64) -> [B, horizon] float64.

    Pass 1 reads every context (left-padded in tokens, positions from 0 at each series'
    first patch); each later pass reads only the chunk the previous pass predicted, fed
    back as whole patches against the cached keys and values, as the script's loop does."""
    cfg, device = model.taos_config, model.device
    patch = cfg.input_token_len
    tokens = torch.tensor([len(c) // patch for c in contexts], device=device)
    width = int(tokens.max())
    pad = width - tokens
    caches = model.new_caches(len(contexts), width + math.ceil(horizon / patch))
    step = make_step(model, pad, 0, width)
    feed = list(contexts)
    chunks, remaining = [], horizon
    while True:
        index, length = choose_head(cfg.output_token_lens, remaining)
        normed, means, scales = revin(feed)
        patches = torch.from_numpy(np.concatenate(normed)).to(device).view(-1, patch)
        hidden = model(patches, step, caches, last_only=True)
        out = model.head(index, hidden)[:, : min(length, remaining)]
        chunk = out.double().cpu().numpy() * scales + means
        chunks.append(chunk)
        remaining -= chunk.shape[1]
        if remaining <= 0:
            return np.concatenate(chunks, axis=1)
        # only the last chunk can be cut short, so this one is whole patches
        step = make_step(model, pad, step.start + step.width, chunk.shape[1] // patch)
        feed = list(chunk)


def read_config(directory: Path) -> TaosConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        return TaosConfig()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return TaosConfig.from_dict(raw)
    except (OSError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def load_model(directory: Path, dtype=torch.float32, device: str = "cpu",
               attention_dtype=None) -> TaosDecoder:
    """taos.pth (+ optional config.json) in `directory` -> a TaosDecoder ready for inference."""
    cfg = read_config(directory)
    path = directory / WEIGHTS_FILE
    try:
        tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and OS errors for a bad file
        raise CheckpointError(f"cannot read {path} as a torch state dict: {exc}") from exc
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{path} holds a {type(tensors).__name__}, not a state dict")
    compare_shapes(taos_shapes(cfg), {k: tuple(v.shape) for k, v in tensors.items()})
    with torch.device("meta"):
        model = TaosDecoder(cfg)
    model.load_state_dict(to_native(cfg, tensors), strict=True, assign=True)
    del tensors
    model.materialise_buffers()
    model.set_compute_dtype(dtype, attention_dtype)
    return model.to(device).eval().requires_grad_(False)


class TdtsfmFamily(Family):
    name = "tdtsfm"
    option_values = {}
    license = None  # TDgpt's taos.pth names none
    hub_patterns = (WEIGHTS_FILE, CONFIG_FILE)

    def __init__(self, model: TaosDecoder, caps: Capabilities):
        self._model = model
        self._caps = caps

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        _checkpoint_dir(spec, offline=True)

    @classmethod
    def load(cls, spec: LoadSpec) -> "TdtsfmFamily":
        dtype = resolve_dtype(spec.dtype, spec.device)
        directory = _checkpoint_dir(spec)
        attention = torch.float32 if spec.device == "cpu" else dtype  # as time-moe
        try:
            model = load_model(directory, dtype, spec.device, attention)
        except CheckpointError as exc:
            raise ModelLoadError(f"cannot load tdtsfm from {directory}: {exc}") from exc
        except (RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"cannot load tdtsfm from {directory} onto {spec.device}: {exc}") from exc
        cfg = model.taos_config
        patch = cfg.input_token_len
        caps = Capabilities(
            # rotary positions extend past the trained 2048 in the script; tsfmd keeps
            # the trained range, in whole patches
            context_limit=resolve_limit(spec.context_limit,
                                        cfg.max_position_embeddings * patch),
            horizon_limit=resolve_limit(spec.horizon_limit, MAX_HORIZON),
            min_context=patch,
            point_forecast="mean",
            affine_equivariant=True,  # revin: every pass normalises what it reads
            # one head: every horizon's forecast is a prefix of a longer one's
            horizon_block=0 if len(cfg.output_token_lens) == 1 else 1,
        )
        return cls(model, caps)

    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def model(self) -> TaosDecoder:
        return self._model

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        horizon = int(horizon)
        patch = self._model.taos_config.input_token_len
        contexts = []
        for series in batch:
            values = np.asarray(series.values, dtype=np.float64)
            keep = (min(values.size, self._caps.context_limit) // patch) * patch
            if keep < patch:  # served requests were checked against min_context already
                raise UnsupportedInput(f"tdtsfm needs at least {patch} points of history")
            contexts.append(values[-keep:])
        point = np.empty((len(batch), horizon))
        with torch.inference_mode():
            for group in plan_groups([len(c) // patch for c in contexts]):
                point[group] = generate(self._model, [contexts[i] for i in group], horizon)
        for i, context in enumerate(contexts):
            if np.all(context == context[0]):  # the script answers the constant itself
                point[i] = context[0]
        return Forecast(point=point)

    def close(self) -> None:
        self._model = None


def _checkpoint_dir(spec: LoadSpec, offline: bool = False) -> Path:
    return resolve_model_dir(
        spec.source, spec.cache_dir, required=(WEIGHTS_FILE,),
        allow_patterns=list(TdtsfmFamily.hub_patterns), offline=offline,
    )
