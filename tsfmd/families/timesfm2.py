"""TimesFM 2.0 (TDgpt's default TimesFM) through transformers' TimesFmModelForPrediction.

The checkpoint is a transformers directory: config.json with `model_type: timesfm` and
safetensors weights. google/timesfm-2.0-500m-pytorch carries that layout on its main
branch (beside the `torch_model.ckpt` the timesfm package reads), and transformers' own
integration test loads that hub id at main; tsfmd's hub download fetches only the json and
safetensors files. A directory holding only torch_model.ckpt (what the timesfm package,
and TDgpt's timesfm-server.py, read) is refused with the way out: pull the hub id, or
convert the file with transformers' convert_timesfm_orignal_to_hf.py (it needs the timesfm
package to read the file; tsfmd does not unpickle it).

One forward pass forecasts `horizon_length` steps (128 for the published model): the
model's mean channel and its 9 quantiles 0.1..0.9. `output` is the median, the timesfm
package's default point forecast (what TDgpt's service returns). Longer horizons are
decoded as the timesfm package decodes: each block's *mean* is appended to the history and
the model runs again on the last `context_length` points. tsfmd does this with one forward
per block rather than transformers' own multi-block loop (reached only by raising
`horizon_len` on the module): that loop re-slices its padding mask from the previous
window, so from the second block on a series shorter than the context is read with a mask
shifted by a block, which the timesfm package does not do.

Each series is front-padded to the model's full context with a mask (transformers'
_preprocess), so its answer never depends on its batch-mates; the frequency input is
`options.freq` (0, TDgpt's value, by default). Negative values are never clamped (the
timesfm package's default, and TDgpt's). The model normalises by the history's first full
patch, so the family is affine-equivariant: tsfmd scales each series in float64 before it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from tsfmd.families.base import (
    Capabilities, Family, Forecast, LoadSpec, ModelLoadError, SeriesInput, resolve_limit,
)
from tsfmd.families.checkpoint import HUB_PATTERNS, LIBRARY_LOCK, open_checkpoint
from tsfmd.families.quantize import used_dtype
from tsfmd.families.timesfm import MAX_HORIZON, load_pretrained

MODEL_TYPE = "timesfm"
ORIGINAL_FILE = "torch_model.ckpt"


class TimesFm20Family(Family):
    name = "timesfm-2.0"
    option_values = {"freq": (0, 1, 2)}  # TimesFM's frequency classes: high, medium, low
    license = "apache-2.0"  # google/timesfm-2.0-500m-pytorch's card
    hub_patterns = HUB_PATTERNS

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        _open(spec, offline=True)

    def __init__(self, model, caps: Capabilities, device: str, freq: int):
        self._model = model
        self._caps = caps
        self._device = device
        self._freq = freq
        self._median = 1 + caps.quantile_levels.index(0.5)  # channel 0 is the mean

    @classmethod
    def load(cls, spec: LoadSpec) -> "TimesFm20Family":
        try:
            with LIBRARY_LOCK:  # transformers resolves this name lazily: not thread-safe
                from transformers import TimesFmModelForPrediction
        except ImportError as exc:
            raise ModelLoadError(
                "family timesfm-2.0 needs transformers with TimesFM (4.56 or newer): "
                "pip install -U transformers"
            ) from exc
        directory = _open(spec)
        model, levels = load_pretrained(TimesFmModelForPrediction, spec, directory, cls.name)
        caps = Capabilities(
            context_limit=resolve_limit(spec.context_limit, model.config.context_length),
            horizon_limit=resolve_limit(spec.horizon_limit, MAX_HORIZON),
            min_context=1,  # shorter than a patch is padded and masked
            quantile_levels=levels,
            affine_equivariant=True,
            dtype=used_dtype(spec.dtype, model.dtype),
        )
        return cls(model, caps, spec.device, int(spec.options.get("freq", 0)))

    def capabilities(self) -> Capabilities:
        return self._caps

    def close(self) -> None:
        self._model = None

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        import torch

        keep = self._caps.context_limit
        histories = [torch.as_tensor(s.values, dtype=torch.float32)[-keep:] for s in batch]
        block = int(self._model.config.horizon_length)
        blocks = []
        for _ in range(math.ceil(int(horizon) / block)):
            full = self._one_block(histories)  # [B, block, 1 + Q]
            blocks.append(full)
            histories = [torch.cat([h, full[i, :, 0]])[-keep:] for i, h in enumerate(histories)]
        full = torch.cat(blocks, dim=1)[:, : int(horizon)].double().numpy()
        return Forecast(point=full[:, :, self._median].copy(), quantiles=full[:, :, 1:].copy())

    def _one_block(self, histories):
        import torch

        past = [h.to(self._device, dtype=self._model.dtype) for h in histories]
        with torch.inference_mode():  # warm_up calls forecast outside the executor's mode
            output = self._model(past_values=past, freq=[self._freq] * len(past),
                                 truncate_negative=False)
        return output.full_predictions.float().cpu()


def _open(spec: LoadSpec, offline: bool = False) -> Path:
    local = Path(spec.source).expanduser()
    if (local / ORIGINAL_FILE).is_file() and not (local / "config.json").is_file():
        raise ModelLoadError(
            f"{local} holds {ORIGINAL_FILE}, the timesfm package's file: family timesfm-2.0 "
            "reads the transformers layout (config.json + model.safetensors), which "
            "google/timesfm-2.0-500m-pytorch also carries: `tsfmd pull "
            "google/timesfm-2.0-500m-pytorch`, or convert the file with transformers' "
            "convert_timesfm_orignal_to_hf.py"
        )
    directory, config = open_checkpoint(spec, offline=offline)
    if config.get("model_type") != MODEL_TYPE:
        raise ModelLoadError(
            f"{directory} is not a TimesFM 2.0 transformers checkpoint: config.json has "
            f"model_type {config.get('model_type')!r}, family timesfm-2.0 needs {MODEL_TYPE!r} "
            "(the google/timesfm-2.0-500m-pytorch layout)"
        )
    return directory
