"""Autoregressive generation with Time-MoE's multi-resolution heads and a static KV cache.

The original generation loop (ts_generation_mixin.py with TimeMoeForPrediction.forward)
works in chunks: while points remain, it picks the longest head whose length does not
exceed what remains (the first head, cut to size, if even that is too long), predicts that
many values from the last position, and appends them to the input. Horizon 96 with heads
(1, 8, 32, 64) is one 64-step chunk then one 32-step chunk; horizon 200 is 64, 64, 64, 8.

Here the first pass reads the whole context, and every later pass reads only the new
chunk, against the keys and values cached from before. Series of different lengths are
left-padded into one grid; a series' positions start at 0 at its first real point, and
the attention mask hides the padding, so each series gets the numbers it gets alone.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch

from tsfmd.families.timemoe.model import Step, TimeMoe


def choose_head(horizon_lengths: Sequence[int], remaining: int) -> Tuple[int, int]:
    """(head index, head length) for the next chunk, chosen as the original chooses."""
    length = horizon_lengths[0]
    for candidate in horizon_lengths[1:]:
        if candidate > remaining:
            break
        length = candidate
    return list(horizon_lengths).index(length), length


def chunk_plan(horizon_lengths: Sequence[int], horizon: int) -> List[int]:
    """How many values each generation pass yields for `horizon` (96 -> [64, 32])."""
    plan, remaining = [], horizon
    while remaining > 0:
        plan.append(min(choose_head(horizon_lengths, remaining)[1], remaining))
        remaining -= plan[-1]
    return plan


def make_step(model: TimeMoe, pad: torch.Tensor, start: int, width: int) -> Step:
    """A forward pass writing grid columns [start, start+width) of the cache.

    `pad[b]` is how many leading cache slots of series b are padding; slot s holds the
    series' position s - pad[b].
    """
    device = model.device
    batch = pad.numel()
    slots = torch.arange(start, start + width, device=device)
    positions = (slots.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)
    cos, sin = model.rotary(positions)
    valid = slots.unsqueeze(0) >= pad.unsqueeze(1)
    all_valid = bool(valid.all())
    rows = None if all_valid else valid.flatten().nonzero().squeeze(1)
    last_rows = valid.sum(1).cumsum(0) - 1
    if not bool((pad > 0).any()):
        mask, causal = None, start == 0
        if start > 0 and width > 1:  # new chunk: causal among itself, sees all the past
            keys = torch.arange(start + width, device=device)
            mask = (keys.unsqueeze(0) <= slots.unsqueeze(1))[None, None]
    else:
        keys = torch.arange(start + width, device=device)
        mask = (keys[None, None, :] >= pad[:, None, None]) & (
            keys[None, None, :] <= slots[None, :, None]
        )
        mask |= keys[None, None, :] == slots[None, :, None]  # padding rows see themselves
        mask, causal = mask.unsqueeze(1), False
    return Step(batch, width, start, cos.unsqueeze(1), sin.unsqueeze(1), mask, causal,
                rows, last_rows)


def _packed(model: TimeMoe, series: Sequence[np.ndarray]):
    lengths = torch.tensor([len(s) for s in series], device=model.device)
    values = torch.from_numpy(np.concatenate(series).astype(np.float32)).to(model.device)
    return values, int(lengths.max()), int(lengths.max()) - lengths


def generate(model: TimeMoe, series: Sequence[np.ndarray], horizon: int) -> torch.Tensor:
    """Forecast `horizon` normalised values for each (normalised) series -> [B, horizon]."""
    values, width, pad = _packed(model, series)
    caches = model.new_caches(len(series), width + horizon)
    step = make_step(model, pad, 0, width)
    chunks: List[torch.Tensor] = []
    remaining = horizon
    while True:
        index, length = choose_head(model.config.horizon_lengths, remaining)
        hidden = model(values, step, caches, last_only=True)
        chunk = model.head(index, hidden)[:, : min(length, remaining)]
        chunks.append(chunk)
        remaining -= chunk.shape[1]
        if remaining <= 0:
            return torch.cat(chunks, dim=1)
        step = make_step(model, pad, step.start + step.width, chunk.shape[1])
        values = chunk.reshape(-1)


def generate_without_cache(
    model: TimeMoe, series: Sequence[np.ndarray], horizon: int
) -> torch.Tensor:
    """The naive loop: every chunk re-reads the whole sequence, every position, no cache.
    Same numbers as `generate`; kept as the benchmark's baseline and a test oracle."""
    sequences = [np.asarray(s, dtype=np.float32) for s in series]
    chunks: List[torch.Tensor] = []
    remaining = horizon
    while remaining > 0:
        index, length = choose_head(model.config.horizon_lengths, remaining)
        values, width, pad = _packed(model, sequences)
        step = make_step(model, pad, 0, width)
        hidden = model(values, step, model.new_caches(len(series), width), last_only=False)
        chunk = model.head(index, hidden.index_select(0, step.last_rows))
        chunk = chunk[:, : min(length, remaining)]
        chunks.append(chunk)
        remaining -= chunk.shape[1]
        sequences = [np.concatenate([s, c]) for s, c in zip(sequences, chunk.cpu().numpy())]
    return torch.cat(chunks, dim=1)


def hidden_states(model: TimeMoe, series: Sequence[np.ndarray]) -> List[torch.Tensor]:
    """Final hidden states (after the last norm) of every position, one [L, hidden] per series."""
    values, width, pad = _packed(model, series)
    step = make_step(model, pad, 0, width)
    hidden = model(values, step, model.new_caches(len(series), width))
    return list(hidden.split([len(s) for s in series]))


def plan_groups(
    lengths: Sequence[int], short: int = 256, max_cells: int = 32768
) -> List[List[int]]:
    """Split a batch into groups run one after another, longest first.

    Per-token work is packed (padding costs nothing there), but attention runs on the
    padded grid, whose cost grows with the longest length squared. A series joins the
    current group when it is at least half as long as the group's longest (its grid costs
    at most 4x its own attention) or the group is short anyway; one 4000-point series and
    seven 50-point ones then run as two groups, not one 8 x 4000 grid. A group also stops
    at `max_cells` grid cells, which bounds the KV cache and mask memory (16 series of
    4096 points would need 2.4 GB of float32 cache for the 50M model; 8 x 4096 = 1.2 GB).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: List[List[int]] = []
    for i in order:
        if groups:
            group = groups[-1]
            longest = lengths[group[0]]
            fits = (len(group) + 1) * longest <= max_cells
            if fits and (2 * lengths[i] >= longest or longest <= short):
                group.append(i)
                continue
        groups.append([i])
    return groups
