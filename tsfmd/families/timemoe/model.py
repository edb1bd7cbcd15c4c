"""The Time-MoE architecture in plain torch (a decoder-only transformer over real values).

    value -> gated input embedding -> N x [RMSNorm -> rotary attention -> +residual
                                           RMSNorm -> sparse MoE feed-forward -> +residual]
          -> RMSNorm -> one of several output heads (1, 8, 32, 64 future values per position)

The sparse feed-forward sends every token to its top-k of E routed experts (SwiGLU blocks
intermediate_size/k wide, weighted by the router's softmax, not renormalised) and to one
shared expert (intermediate_size wide) scaled by sigmoid(shared_expert_gate).

Inference layout, chosen for speed on CPUs:
* Tokens travel *packed*, [N, hidden]: the series of a batch one after another, no padding.
  Only attention sees the padded grid [B, T] (series left-padded, so the last column is
  every series' newest token); the per-token work (projections, experts, norms) never runs
  on padding.
* The residual stream, norms, router, rotary and heads stay in float32; the feed-forward
  products run in the compute dtype (float32, bfloat16 or float16), attention in its own
  (see `set_compute_dtype`).
* Weights are fused where the original runs several products on the same input
  (q/k/v; each expert's gate/up; the router with the shared-expert gate).
* `last_only=True` makes the final layer compute its queries and feed-forward for the last
  position of each series only: generation reads nothing else, and the keys/values of all
  positions still go to the cache.
* `KVCache` is static: sized once per generation, written in place at each step.

Parameter names here are this module's own; weights.py maps the official checkpoint's
names and shapes onto them (and back), strictly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tsfmd.families.quantize import dtype_of, int8_linear, quantize_linears
from tsfmd.families.timemoe.config import TimeMoeConfig

_ACT = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}
#: the same activations written into their input: one [tokens, inner] tensor fewer per
#: feed-forward to allocate and touch (less memory; the speed was the same within noise)
_ACT_INPLACE = {"silu": lambda x: F.silu(x, inplace=True), "relu": torch.relu_,
                "gelu": lambda x: x.copy_(F.gelu(x))}


def _gated(act_, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """act(gate) * up, computed in gate's memory (a half of the product the caller owns);
    the same operations in the same dtype as out of place, so the same numbers."""
    return act_(gate).mul_(up)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class KVCache:
    """Keys and values of every position seen so far, [B, kv_heads, max_len, head_dim]: views
    into one buffer that TimeMoe.new_caches allocates for all layers at once. Not zeroed:
    every pass writes all grid columns [start, start+width) (padding cells too, as zeros
    from the attention's grid) before any query reads them."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor):
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


@dataclass
class Step:
    """Where the tokens of one forward pass sit; built by generate.py.

    B series, each contributing T grid columns (left-padded). `rows` lists the grid cells
    that hold real tokens (None when nothing is padded, then packed == grid). `cos`/`sin`
    are the rotary tables at each cell's position, [B, 1, T, head_dim]. `mask` is a boolean
    [B, 1, T, start+T] (True = may attend) or None with `causal` saying whether plain
    causal masking applies. `last_rows` are the packed indices of each series' last token.
    """

    batch: int
    width: int
    start: int
    cos: torch.Tensor
    sin: torch.Tensor
    mask: Optional[torch.Tensor]
    causal: bool
    rows: Optional[torch.Tensor]
    last_rows: torch.Tensor


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: TimeMoeConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        )
        width = (self.heads + 2 * self.kv_heads) * self.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, width, bias=True)
        self.wo = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, step: Step, cache: KVCache, last_only: bool):
        dtype = self.wqkv.weight.dtype
        qkv = self.wqkv(x.to(dtype))
        if step.rows is not None:  # packed -> padded grid, zeros in the padding
            grid = qkv.new_zeros(step.batch * step.width, qkv.shape[-1])
            qkv = grid.index_copy_(0, step.rows, qkv)
        qkv = qkv.view(step.batch, step.width, -1, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split((self.heads, self.kv_heads, self.kv_heads), dim=1)
        q = _rotate(q.float(), step.cos, step.sin).to(dtype)
        k = _rotate(k.float(), step.cos, step.sin).to(dtype)
        keys, values = cache.update(step.start, k, v)
        mask, causal = step.mask, step.causal
        if last_only:  # left padding: the last column is every series' newest token
            q = q[:, :, -1:]
            mask = None if mask is None else mask[:, :, -1:]
            causal = False  # the last query may see every cached key
        if self.kv_heads != self.heads:
            keys = keys.repeat_interleave(self.heads // self.kv_heads, dim=1)
            values = values.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal)
        out = out.transpose(1, 2).reshape(-1, self.heads * self.head_dim)
        if not last_only and step.rows is not None:
            out = out.index_select(0, step.rows)
        return self.wo(out.to(self.wo.weight.dtype))


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)), gate and up fused into one product."""

    def __init__(self, hidden: int, inner: int, act: str):
        super().__init__()
        self.gate_up = nn.Linear(hidden, 2 * inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)
        self.act_ = _ACT_INPLACE[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x.to(dtype_of(self.gate_up))).chunk(2, dim=-1)
        return self.down(_gated(self.act_, gate, up).to(dtype_of(self.down)))


class SparseMoE(nn.Module):
    def __init__(self, cfg: TimeMoeConfig):
        super().__init__()
        self.top_k, self.num_experts = cfg.num_experts_per_tok, cfg.num_experts
        inner = cfg.expert_intermediate_size
        # rows 0..E-1: the router; row E: the shared expert's gate (both read the same x)
        self.router = nn.Linear(cfg.hidden_size, cfg.num_experts + 1, bias=False)
        self.gate_up = nn.Parameter(torch.empty(cfg.num_experts, 2 * inner, cfg.hidden_size))
        self.down = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size, inner))
        self.shared = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.act_ = _ACT_INPLACE[cfg.hidden_act]
        self.int8_experts: Optional[nn.ModuleList] = None  # [gate_up, down] per expert

    def quantize_int8(self) -> None:
        """Experts and shared expert as Int8Linears (quantize.py); the router stays
        float32. The fused expert tensors are dropped (emptied) so only the int8 copy stays."""
        self.int8_experts = nn.ModuleList(
            nn.ModuleList((int8_linear(self.gate_up[e]), int8_linear(self.down[e])))
            for e in range(self.num_experts)
        )
        self.gate_up = nn.Parameter(torch.empty(0), requires_grad=False)
        self.down = nn.Parameter(torch.empty(0), requires_grad=False)
        quantize_linears(self.shared)

    def _experts(self, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Every expert over its own run of `routed` (sorted by expert, `counts` rows each):
        one product per expert that has tokens. torch._grouped_mm (one call for all
        experts, no host read of the counts) measured no faster on this CPU: the same
        time in isolation and 0.91-0.94x inside the model (benchmarks/README.md)."""
        pieces, start = [], 0
        for expert, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            seg = routed[start:start + count]
            start += count
            if self.int8_experts is not None:
                gate_up, down = self.int8_experts[expert]
                gate, up = gate_up(seg).chunk(2, dim=-1)
                pieces.append(down(_gated(self.act_, gate, up)))
            else:
                gate, up = F.linear(seg, self.gate_up[expert]).chunk(2, dim=-1)
                hidden = _gated(self.act_, gate, up).to(self.down.dtype)
                pieces.append(F.linear(hidden, self.down[expert]))
        return torch.cat(pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: normed float32 [N, hidden] -> float32 [N, hidden]."""
        logits = F.linear(x, self.router.weight.float())
        probs = torch.softmax(logits[:, : self.num_experts], dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        out = self.shared(x).float().mul_(torch.sigmoid(logits[:, self.num_experts:]))
        # Group the (token, expert) pairs by expert so each expert runs one product over
        # exactly the tokens routed to it; experts nobody chose cost nothing.
        flat = chosen.reshape(-1)
        order = torch.argsort(flat, stable=True)
        tokens = order // self.top_k
        routed = x.to(self.gate_up.dtype).index_select(0, tokens)
        expert_out = self._experts(routed, torch.bincount(flat, minlength=self.num_experts))
        expert_out = expert_out.float().mul_(weights.reshape(-1)[order].unsqueeze(-1))
        return out.index_add_(0, tokens, expert_out)


class DenseFFN(nn.Module):
    """use_dense checkpoints: one SwiGLU feed-forward instead of the experts."""

    def __init__(self, cfg: TimeMoeConfig):
        super().__init__()
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).float()

    def quantize_int8(self) -> None:
        quantize_linears(self.mlp)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TimeMoeConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn = DenseFFN(cfg) if cfg.use_dense else SparseMoE(cfg)

    def forward(self, h: torch.Tensor, step: Step, cache: KVCache, last_only: bool):
        attended = self.attn(self.attn_norm(h), step, cache, last_only)
        if last_only:
            h = h.index_select(0, step.last_rows)
        h = h + attended.float()
        return h + self.ffn(self.ffn_norm(h))


class TimeMoe(nn.Module):
    def __init__(self, cfg: TimeMoeConfig):
        super().__init__()
        self.config = cfg
        self.embed_gate = nn.Parameter(torch.empty(cfg.hidden_size))
        self.embed_value = nn.Parameter(torch.empty(cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.heads = nn.ModuleList(
            nn.Linear(cfg.hidden_size, h * cfg.input_size, bias=False) for h in cfg.horizon_lengths
        )
        self.act = _ACT[cfg.hidden_act]
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device=None) -> torch.Tensor:
        cfg = self.config
        half = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=device).float()
        return 1.0 / (cfg.rope_theta ** (half / cfg.head_dim))

    def materialise_buffers(self) -> "TimeMoe":
        """Recompute the buffers no checkpoint holds (rotary inv_freq) on the parameters'
        device: a model built on the meta device and filled with load_state_dict(assign=
        True) has them on meta still. KV caches are made per generation (new_caches)."""
        self.inv_freq = self._inv_freq(self.device)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.layers[0].attn.wqkv.weight.dtype  # also the KV cache's dtype

    @property
    def device(self) -> torch.device:
        return self.embed_gate.device

    def set_compute_dtype(
        self, dtype: torch.dtype, attention_dtype: Optional[torch.dtype] = None
    ) -> "TimeMoe":
        """The feed-forward products (experts, shared expert: ~85% of the arithmetic) in
        `dtype`; attention (projections, KV cache, scores) in `attention_dtype` (default
        `dtype`); norms, router, embedding and heads always in float32.

        On CPUs tsfmd passes attention_dtype=float32 with bfloat16: measured on random
        weights of the 50M and 200M configs (32 series, context 512, horizon 96), bfloat16
        attention moved forecasts by up to 4.7% of the series' std from float32 (90th
        percentile 4.5% on 200M), bfloat16 feed-forwards alone by 0.4% (90th percentile),
        for about 15% of the arithmetic. With attention in float32, the first layer's
        feed-forward stays float32 too (below)."""
        for name, wanted in self.compute_dtypes(dtype, attention_dtype).items():
            param = self.get_parameter(name)
            if param.dtype != wanted:  # tensor by tensor: never a second full copy
                param.data = param.data.to(wanted)
        return self

    def quantize_layer_int8(self, index: int) -> None:
        """`dtype: int8` on CPU, one decoder layer at a time (weights.load_model quantizes
        each layer as soon as it is filled): its feed-forward (experts, shared expert or
        dense MLP; ~85% of the arithmetic) as int8 weights with per-channel scales;
        attention, norms, router, embedding and heads stay float32. Keeping the first
        layers' feed-forwards float32 (as bfloat16 does) bought little here: 50M random
        weights, 32 series, worst error 3.9% -> 2.7% of the series' std with two layers
        kept, for ~5% of the speed (measured with one scale per input, before quantize.py's
        per-row scales)."""
        self.layers[index].ffn.quantize_int8()

    def compute_dtypes(
        self, dtype: torch.dtype, attention_dtype: Optional[torch.dtype] = None
    ) -> Dict[str, torch.dtype]:
        """The parameters `set_compute_dtype` casts, with their dtype (the others stay as
        they are, float32); weights.load_model builds each tensor in it directly."""
        plan: Dict[str, torch.dtype] = {}
        for index, layer in enumerate(self.layers):
            prefix = f"layers.{index}."
            for name, _ in layer.attn.named_parameters():
                plan[prefix + "attn." + name] = attention_dtype or dtype
            if index == 0 and attention_dtype == torch.float32:
                # The first layer reads the series values almost directly, and bfloat16
                # keeps only 8 bits of them: in float32 it took the worst 50M series
                # from 1.8% to 0.17% of its std, for 1/12 of the feed-forward work.
                continue
            for name, _ in layer.ffn.named_parameters():
                if not name.startswith("router."):  # the router stays float32
                    plan[prefix + "ffn." + name] = dtype
        return plan

    def rotary(self, positions: torch.Tensor):
        """cos and sin at integer `positions` (any shape) -> [..., head_dim] float32."""
        freqs = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()

    def new_caches(self, batch: int, max_len: int) -> List[KVCache]:
        """One uninitialised allocation for every layer's keys and values: a zero fill
        would write every byte once more before the passes write it (KVCache)."""
        cfg = self.config
        buffer = torch.empty(
            (len(self.layers), 2, batch, cfg.num_key_value_heads, max_len, cfg.head_dim),
            dtype=self.compute_dtype, device=self.device,
        )
        return [KVCache(layer[0], layer[1]) for layer in buffer]

    def forward(
        self, values: torch.Tensor, step: Step, caches: List[KVCache], last_only: bool = False
    ) -> torch.Tensor:
        """Packed values [N] -> final hidden states [N, hidden] ([B, hidden] if last_only)."""
        x = values.float().unsqueeze(-1)
        h = self.act(x * self.embed_gate) * (x * self.embed_value)
        last = len(self.layers) - 1
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            h = layer(h, step, cache, last_only and i == last)
        return self.norm(h)

    def head(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.heads[index](hidden.float())
