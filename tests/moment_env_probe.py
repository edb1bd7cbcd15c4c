"""Run by MOMENT's own environment's python (tests/test_imputation_moment.py), never by pytest.

  build DIR            a tiny random MOMENT checkpoint, made and saved with momentfm's own
                       classes (MOMENTPipeline, a 2-layer T5 encoder of width 32)
  impute SOURCE        the family's and momentfm's answers for the series (JSON, null for
                       a gap) read from stdin
  compare SOURCE [CACHE_DIR]
                       load SOURCE through tsfmd's moment family (local directory, or a hub
                       id found in CACHE_DIR's hub cache) and through momentfm itself, impute
                       the same gappy series with both, print both answers as JSON

Only numpy, torch, momentfm and tsfmd's family side are imported here (no flask, no yaml):
what a worker in this environment has. The reference calls momentfm's model the way
MOMENT's imputation is meant to be called, written out window by window below.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

WINDOW = 512
LENGTHS = (300, 512, 1300)  # one padded window; one exact window; three, the last overlapping


def build(directory: str) -> None:
    from momentfm import MOMENTPipeline

    t5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
          "feed_forward_proj": "gated-gelu", "is_gated_act": True, "dense_act_fn": "gelu_new",
          "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
          "vocab_size": 8, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
          "is_encoder_decoder": False, "model_type": "t5"}
    config = {"task_name": "reconstruction", "model_name": "MOMENT",
              "transformer_type": "encoder_only", "d_model": None, "seq_len": WINDOW,
              "patch_len": 8, "patch_stride_len": 8, "device": "cpu",
              "transformer_backbone": "google/flan-t5-small", "t5_config": t5}
    torch.manual_seed(0)
    model = MOMENTPipeline(config=config, model_kwargs={"task_name": "reconstruction"})
    model.init()
    with torch.no_grad():  # the mask token is zeros until trained: make it count
        model.patch_embedding.mask_embedding.normal_()
    model.save_pretrained(directory)


def gappy_series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = 120.0 + 15.0 * np.sin(t / 9.0) + 0.1 * t + rng.normal(0, 1.0, n)
    values[rng.choice(n, n // 12, replace=False)] = np.nan  # scattered points
    block = int(rng.integers(0, n - 30))
    values[block:block + 25] = np.nan  # and one long gap
    return values


def reference(model, values: np.ndarray) -> np.ndarray:
    """momentfm's own call: x with zeros at the gaps, input_mask 0 on left padding only,
    mask 0 at padding and gaps; gaps take the reconstruction. Windows of 512 from the start,
    the last one the series' last 512 points."""
    n = values.size
    spans = [(s, s) for s in range(0, n - WINDOW + 1, WINDOW)] or [(0, 0)]
    if n > WINDOW and spans[-1][0] + WINDOW < n:
        spans.append((n - WINDOW, spans[-1][0] + WINDOW))  # (window start, own from)
    answer = values.copy()
    for start, own in spans:
        part = values[start:start + WINDOW]
        pad = WINDOW - part.size
        observed = ~np.isnan(part)
        x = torch.zeros(1, 1, WINDOW)
        x[0, 0, pad:] = torch.from_numpy(np.where(observed, part, 0.0)).float()
        input_mask = torch.zeros(1, WINDOW, dtype=torch.long)
        input_mask[0, pad:] = 1
        mask = torch.zeros(1, WINDOW, dtype=torch.long)
        mask[0, pad:] = torch.from_numpy(observed.astype(np.int64))
        with torch.no_grad():
            out = model(x_enc=x, input_mask=input_mask, mask=mask).reconstruction
        rebuilt = out[0, 0, pad:].double().numpy()
        for i in range(own - start, part.size):
            if np.isnan(values[start + i]):
                answer[start + i] = rebuilt[i]
    return answer


def compare(source: str, cache_dir: str = None) -> None:
    from momentfm import MOMENTPipeline

    from tsfmd.families import get_family
    from tsfmd.families.base import LoadSpec

    family = get_family("moment")
    spec = LoadSpec(key="moment", source=source, cache_dir=cache_dir)
    began = time.perf_counter()
    model = family.load(spec)
    load_s = time.perf_counter() - began
    model.warm_up()
    where = family.weights_location(spec)  # the same files, found without tsfmd's loader
    ref_model = MOMENTPipeline.from_pretrained(
        str(where), model_kwargs={"task_name": "reconstruction"})
    ref_model.init()
    ref_model.eval()
    series = [gappy_series(n, seed) for seed, n in enumerate(LENGTHS)]
    began = time.perf_counter()
    together = model.impute(series)
    impute_s = time.perf_counter() - began
    alone = [model.impute([s])[0] for s in series]
    again = model.impute(series)
    print(json.dumps({
        "caps": {"tasks": list(model.capabilities().tasks),
                 "context_limit": model.capabilities().context_limit},
        "load_s": load_s, "impute_s": impute_s, "points": int(sum(LENGTHS)),
        "torch": torch.__version__, "numpy": np.__version__,
        "series": [_json(s) for s in series],
        "family": [a.tolist() for a in together],
        "alone": [a.tolist() for a in alone],
        "again": [a.tolist() for a in again],
        "reference": [reference(ref_model, s).tolist() for s in series],
        "modules": sorted(m for m in ("flask", "waitress", "pydantic", "prometheus_client")
                          if m in sys.modules),
    }))


def impute(source: str) -> None:
    from momentfm import MOMENTPipeline

    from tsfmd.families import get_family
    from tsfmd.families.base import LoadSpec

    values = np.array([np.nan if v is None else v for v in json.load(sys.stdin)], dtype=float)
    model = get_family("moment").load(LoadSpec(key="moment", source=source))
    ref_model = MOMENTPipeline.from_pretrained(
        source, model_kwargs={"task_name": "reconstruction"})
    ref_model.init()
    ref_model.eval()
    print(json.dumps({"family": model.impute([values])[0].tolist(),
                      "reference": reference(ref_model, values).tolist()}))


def _json(values: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in values]


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(sys.argv[2])
    elif sys.argv[1] == "impute":
        impute(sys.argv[2])
    else:
        compare(*sys.argv[2:])
