"""Chronos-Bolt and Chronos-2, served through the chronos-forecasting package.

Both load with `BaseChronosPipeline.from_pretrained` from a checkpoint directory (local,
the hub cache, or a download), which picks the pipeline class named in config.json; the
family checks that name first so a Chronos-2 checkpoint under `family: chronos-bolt` is
refused with a sentence. Both answer native quantiles and use the median as `output`
(the pipelines' own "mean" is that median).

* chronos-bolt: 9 quantiles 0.1..0.9, a native block of `prediction_length` steps (64 for
  the published models); longer horizons use the pipeline's own unrolling, which feeds
  every native quantile back as context. Series of different lengths are left-padded with
  NaN, which the model masks, so a batch answers what each series answers alone.
* chronos-2: 21 quantiles 0.01..0.99 and covariates. TDgpt's `past_dynamic_real` become
  past-only covariates; each `dynamic_real` row (history and future) becomes a known-future
  covariate. Each series is its own group (no cross-learning), so series never see each
  other; series with different covariate shapes go through the pipeline separately,
  because one pipeline call needs one schema. The output patches of one step attend to
  each other, so `horizon_group` keeps the dynamic batcher from mixing horizons that
  need a different number of them.
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tsfmd.families.base import (
    Capabilities, Family, Forecast, LoadSpec, ModelLoadError, SeriesInput, resolve_limit,
)
from tsfmd.families.checkpoint import (
    HUB_PATTERNS, LIBRARY_LOCK, open_checkpoint, torch_dtype,
)
from tsfmd.families.quantize import ATTENTION, INT8, quantize_linears, used_dtype

#: the pipelines accept any history; they scale by its mean and spread
MIN_CONTEXT = 1
#: past this many steps the unrolled forecasts are mostly the model echoing itself
MAX_HORIZON = 1024
#: the pipeline class each checkpoint names -> the tsfmd family that serves it
_FAMILY_OF_PIPELINE = {
    "ChronosBoltPipeline": "chronos-bolt",
    "Chronos2Pipeline": "chronos-2",
    "ChronosPipeline": "none: token-based Chronos is not served",
}

# tsfmd enforces its own horizon limit; the pipelines' per-call advice is noise in the log.
warnings.filterwarnings(
    "ignore", message="We recommend keeping prediction length", module="chronos"
)


class _ChronosFamily(Family):
    """Loading shared by both Chronos families; subclasses say which pipeline they serve."""

    pipeline_class = ""
    #: whether the pipeline takes past and known-future covariates
    covariates = False
    #: dtype for `dtype: auto` on a GPU
    auto_cuda_dtype = "float32"
    option_values = {}
    license = "apache-2.0"  # Chronos-Bolt's and Chronos-2's model cards
    hub_patterns = HUB_PATTERNS

    def __init__(self, pipeline, caps: Capabilities):
        self._pipeline = pipeline
        self._caps = caps
        self._median = list(caps.quantile_levels).index(0.5)

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        if importlib.util.find_spec("chronos") is None:
            raise ModelLoadError(cls._needs_package())
        open_checkpoint(spec, offline=True)

    @classmethod
    def _needs_package(cls) -> str:
        return f"family {cls.name} needs the chronos-forecasting package: " \
            "pip install 'tsfmd[chronos]'"

    @classmethod
    def load(cls, spec: LoadSpec) -> "_ChronosFamily":
        try:
            with LIBRARY_LOCK:
                from chronos import BaseChronosPipeline
        except ImportError as exc:
            raise ModelLoadError(cls._needs_package()) from exc
        directory, config = open_checkpoint(spec)
        found = config.get("chronos_pipeline_class") or (
            "ChronosPipeline" if "chronos_config" in config else None
        )
        if found != cls.pipeline_class:
            if found is None:
                what = f"has no chronos_config (model_type {config.get('model_type')!r})"
            else:
                what = f"names pipeline {found} (family {_FAMILY_OF_PIPELINE.get(found, '?')})"
            raise ModelLoadError(
                f"{directory} is not a {cls.name} checkpoint: its config.json {what}; "
                f"family {cls.name} needs {cls.pipeline_class}"
            )
        dtype = torch_dtype(spec, cls.name, ("float32", "bfloat16", INT8), cls.auto_cuda_dtype)
        try:
            with LIBRARY_LOCK:
                pipeline = BaseChronosPipeline.from_pretrained(
                    str(directory), device_map=spec.device, dtype=dtype
                )
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, AssertionError) as exc:
            raise ModelLoadError(f"cannot load {cls.name} from {directory}: {exc}") from exc
        pipeline.model.eval()
        if spec.dtype == INT8:  # the encoder's and decoder's feed-forwards; patch embeddings,
            # attention and norms as float32 (families/quantize.py)
            quantize_linears(pipeline.model, skip=ATTENTION + ("patch_embedding",))
        caps = cls._capabilities(pipeline, spec)
        if 0.5 not in caps.quantile_levels:
            raise ModelLoadError(f"{directory}: quantiles {caps.quantile_levels} have no median")
        return cls(pipeline, caps)

    @classmethod
    def _capabilities(cls, pipeline, spec: LoadSpec) -> Capabilities:
        return Capabilities(
            context_limit=resolve_limit(spec.context_limit, pipeline.model_context_length),
            horizon_limit=resolve_limit(
                spec.horizon_limit, max(MAX_HORIZON, pipeline.model_prediction_length)
            ),
            min_context=MIN_CONTEXT,
            quantile_levels=tuple(float(q) for q in pipeline.quantiles),
            past_covariates=cls.covariates,
            future_covariates=cls.covariates,
            affine_equivariant=True,
            horizon_block=cls._horizon_block(pipeline),
            dtype=used_dtype(spec.dtype, pipeline.model.dtype),
        )

    @classmethod
    def _horizon_block(cls, pipeline) -> int:
        """Capabilities.horizon_block: 0, any horizons may share a forward pass."""
        return 0

    def capabilities(self) -> Capabilities:
        return self._caps

    def close(self) -> None:
        self._pipeline = None  # a reload frees the weights once the last request is done

    def _as_forecast(self, quantiles: np.ndarray) -> Forecast:
        """[B, H, Q] native quantiles -> Forecast with the median as the point forecast."""
        quantiles = np.asarray(quantiles, dtype=np.float64)
        return Forecast(point=quantiles[..., self._median], quantiles=quantiles)


class ChronosBoltFamily(_ChronosFamily):
    name = "chronos-bolt"
    pipeline_class = "ChronosBoltPipeline"
    # Chronos-Bolt's authors run it in bfloat16 on GPUs; on a CPU tsfmd keeps float32.
    auto_cuda_dtype = "bfloat16"

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        import torch

        longest = max(len(s.values) for s in batch)
        rows = torch.full((len(batch), longest), float("nan"), dtype=torch.float32)
        for i, series in enumerate(batch):
            rows[i, longest - len(series.values):] = torch.as_tensor(series.values)
        predicted = self._pipeline.predict(rows, prediction_length=int(horizon))  # [B, Q, H]
        return self._as_forecast(predicted.transpose(1, 2).numpy())


class Chronos2Family(_ChronosFamily):
    name = "chronos-2"
    pipeline_class = "Chronos2Pipeline"

    covariates = True

    @classmethod
    def _horizon_block(cls, pipeline) -> int:
        """Requests may share a batch only with the same count of output patches.

        Chronos-2 decodes all output patches of a step together and they attend to each
        other, so the first h steps change when more patches are asked for; the patches of
        every step follow from ceil(horizon / output_patch_size).
        """
        return int(pipeline.model_output_patch_size)

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        horizon = int(horizon)
        answers: List[np.ndarray] = [None] * len(batch)  # type: ignore[list-item]
        for members in _by_schema(batch).values():
            tasks = [_task(batch[i], horizon) for i in members]
            predicted = self._pipeline.predict(tasks, prediction_length=horizon)
            for i, one in zip(members, predicted):
                answers[i] = one[0].transpose(0, 1).numpy()  # [1, Q, H] -> [H, Q]
        return self._as_forecast(np.stack(answers))


def _by_schema(batch: Sequence[SeriesInput]) -> Dict[Tuple[int, int], List[int]]:
    """Indices of the series grouped by (past covariates, future covariates) counts."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, series in enumerate(batch):
        past = 0 if series.past_covariates is None else len(series.past_covariates)
        future = 0 if series.future_covariates is None else len(series.future_covariates)
        groups.setdefault((past, future), []).append(i)
    return groups


def _task(series: SeriesInput, horizon: int) -> dict:
    """One series as Chronos-2's input dict.

    A known-future covariate needs its past values (under `past_covariates`) and its next
    `horizon` values (under `future_covariates`, same name). Future values the request did
    not send are NaN, which Chronos-2 treats as unknown.
    """
    length = len(series.values)
    task: dict = {"target": np.asarray(series.values, dtype=np.float32)}
    past: Dict[str, np.ndarray] = {}
    future: Dict[str, np.ndarray] = {}
    if series.past_covariates is not None:
        for k, row in enumerate(series.past_covariates):
            past[f"past_{k}"] = np.asarray(row[:length], dtype=np.float32)
    if series.future_covariates is not None:
        for k, row in enumerate(series.future_covariates):
            ahead = np.full(horizon, np.nan, dtype=np.float32)
            known = np.asarray(row[length:length + horizon], dtype=np.float32)
            ahead[:known.size] = known
            past[f"future_{k}"] = np.asarray(row[:length], dtype=np.float32)
            future[f"future_{k}"] = ahead
    if past:
        task["past_covariates"] = past
    if future:
        task["future_covariates"] = future
    return task
