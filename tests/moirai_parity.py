"""Moirai through tsfmd's family against uni2ts' own prediction APIs (run in the moirai env).

    <moirai env python> tests/moirai_parity.py report CHECKPOINT_ROOT OUT.json
    <moirai env python> tests/moirai_parity.py reply CHECKPOINT OPTIONS.json BODY.json OUT.json

PYTHONPATH holds a directory with only a `tsfmd` link (as a worker's does) and tests/.
For each tiny checkpoint (tests/tiny_moirai.py) and each case (no covariates, past-only,
known-future, both) it writes tsfmd's quantiles and the library's own for the same series
and seed, for tests/test_family_moirai.py to compare:

* "gluonts": the model's `create_predictor(...).predict(dataset)`, uni2ts' documented
  prediction API and the path TDgpt's moirai service takes for covariates;
* "forward": the module's forward as TDgpt's service calls it for a plain series;
* "predict" (Moirai 2.0 only): Moirai2Forecast.predict on a list of arrays, for a plain
  series (uni2ts 2.0.0's predict pads covariates with a one-column block, so it fails for
  two past covariates, and it cuts known-future ones to the context).

It also writes what tsfmd's family says about itself and a few behaviours that need the
library to observe: batch independence, repeatability, refused options.

`reply` answers one TDgpt request body the way tsfmd's TDgpt route would (tsfmd's own
request checks, scaling and reply: tsfmd.api.tdgpt) with the model call replaced by uni2ts'
create_predictor().predict: what a daemon serving that checkpoint must answer.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SEED = 7
SAMPLES = 64
CONTEXT = 80
HORIZON = 20  # past Moirai 2.0's tiny native block (2 tokens of 8): its rollout runs too


def series(seed: int):
    rng = np.random.default_rng(seed)
    t = np.arange(CONTEXT + HORIZON, dtype=np.float64)
    values = 50 + 10 * np.sin(t / 6) + rng.normal(0, 1, t.size)
    past = np.stack([np.cos(t / 5)[:CONTEXT], rng.normal(0, 1, CONTEXT)])
    future = np.stack([np.sin(t / 3) * 4 + 2])
    return values[:CONTEXT], past, future


CASES = {
    "plain": (False, False),
    "past": (True, False),
    "future": (False, True),
    "both": (True, True),
}


def main(root: Path, out: Path) -> None:
    import torch

    from tsfmd.families import get_family
    from tsfmd.families.base import LoadSpec, SeriesInput

    torch.set_num_threads(1)
    family_class = get_family("moirai")
    report = {}
    for name in ("moirai-1.1", "moirai-moe", "moirai-2.0"):
        directory = root / name
        options = {} if name == "moirai-2.0" else {"num_samples": SAMPLES, "seed": SEED}
        family = family_class.load(LoadSpec(key=name, source=str(directory), options=options))
        caps = family.capabilities()
        entry = {"variant": family.variant, "levels": list(caps.quantile_levels),
                 "caps": {k: getattr(caps, k) for k in (
                     "context_limit", "horizon_limit", "min_context", "past_covariates",
                     "future_covariates", "affine_equivariant", "position_limit",
                     "horizon_block")},
                 "cases": {}}
        for case, (with_past, with_future) in CASES.items():
            values, past, future = series(len(case))
            one = SeriesInput(values=values, past_covariates=past if with_past else None,
                              future_covariates=future if with_future else None)
            ours = family.forecast([one], HORIZON).quantiles[0]
            refs = _gluonts(family, one, caps.quantile_levels)
            if not with_past and not with_future:
                refs["forward"] = _forward(family, one)
            if name == "moirai-2.0" and not with_past and not with_future:
                refs["predict"] = _predict2(family, one)
            entry["cases"][case] = {"tsfmd": ours.tolist(),
                                    **{k: v.tolist() for k, v in refs.items()}}
        entry["batch"] = _batch_behaviour(family, SeriesInput)
        entry["covariate_effect"] = _covariate_effect(family, SeriesInput)
        entry["affine"] = _affine_deviation(family, SeriesInput)
        report[name] = entry
    report["refused"] = _refused(family_class, LoadSpec, root)
    out.write_text(json.dumps(report))


def _shape(one, horizon=HORIZON):
    return dict(prediction_length=horizon, context_length=len(one.values), target_dim=1,
                feat_dynamic_real_dim=0 if one.future_covariates is None
                else len(one.future_covariates),
                past_feat_dynamic_real_dim=0 if one.past_covariates is None
                else len(one.past_covariates))


def _library_model(family, one, horizon=HORIZON):
    """The uni2ts forecast object for this family's variant, as a user of uni2ts makes it."""
    from uni2ts.model.moirai import MoiraiForecast
    from uni2ts.model.moirai2 import Moirai2Forecast
    from uni2ts.model.moirai_moe import MoiraiMoEForecast

    module = family._module
    if family.variant == "moirai-2.0":
        return Moirai2Forecast(module=module, **_shape(one, horizon))
    cls = MoiraiMoEForecast if family.variant == "moirai-moe" else MoiraiForecast
    settings = family._settings  # the patch size and draws the family was loaded with
    return cls(module=module, patch_size=settings["patch_size"],
               num_samples=settings["num_samples"], **_shape(one, horizon))


def _gluonts(family, one, levels, horizon=HORIZON) -> dict:
    """[H, Q] answers of create_predictor().predict on a gluonts dataset of this series.

    Moirai 2.0: "gluonts", its QuantileForecast at the native levels. The sampling
    variants: "gluonts", numpy's linear quantiles of the SampleForecast's own draws (tsfmd's
    rule, and TDgpt's for a plain series), and "gluonts_rank", gluonts' own
    SampleForecast.quantile (the nearest order statistic, what TDgpt answers for covariates).
    """
    import pandas as pd
    import torch

    entry = {"start": pd.Period("2024-01-01 00:00", freq="h"),
             "target": one.values.astype(np.float32)}
    if one.past_covariates is not None:
        entry["past_feat_dynamic_real"] = one.past_covariates.astype(np.float32)
    if one.future_covariates is not None:
        entry["feat_dynamic_real"] = one.future_covariates.astype(np.float32)
    model = _library_model(family, one, horizon)
    predictor = model.create_predictor(batch_size=16, device="cpu")
    torch.manual_seed(family._settings.get("seed", 0))
    forecast = list(predictor.predict([entry]))[0]
    own = np.stack([forecast.quantile(q) for q in levels], axis=-1)
    if family.variant == "moirai-2.0":
        return {"gluonts": own}
    return {"gluonts": np.quantile(forecast.samples, levels, axis=0).T, "gluonts_rank": own,
            "gluonts_samples": forecast.samples}


def _forward(family, one) -> np.ndarray:
    """[H, Q] from the forward call TDgpt's moirai service makes for a plain series."""
    import torch

    model = _library_model(family, one)
    target = torch.as_tensor(one.values, dtype=torch.float32).reshape(1, -1, 1)
    torch.manual_seed(family._settings.get("seed", 0))
    with torch.no_grad():
        answer = model(past_target=target,
                       past_observed_target=torch.ones_like(target, dtype=torch.bool),
                       past_is_pad=torch.zeros_like(target, dtype=torch.bool).squeeze(-1))
    answer = answer[0].numpy()
    if family.variant == "moirai-2.0":
        return answer.T  # [Q, H] native quantiles
    return np.quantile(answer, family.capabilities().quantile_levels, axis=0).T


def _predict2(family, one) -> np.ndarray:
    return _library_model(family, one).predict([one.values[:, None]])[0].T


def _batch_behaviour(family, SeriesInput) -> dict:
    """Batch of three series of different lengths vs each alone; a repeat; a shorter
    horizon's answer vs the first steps of a longer one."""
    batch = []
    for i, length in enumerate((30, 55, 80)):
        values, past, _ = series(100 + i)
        batch.append(SeriesInput(values=values[-length:], past_covariates=past[:, -length:]))
    together = family.forecast(batch, 12).quantiles
    alone = np.stack([family.forecast([s], 12).quantiles[0] for s in batch])
    again = family.forecast(batch, 12).quantiles
    short = np.stack([family.forecast([s], 1).quantiles[0] for s in batch])
    tiny = family.forecast([SeriesInput(values=np.array([3.0, 4.0]))], 5)
    return {"batch_vs_alone": float(np.abs(together - alone).max()),
            "repeat": float(np.abs(together - again).max()),
            "short_vs_long_first_step": float(np.abs(short[:, 0] - together[:, 0]).max()),
            "tiny_finite": bool(np.isfinite(tiny.quantiles).all()),
            "tiny_shape": list(tiny.quantiles.shape)}


def _covariate_effect(family, SeriesInput) -> dict:
    """How far each kind of covariate moves the forecast of one series (0: ignored)."""
    values, past, future = series(200)
    plain = family.forecast([SeriesInput(values=values)], HORIZON).quantiles[0]
    moved = {}
    for kind, one in (("past", SeriesInput(values=values, past_covariates=past)),
                      ("future", SeriesInput(values=values, future_covariates=future))):
        moved[kind] = float(np.abs(family.forecast([one], HORIZON).quantiles[0] - plain).max())
    return moved


def _affine_deviation(family, SeriesInput) -> dict:
    """max |(f(a x + b) - b) / a - f(x)| over the band's range, for the family itself (no
    tsfmd scaling around it): what Capabilities.affine_equivariant claims is ~0."""
    values, past, future = series(300)
    def quantiles(x):
        one = SeriesInput(values=x, past_covariates=past, future_covariates=future)
        return family.forecast([one], HORIZON).quantiles[0]
    plain = quantiles(values)
    band = plain.max() - plain.min()
    return {f"{a:g},{b:g}": float(np.abs((quantiles(a * values + b) - b) / a - plain).max()
                                  / band)
            for a, b in ((1000.0, -5e4), (1.0, 1e3))}


def _refused(family_class, LoadSpec, root: Path) -> dict:
    """The ModelLoadError text for options a checkpoint cannot take."""
    from tsfmd.families.base import ModelLoadError

    tries = {"patch_size_not_in_checkpoint": ("moirai-1.1", {"patch_size": 64}),
             "moe_patch_size": ("moirai-moe", {"patch_size": 8}),
             "num_samples_zero": ("moirai-1.1", {"num_samples": 0}),
             "moirai2_num_samples": ("moirai-2.0", {"num_samples": 10}),
             "bfloat16": ("moirai-1.1", {})}
    answers = {}
    for what, (name, options) in tries.items():
        dtype = "bfloat16" if what == "bfloat16" else "auto"
        try:
            family_class.load(LoadSpec(key=what, source=str(root / name), options=options,
                                       dtype=dtype))
            answers[what] = None
        except ModelLoadError as exc:
            answers[what] = str(exc)
    return answers


def reply(checkpoint: Path, options: dict, body: dict) -> dict:
    from tsfmd.api.tdgpt import parse_request, success_reply
    from tsfmd.families import get_family
    from tsfmd.families.base import Forecast, LoadSpec

    family = get_family("moirai").load(LoadSpec(key="ref", source=str(checkpoint),
                                                options=options))
    caps = family.capabilities()
    request = parse_request(body, caps, "ref")
    quantiles = _gluonts(family, request.series, caps.quantile_levels, request.horizon)
    quantiles = np.asarray(quantiles["gluonts"], dtype=np.float64)[None]
    median = list(caps.quantile_levels).index(0.5)
    return success_reply(request, Forecast(point=quantiles[..., median], quantiles=quantiles),
                         0, caps)


if __name__ == "__main__":
    if sys.argv[1] == "report":
        main(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        options, body = (json.loads(Path(p).read_text()) for p in sys.argv[3:5])
        Path(sys.argv[5]).write_text(json.dumps(reply(Path(sys.argv[2]), options, body)))
