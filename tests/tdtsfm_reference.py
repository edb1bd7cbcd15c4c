"""The reference forecast of TDgpt's tdtsfm, run in its own environment (transformers 4.40.1).

TDgpt's tsfmservice/tdtsfm-server.py is not on PyPI and its code stays out of this
repository, so this is a re-implementation written from reading it, kept as close to its
structure as a reading allows and independent of tsfmd's code (it imports nothing from
tsfmd): the same module tree and parameter names (so `taos.pth` loads with
load_state_dict(strict=True)), one series at a time as the script serves, and the script's
generation loop: cut the input to whole patches, normalise the points each pass is fed
(revin), positions from the attention mask's cumulative sum, the longest head that fits
the points left, transformers' DynamicCache and 4-D causal mask, and the constant-input
shortcut of its Flask route. It runs with the attention dropout it is told (the script:
0.1, applied at inference because it goes straight to scaled_dot_product_attention).

Usage: python tdtsfm_reference.py JOB.json OUT.json; JOB has "checkpoint", "dropout",
"seed" and "cases": [{"values": [...], "horizon": H}]; OUT has "forecasts" and "versions".
"""
import json
import sys

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import DynamicCache
from transformers.activations import ACT2FN
from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary(nn.Module):
    def __init__(self, dim, max_positions, base):
        super().__init__()
        self.inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.table(max_positions)

    def table(self, length):
        freqs = torch.outer(torch.arange(length).float(), self.inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin, self.length = angles.cos(), angles.sin(), length

    def forward(self, length):
        if length > self.length:  # the script extends its table past the trained range
            self.table(length)
        return self.cos[:length], self.sin[:length]


class Attention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        h = cfg["Taos_hidden_size"]
        self.layer, self.heads = layer, cfg["Taos_num_attention_heads"]
        self.head_dim = h // self.heads
        self.Taos_q_proj = nn.Linear(h, h, bias=True)
        self.Taos_k_proj = nn.Linear(h, h, bias=True)
        self.Taos_v_proj = nn.Linear(h, h, bias=True)
        self.Taos_o_proj = nn.Linear(h, h, bias=False)
        self.rotary = Rotary(self.head_dim, cfg["Taos_max_position_embeddings"],
                             cfg["Taos_rope_theta"])

    def forward(self, x, mask, position_ids, cache, dropout):
        b, t, h = x.shape

        def heads(proj):
            return proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.Taos_q_proj), heads(self.Taos_k_proj), heads(self.Taos_v_proj)
        cos, sin = self.rotary(t + cache.get_usable_length(t, self.layer))
        cos, sin = cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = cache.update(k, v, self.layer)
        out = F.scaled_dot_product_attention(q, k, v, mask, dropout_p=dropout)
        return self.Taos_o_proj(out.transpose(1, 2).reshape(b, t, h))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, inner = cfg["Taos_hidden_size"], cfg["Taos_intermediate_size"]
        self.Taos_gate_proj = nn.Linear(h, inner, bias=False)
        self.Taos_up_proj = nn.Linear(h, inner, bias=False)
        self.Taos_down_proj = nn.Linear(inner, h, bias=False)
        self.act = ACT2FN[cfg["Taos_hidden_act"]]

    def forward(self, x):
        return self.Taos_down_proj(self.act(self.Taos_gate_proj(x)) * self.Taos_up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg, index):
        super().__init__()
        self.Taos_self_attn = Attention(cfg, index)
        self.Taos_ffn_layer = MLP(cfg)
        self.Taos_norm1 = nn.LayerNorm(cfg["Taos_hidden_size"])
        self.Taos_norm2 = nn.LayerNorm(cfg["Taos_hidden_size"])

    def forward(self, x, mask, position_ids, cache, dropout):
        x = self.Taos_norm1(x + self.Taos_self_attn(x, mask, position_ids, cache, dropout))
        return self.Taos_norm2(x + self.Taos_ffn_layer(x))


class PatchEmbedding(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.patch = cfg["Taos_input_token_len"]
        self.Taos_emb = nn.Linear(self.patch, cfg["Taos_hidden_size"], bias=False)

    def forward(self, x):
        return self.Taos_emb(x.unfold(dimension=-1, size=self.patch, step=self.patch))


class Body(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.Taos_embed_layer = PatchEmbedding(cfg)
        layers = range(cfg["Taos_num_hidden_layers"])
        self.Taos_layers = nn.ModuleList(Layer(cfg, i) for i in layers)
        self.Taos_norm = nn.LayerNorm(cfg["Taos_hidden_size"])


class TaosForPrediction(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.Taos_model = Body(cfg)
        self.Taos_lm_heads = nn.ModuleList(
            nn.Linear(cfg["Taos_hidden_size"], n, bias=False)
            for n in cfg["Taos_output_token_lens"]
        )

    def forward(self, points, mask2d, position_ids, cache, max_output_length, dropout):
        """One generation pass with revin=True: [1, n] points -> [1, <= max_output] points."""
        mean, std = points.mean(dim=-1, keepdim=True), points.std(dim=-1, keepdim=True)
        embeds = self.Taos_model.Taos_embed_layer((points - mean) / std)
        seq = embeds.shape[1]
        past = cache.get_usable_length(seq)
        mask = _prepare_4d_causal_attention_mask(mask2d, (1, seq), embeds, past,
                                                 sliding_window=None)
        x = embeds
        for layer in self.Taos_model.Taos_layers:
            x = layer(x, mask, position_ids, cache, dropout)
        x = self.Taos_model.Taos_norm(x)
        lens = self.cfg["Taos_output_token_lens"]
        length = lens[0]
        for candidate in lens[1:]:
            if candidate > max_output_length:
                break
            length = candidate
        prediction = self.Taos_lm_heads[lens.index(length)](x)[:, -1, :][:, :max_output_length]
        return prediction * std + mean


def generate(model, values, horizon, dropout):
    if len(set(values)) == 1:  # the Flask route answers a constant input itself
        return [values[0]] * horizon
    patch = model.cfg["Taos_input_token_len"]
    ids = torch.tensor(values).unsqueeze(0).float()
    if ids.shape[1] < patch:
        raise ValueError(f"Input length must be at least {patch}")
    ids = ids[:, -(ids.shape[1] // patch) * patch:]
    start = ids.shape[1]
    max_length = start + horizon
    mask = torch.ones(1, start // patch, dtype=torch.long)
    cache = DynamicCache()
    while ids.shape[1] < max_length:
        past = cache.get_seq_length()
        feed = ids[:, past * patch:]
        position_ids = mask.long().cumsum(-1) - 1
        if past:
            position_ids = position_ids[:, -(feed.shape[1] // patch):]
        out = model(feed, mask, position_ids, cache, max_length - ids.shape[1], dropout)
        ids = torch.cat([ids, out], dim=-1)
        mask = torch.cat([mask, mask.new_ones(1, out.shape[1] // patch)], dim=-1)
    return ids[0, start:].tolist()


def main(job_path, out_path):
    job = json.load(open(job_path))
    directory = job["checkpoint"]
    cfg = json.load(open(f"{directory}/config.json"))
    torch.manual_seed(job.get("seed", 0))
    model = TaosForPrediction(cfg)
    state = torch.load(f"{directory}/taos.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        forecasts = [generate(model, case["values"], case["horizon"], job["dropout"])
                     for case in job["cases"]]
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    json.dump({"forecasts": forecasts, "versions": versions}, open(out_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
