"""moment: MOMENT (CMU's AutonLab/MOMENT-1-small, -base, -large) filling gaps, TDgpt's imputation.

MOMENT is a T5 encoder over patches of 8 points in windows of 512; in its `reconstruction`
task a patch given as masked is replaced by a learnt mask token and the model rebuilds it
from the patches around it. It needs momentfm 0.1.4, which pins transformers 4.33.3 and
numpy 1.25.2, so it runs in an environment of its own (`environment:` in the registry) and
this module imports momentfm and torch only inside `load`.

How a series is imputed, as momentfm's own API is meant to be called:
  - scaled in float64 by the mean and spread of its observed points (MOMENT normalises each
    window itself, so this only keeps large offsets out of float32), mapped back after;
  - cut into windows of 512 from its start; a longer series' last window is its last 512
    points (full context, no padding); a shorter series is left-padded with zeros, the
    padding marked in `input_mask` as MOMENT's own data classes do;
  - `mask` is 0 at the missing points, so every patch holding one is a mask token and MOMENT
    reconstructs it; the missing points take the reconstruction, observed points are copied
    from the input as sent.
TDgpt's moment-server.py calls the same model differently: it passes the gap mask as
`input_mask` too (gaps are also hidden from attention), pads the last window with the
series minimum marked as observed data, and never calls eval(), so dropout makes its
answers random (seeded). tsfmd answers deterministically, with MOMENT's intended masks.
"""
from __future__ import annotations

import contextlib
import sys
from typing import List, Sequence

import numpy as np

from tsfmd.families.base import (
    Capabilities, Family, Forecast, LoadSpec, ModelLoadError, SeriesInput, UnsupportedInput,
)
from tsfmd.families.checkpoint import LIBRARY_LOCK, open_checkpoint, torch_dtype

#: MOMENT's window: every published checkpoint has seq_len 512
WINDOW = 512
_NOT_INSTALLED = ("momentfm is not installed in this environment: give the entry an "
                  "`environment:` with momentfm==0.1.4 (README, Imputation (MOMENT))")


class MomentFamily(Family):
    name = "moment"
    option_values = {}
    tasks = ("impute",)
    license = "MIT"  # AutonLab's MOMENT-1 model cards

    def __init__(self, model, device: str, caps: Capabilities):
        self._model, self._device, self._caps = model, device, caps

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        _open(spec, offline=True)

    @classmethod
    def load(cls, spec: LoadSpec) -> "MomentFamily":
        directory = _open(spec)
        try:
            with LIBRARY_LOCK:
                from momentfm import MOMENTPipeline
        except ImportError as exc:
            raise ModelLoadError(_NOT_INSTALLED) from exc
        dtype = torch_dtype(spec, cls.name, ("float32",))
        try:
            # huggingface_hub prints to stdout, which a worker may keep for its protocol
            with LIBRARY_LOCK, contextlib.redirect_stdout(sys.stderr):
                model = MOMENTPipeline.from_pretrained(
                    str(directory), model_kwargs={"task_name": "reconstruction"})
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"cannot load MOMENT from {directory}: {exc}") from exc
        model.init()
        model = model.to(device=spec.device, dtype=dtype).eval()  # eval: no dropout
        caps = Capabilities(
            context_limit=WINDOW, horizon_limit=0, min_context=1, tasks=cls.tasks)
        return cls(model, spec.device, caps)

    def capabilities(self) -> Capabilities:
        return self._caps

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        raise UnsupportedInput("MOMENT imputes, it does not forecast: POST TDgpt's "
                               "imputation body ('input', 'ts', 'precision', 'freq')")

    def impute(self, batch: Sequence[np.ndarray]) -> List[np.ndarray]:
        import torch

        windows, placements = [], []
        for index, values in enumerate(batch):
            scaled, shift, scale = _standardise(np.asarray(values, dtype=np.float64))
            for start, own, window in _windows(scaled):
                windows.append(window)
                placements.append((index, start, own, shift, scale))
        x = np.stack([w[0] for w in windows])[:, None, :]  # [windows, 1 channel, 512]
        with torch.inference_mode():
            out = self._model(
                x_enc=torch.from_numpy(x).to(self._device, torch.float32),
                input_mask=torch.from_numpy(np.stack([w[1] for w in windows])).to(self._device),
                mask=torch.from_numpy(np.stack([w[2] for w in windows])).to(self._device),
            ).reconstruction[:, 0, :].double().cpu().numpy()
        answers = [np.array(values, dtype=np.float64) for values in batch]
        for row, (index, start, own, shift, scale) in zip(out, placements):
            series = answers[index]
            length = min(WINDOW, series.size)
            rebuilt = row[WINDOW - length:] * scale + shift  # drop the left padding
            span = slice(start + own, start + length)
            gaps = np.isnan(series[span])
            series[span][gaps] = rebuilt[own:][gaps]
        return answers


def _open(spec: LoadSpec, offline: bool = False):
    """The checkpoint directory, refusing one that is not MOMENT's reconstruction model."""
    directory, config = open_checkpoint(spec, offline=offline)
    if "t5_config" not in config or config.get("patch_len") is None:
        raise ModelLoadError(
            f"{directory} is not a MOMENT checkpoint: its config.json has no t5_config and "
            "patch_len (expected AutonLab/MOMENT-1-small, -base or -large)")
    if int(config.get("seq_len", WINDOW)) != WINDOW:
        raise ModelLoadError(f"{directory}: seq_len {config.get('seq_len')}, tsfmd's MOMENT "
                             f"family serves MOMENT's windows of {WINDOW}")
    return directory


def _standardise(values: np.ndarray):
    """`values` scaled by its observed points' mean and spread (1 when flat), in float64."""
    observed = values[~np.isnan(values)]
    shift = float(observed.mean())
    scale = float(observed.std()) or 1.0
    return (values - shift) / scale, shift, scale


def _windows(values: np.ndarray):
    """(start, own, (x, input_mask, mask)) per window: the window covers values[start:
    start + 512] and imputes from position `own` on (earlier ones belong to the window
    before). A series shorter than 512 is one left-padded window."""
    n = values.size
    starts = list(range(0, max(n - WINDOW, 0) + 1, WINDOW))
    if n > WINDOW and starts[-1] + WINDOW < n:
        starts.append(n - WINDOW)
    previous_end = 0
    for start in starts:
        part = values[start:start + WINDOW]
        observed = ~np.isnan(part)
        if not observed.any():
            raise UnsupportedInput(
                f"points {start}..{start + part.size - 1} have no observed value: MOMENT "
                f"fills gaps within windows of {WINDOW} points from what the window holds")
        pad = WINDOW - part.size
        x = np.zeros(WINDOW, dtype=np.float32)
        x[pad:] = np.where(observed, part, 0.0)
        input_mask = np.zeros(WINDOW, dtype=np.int64)
        input_mask[pad:] = 1
        mask = np.zeros(WINDOW, dtype=np.int64)
        mask[pad:] = observed
        yield start, previous_end - start, (x, input_mask, mask)
        previous_end = start + part.size
