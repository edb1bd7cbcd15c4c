"""TimesFM 2.5 through transformers' own TimesFm2_5ModelForPrediction (no remote code).

The checkpoint is the `google/timesfm-2.5-200m-transformers` layout: config.json with
`model_type: timesfm2_5` and safetensors weights. One forward pass forecasts
`horizon_length` steps (128 for the published model) with a mean channel and 9 quantiles
0.1..0.9; `output` is the median (the model's own point forecast, `decode_index`).
Longer horizons are decoded in blocks: each block's median is appended to the history and
the model runs again, as TimesFM does for long horizons.

Three things keep one series' answer independent of the rest of the batch:
* the padded length is the longest series rounded up to a whole patch, and the model
  masks the padding (its normalisation cancels the zeros transformers pads with);
* transformers decides "clamp forecasts at zero" from the minimum of the whole batch;
  tsfmd turns that off in the forward pass and applies the rule per series instead
  (when `infer_is_positive` is set in config.json and that series has no negative value,
  in the request's own units: `SeriesInput.zero` says where 0 lies in a scaled series);
* every series is decoded the same number of blocks.

The model normalises each series (per-patch statistics), so it is declared
affine-equivariant: tsfmd scales each series in float64 before it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from tsfmd.families.base import (
    Capabilities, Family, Forecast, LoadSpec, ModelLoadError, SeriesInput, resolve_limit,
)
from tsfmd.families.checkpoint import (
    HUB_PATTERNS, LIBRARY_LOCK, open_checkpoint, torch_dtype,
)
from tsfmd.families.quantize import ATTENTION, INT8, quantize_linears, used_dtype

#: the model masks padding and scales by the history, so one point is enough
MIN_CONTEXT = 1
#: horizons past this are mostly the model echoing its own medians
MAX_HORIZON = 1024
MODEL_TYPE = "timesfm2_5"


class TimesFm25Family(Family):
    name = "timesfm-2.5"
    option_values = {}
    # license: not declared; TimesFM 2.5's card names it (pulled with the weights)
    hub_patterns = HUB_PATTERNS

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        open_checkpoint(spec, offline=True)

    def __init__(self, model, caps: Capabilities, device: str):
        self._model = model
        self._caps = caps
        self._device = device
        config = model.config
        self._patch = int(config.patch_length)
        # the longest padded window must be whole patches and within the model's context
        self._max_window = (int(config.context_length) // self._patch) * self._patch
        self._median = int(config.decode_index)
        self._positive = bool(config.infer_is_positive)

    @classmethod
    def load(cls, spec: LoadSpec) -> "TimesFm25Family":
        try:
            with LIBRARY_LOCK:  # transformers resolves this name lazily: not thread-safe
                from transformers import TimesFm2_5ModelForPrediction
        except ImportError as exc:
            raise ModelLoadError(
                "family timesfm-2.5 needs transformers with TimesFM 2.5 (5.x or newer): "
                "pip install -U transformers"
            ) from exc
        directory, config = open_checkpoint(spec)
        if config.get("model_type") != MODEL_TYPE:
            raise ModelLoadError(
                f"{directory} is not a TimesFM 2.5 transformers checkpoint: config.json has "
                f"model_type {config.get('model_type')!r}, family timesfm-2.5 needs {MODEL_TYPE!r} "
                "(the google/timesfm-2.5-200m-transformers layout)"
            )
        model, levels = load_pretrained(TimesFm2_5ModelForPrediction, spec, directory, cls.name)
        caps = Capabilities(
            context_limit=resolve_limit(spec.context_limit, model.config.context_length),
            horizon_limit=resolve_limit(spec.horizon_limit, MAX_HORIZON),
            min_context=MIN_CONTEXT,
            quantile_levels=levels,
            affine_equivariant=True,
            dtype=used_dtype(spec.dtype, model.dtype),
        )
        return cls(model, caps, spec.device)

    def capabilities(self) -> Capabilities:
        return self._caps

    def close(self) -> None:
        self._model = None  # a reload frees the weights once the last request is done

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        import torch

        horizon = int(horizon)
        keep = min(self._caps.context_limit, self._max_window)
        histories = [torch.as_tensor(s.values, dtype=torch.float32)[-keep:] for s in batch]
        # 0 of the request's units, in the values the model reads (tsfmd may scale them)
        zeros = np.array([0.0 if s.zero is None else s.zero for s in batch])
        clamp = [self._positive and bool(np.min(np.asarray(s.values)[-keep:]) >= zero)
                 for s, zero in zip(batch, zeros)]
        blocks = []
        done = 0
        while done < horizon:
            full = self._one_block(histories)  # [B, block, 1 + Q]
            blocks.append(full)
            done += full.shape[1]
            median = full[:, :, self._median]
            histories = [torch.cat([h, median[i]])[-keep:] for i, h in enumerate(histories)]
        full = torch.cat(blocks, dim=1)[:, :horizon].double().numpy()
        point = full[:, :, self._median]
        quantiles = full[:, :, 1:1 + len(self._caps.quantile_levels)]
        rows = np.asarray(clamp)
        point[rows] = np.maximum(point[rows], zeros[rows, None])
        quantiles[rows] = np.maximum(quantiles[rows], zeros[rows, None, None])
        return Forecast(point=point, quantiles=quantiles)

    def _one_block(self, histories):
        """One forward pass: the next `horizon_length` steps, mean and quantile channels."""
        import torch

        longest = max(len(h) for h in histories)
        window = min(self._max_window, self._patch * math.ceil(longest / self._patch))
        past = [h.to(self._device, dtype=self._model.dtype) for h in histories]
        with torch.inference_mode():  # warm_up calls forecast outside the executor's mode
            output = self._model(
                past_values=past, forecast_context_len=window, truncate_negative=False
            )
        return output.full_predictions.float().cpu()


def load_pretrained(model_class, spec: LoadSpec, directory, family: str):
    """`model_class.from_pretrained(directory)` in the registry's dtype, on its device, in
    eval mode -> (model, its quantile levels); the levels must hold the median."""
    dtype = torch_dtype(spec, family, ("float32", "bfloat16", "float16", INT8))
    try:
        with LIBRARY_LOCK:
            model = model_class.from_pretrained(str(directory), dtype=dtype)
        model = model.to(spec.device).eval()
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot load {family} from {directory}: {exc}") from exc
    if spec.dtype == INT8:  # the transformer's MLPs; the input and output residual blocks
        # (their forward reads weight.dtype), attention and norms as float32
        quantize_linears(model, skip=ATTENTION + ("input_ff_layer", "output_projection"))
    levels = tuple(float(q) for q in model.config.quantiles)
    if 0.5 not in levels:
        raise ModelLoadError(f"{directory}: quantiles {levels} have no median (0.5)")
    return model, levels
