"""Moirai 1.1-R, Moirai-MoE and Moirai 2.0 (Salesforce), served through uni2ts 2.0.0.

uni2ts pins torch < 2.5, numpy ~= 1.26 and gluonts ~= 0.14, which clash with tsfmd's own
environment, so a registry entry of this family names an environment that has uni2ts
(`environment: moirai`, requirements `uni2ts==2.0.0`) and runs in a worker there. This
module imports only numpy and tsfmd's own light modules at the top: the daemon's process
checks options and files (`tsfmd check`, /v1/models) without uni2ts; only `load`, in the
worker, imports torch and uni2ts.

The environment is built honestly from uni2ts' own pins: PyPI's torch 2.4.1 for Python 3.11
is its CUDA build (its wheel and nvidia-* libraries make the environment about 6 GB), and it
runs on a CPU as well. On this project's CI machines (2 cores) it builds in about 6 minutes
from PyPI and is cached (rebuilt only when its requirements change).

Which model a checkpoint holds is read from its config.json (the init arguments that
uni2ts' `save_pretrained` writes): `distr_output` and no `d_ff` is Moirai 1.x (1.0-R and
1.1-R share the class), `distr_output` with `d_ff` is Moirai-MoE, `quantile_levels` with
`num_predict_token` is Moirai 2.0.

Forecasts come from uni2ts' own forward passes (MoiraiForecast, MoiraiMoEForecast,
Moirai2Forecast: the call TDgpt's moirai service makes), one series at a time:

* Moirai 1.x and Moirai-MoE predict a distribution and answer `num_samples` draws (default
  100, TDgpt's count with covariates). tsfmd turns the draws into quantiles at
  SAMPLE_LEVELS (linear interpolation between order statistics, numpy's default and what
  gluonts' SampleForecast.quantile gives) and answers their median. The draws come from
  torch's generator seeded with `seed` (default 0) before each series, so the same
  request gets the same answer, alone or in any batch, and equals uni2ts' own answer for
  that seed. `patch_size` (default 16, TDgpt's choice; one of the checkpoint's
  `patch_sizes`) picks the patching; uni2ts' "auto" (a validation pass per patch size)
  is not offered.
* Moirai 2.0 answers its own quantiles (9 levels 0.1..0.9 in the published checkpoints);
  it takes no options. Horizons past its native block are rolled out by uni2ts itself.

Covariates are used as TDgpt's moirai service sends them: `past_dynamic_real` rows become
`past_feat_dynamic_real` (known for the history only), `dynamic_real` rows become
`feat_dynamic_real` (known for history and horizon).

Every Moirai normalises each series and each covariate by its own mean and spread
(PackedStdScaler, sqrt(var + 1e-5)) and maps its answer back. Moirai 1.x and Moirai 2.0 are
therefore declared affine-equivariant (measured: f(1000x - 5e4) = 1000 f(x) - 5e4 to 2e-7
of the band): tsfmd scales each series in float64 first and the 1e-5 floor never bites.
Moirai-MoE is not: its predictive distribution is, but its seeded draws are not. Its
decoder also reads the horizon's placeholder token, whose input (unscaled zeros) depends on
the series' level; the draws for that token use the same generator as the ones answered,
and rejection sampling (Student-t, negative binomial) takes a number of random values that
depends on the parameters, so a shift of the series changes every later draw (by up to 90 %
of the band on the tiny model). tsfmd therefore gives Moirai-MoE the values as sent (within
float32), and its answer is what uni2ts answers for that request and seed.

A Moirai forecast's first steps change with
the horizon asked (1.x: prediction tokens attend both ways; MoE and 1.x: the draws take the
horizon's shape), so requests share a batch only with their own horizon (horizon_block 1).
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from tsfmd.families.base import (
    Capabilities, Family, Forecast, LoadSpec, ModelLoadError, SeriesInput, resolve_limit,
)
from tsfmd.families.checkpoint import HUB_PATTERNS, LIBRARY_LOCK, open_checkpoint, torch_dtype

MOIRAI_1 = "moirai-1.x"
MOIRAI_MOE = "moirai-moe"
MOIRAI_2 = "moirai-2.0"
#: quantile levels answered from samples: every central band TDgpt users ask for most
#: (80, 90, 95, 98 %) lies on two of them, others are interpolated between neighbours
SAMPLE_LEVELS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95,
                 0.975, 0.99)
DEFAULT_PATCH_SIZE = 16
DEFAULT_NUM_SAMPLES = 100
DEFAULT_SEED = 0
MAX_NUM_SAMPLES = 10000
#: TDgpt's SQL caps rows at 1024; beyond it Moirai-MoE would roll out hundreds of steps
MAX_HORIZON = 1024
#: draws are reproducible only if no other thread reseeds torch's generator meanwhile
_SAMPLING_LOCK = threading.Lock()
_NEEDS_UNI2TS = (
    "family moirai needs uni2ts (pip install uni2ts==2.0.0), which cannot share tsfmd's "
    "environment: give the entry `environment: <name>` naming an environment whose "
    "requirements include uni2ts==2.0.0"
)


def variant_of(config: Mapping[str, Any], where: str) -> str:
    """Which Moirai a checkpoint's config.json describes, or a ModelLoadError saying why
    it is none of them."""
    if "quantile_levels" in config and "num_predict_token" in config:
        return MOIRAI_2
    if "distr_output" in config and "patch_sizes" in config:
        return MOIRAI_MOE if "d_ff" in config else MOIRAI_1
    keys = ", ".join(sorted(config)[:8]) or "none"
    raise ModelLoadError(
        f"{where} is not a Moirai checkpoint: its config.json has neither distr_output and "
        f"patch_sizes (Moirai 1.x, Moirai-MoE) nor quantile_levels and num_predict_token "
        f"(Moirai 2.0); its keys: {keys}"
    )


class MoiraiFamily(Family):
    name = "moirai"
    option_values = {"patch_size": int, "num_samples": int, "seed": int}
    license = "cc-by-nc-4.0"  # the model cards of Moirai 1.1-R, Moirai-MoE and Moirai 2.0
    hub_patterns = HUB_PATTERNS

    def __init__(self, module, variant: str, settings: Dict[str, int], caps: Capabilities,
                 device: str):
        self._module = module
        self._variant = variant
        self._settings = settings
        self._caps = caps
        self._device = device

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        directory, config = open_checkpoint(spec, offline=True)
        _settings(variant_of(config, str(directory)), config, spec.options)

    @classmethod
    def load(cls, spec: LoadSpec) -> "MoiraiFamily":
        directory, config = open_checkpoint(spec)
        variant = variant_of(config, str(directory))
        settings = _settings(variant, config, spec.options)
        try:
            with LIBRARY_LOCK:
                module_class = _module_class(variant)
        except ImportError as exc:
            raise ModelLoadError(f"{_NEEDS_UNI2TS} ({exc})") from exc
        torch_dtype(spec, cls.name, ("float32",))
        try:
            with LIBRARY_LOCK:
                module = module_class.from_pretrained(str(directory))
            module = module.to(spec.device).eval()
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"cannot load {variant} from {directory}: {exc}") from exc
        return cls(module, variant, settings, _capabilities(variant, module, settings, spec),
                   spec.device)

    @property
    def variant(self) -> str:
        return self._variant

    def capabilities(self) -> Capabilities:
        return self._caps

    def close(self) -> None:
        self._module = None  # a reload frees the weights once the last request is done

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        import torch

        rows = []
        with torch.no_grad():
            for series in batch:
                rows.append(self._one(series, int(horizon), torch))
        quantiles = np.stack(rows)  # [B, H, Q]
        median = list(self._caps.quantile_levels).index(0.5)
        return Forecast(point=quantiles[..., median], quantiles=quantiles)

    def _one(self, series: SeriesInput, horizon: int, torch) -> np.ndarray:
        """[H, Q] quantiles for one series, from the variant's own uni2ts forward pass."""
        inputs = _tensors(series, horizon, torch, self._device)
        past = 0 if series.past_covariates is None else len(series.past_covariates)
        future = 0 if series.future_covariates is None else len(series.future_covariates)
        shape = dict(prediction_length=horizon, context_length=len(series.values),
                     target_dim=1, feat_dynamic_real_dim=future,
                     past_feat_dynamic_real_dim=past)
        if self._variant == MOIRAI_2:
            from uni2ts.model.moirai2 import Moirai2Forecast

            model = Moirai2Forecast(module=self._module, **shape)
            answer = model(**inputs)[0]  # [Q, H], deterministic
            return answer.float().cpu().numpy().T.astype(np.float64)
        model = _sampling_class(self._variant)(
            module=self._module, patch_size=self._settings["patch_size"],
            num_samples=self._settings["num_samples"], **shape,
        )
        with _SAMPLING_LOCK, torch.random.fork_rng(devices=_cuda_devices(self._device)):
            torch.manual_seed(self._settings["seed"])
            samples = model(**inputs)[0]  # [num_samples, H]
        return sample_quantiles(samples.float().cpu().numpy())


def sample_quantiles(samples: np.ndarray) -> np.ndarray:
    """[N, H] draws -> [H, Q] quantiles at SAMPLE_LEVELS (numpy's linear interpolation)."""
    return np.quantile(samples, SAMPLE_LEVELS, axis=0).T.astype(np.float64)


def _settings(variant: str, config: Mapping[str, Any], options: Mapping[str, Any]) -> dict:
    """The family's options checked against what this checkpoint can do."""
    for name, value in options.items():
        if isinstance(value, bool):
            raise ModelLoadError(f"options.{name}: must be a whole number, got {value!r}")
    if variant == MOIRAI_2:
        if options:
            raise ModelLoadError(
                f"options {', '.join(sorted(options))}: Moirai 2.0 answers its own quantiles "
                "with its own patch size and takes no options"
            )
        return {}
    patch_sizes = tuple(int(p) for p in config.get("patch_sizes", ()))
    default_patch = DEFAULT_PATCH_SIZE if DEFAULT_PATCH_SIZE in patch_sizes else patch_sizes[0]
    patch = options.get("patch_size", default_patch)
    if patch not in patch_sizes:
        raise ModelLoadError(
            f"options.patch_size: this {variant} checkpoint patches by "
            f"{', '.join(map(str, patch_sizes))}, not {patch}"
        )
    samples = options.get("num_samples", DEFAULT_NUM_SAMPLES)
    if not 1 <= samples <= MAX_NUM_SAMPLES:
        raise ModelLoadError(
            f"options.num_samples: must be between 1 and {MAX_NUM_SAMPLES}, got {samples}"
        )
    return {"patch_size": int(patch), "num_samples": int(samples),
            "seed": int(options.get("seed", DEFAULT_SEED))}


def _capabilities(variant: str, module, settings: dict, spec: LoadSpec) -> Capabilities:
    patch = int(module.patch_size if variant == MOIRAI_2 else settings["patch_size"])
    # context and horizon tokens share the rotary time positions the model was trained on
    positions = (int(module.max_seq_len) - 1) * patch
    if variant == MOIRAI_2:
        levels = tuple(float(q) for q in module.quantile_levels)
        if 0.5 not in levels:
            raise ModelLoadError(f"Moirai 2.0 quantiles {levels} have no median")
    else:
        levels = SAMPLE_LEVELS
    return Capabilities(
        context_limit=resolve_limit(spec.context_limit, positions - 1),
        horizon_limit=resolve_limit(spec.horizon_limit, min(MAX_HORIZON, positions - patch)),
        min_context=1,
        quantile_levels=levels,
        past_covariates=True,
        future_covariates=True,
        affine_equivariant=variant != MOIRAI_MOE,  # see the module's docstring
        position_limit=positions,
        horizon_block=1,
    )


def _module_class(variant: str):
    if variant == MOIRAI_2:
        from uni2ts.model.moirai2 import Moirai2Module

        return Moirai2Module
    if variant == MOIRAI_MOE:
        from uni2ts.model.moirai_moe import MoiraiMoEModule

        return MoiraiMoEModule
    from uni2ts.model.moirai import MoiraiModule

    return MoiraiModule


def _sampling_class(variant: str):
    if variant == MOIRAI_MOE:
        from uni2ts.model.moirai_moe import MoiraiMoEForecast

        return MoiraiMoEForecast
    from uni2ts.model.moirai import MoiraiForecast

    return MoiraiForecast


def _tensors(series: SeriesInput, horizon: int, torch, device: str) -> dict:
    """One series as uni2ts' forward arguments: [1, time, variates] tensors and masks."""
    values = np.asarray(series.values, dtype=np.float32)
    inputs = {
        "past_target": values[None, :, None],
        "past_observed_target": np.ones((1, values.size, 1), dtype=bool),
        "past_is_pad": np.zeros((1, values.size), dtype=bool),
    }
    if series.past_covariates is not None:
        past, seen = _rows(series.past_covariates, values.size)
        inputs["past_feat_dynamic_real"], inputs["past_observed_feat_dynamic_real"] = past, seen
    if series.future_covariates is not None:
        future, seen = _rows(series.future_covariates, values.size + horizon)
        inputs["feat_dynamic_real"], inputs["observed_feat_dynamic_real"] = future, seen
    return {name: torch.as_tensor(array, device=device) for name, array in inputs.items()}


def _rows(rows: np.ndarray, length: int) -> Tuple[np.ndarray, np.ndarray]:
    """[k, n] covariate rows -> ([1, length, k] values, observed mask); points the request
    did not send (past its end, or NaN) are 0 and marked unobserved, as uni2ts does."""
    out = np.zeros((length, len(rows)), dtype=np.float32)
    for k, row in enumerate(rows):
        row = np.asarray(row, dtype=np.float32)[:length]
        out[:row.size, k] = row
    seen = np.zeros_like(out, dtype=bool)
    for k, row in enumerate(rows):
        seen[:min(len(row), length), k] = True
    seen &= np.isfinite(out)
    out[~seen] = 0.0
    return out[None], seen[None]


def _cuda_devices(device: str) -> list:
    if not device.startswith("cuda"):
        return []
    _, _, index = device.partition(":")
    return [int(index or 0)]
