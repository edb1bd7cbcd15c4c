"""Tiny random-weight checkpoints in the published layouts, for the family tests.

Each builder makes the library's own model class from a small config that carries the
fields the published config.json carries (for Chronos-Bolt the T5 fields such as
`decoder_start_token_id`, plus `chronos_config` and `chronos_pipeline_class`), and writes
it with `save_pretrained`, so tsfmd loads it through the same `from_pretrained` path as
real weights. Only the sizes are small. Seeds are fixed so a failure can be replayed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

#: Chronos-2's published quantile grid
CHRONOS2_QUANTILES = [0.01, 0.05] + [round(0.1 + 0.05 * i, 2) for i in range(17)] + [0.95, 0.99]
BOLT_QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def chronos_bolt(
    directory: Path, context_length: int = 512, prediction_length: int = 16, size=None
) -> Path:
    """A 2+2 layer Chronos-Bolt (amazon/chronos-bolt-* layout) saved under `directory`.

    `size` overrides the layer sizes (the benchmark builds the published ones).
    """
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

    torch.manual_seed(7)
    dims = dict(d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=4)
    dims.update(size or {})
    config = T5Config(
        **dims, vocab_size=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        feed_forward_proj="relu", dense_act_fn="relu", is_encoder_decoder=True,
        initializer_factor=0.05, dropout_rate=0.1, layer_norm_epsilon=1e-6,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        classifier_dropout=0.0, n_positions=512,
    )
    config.architectures = ["ChronosBoltModelForForecasting"]
    config.chronos_pipeline_class = "ChronosBoltPipeline"
    config.reg_token_id = 1
    config.chronos_config = {
        "context_length": context_length,
        "input_patch_size": 16,
        "input_patch_stride": 16,
        "prediction_length": prediction_length,
        "quantiles": BOLT_QUANTILES,
        "use_reg_token": True,
    }
    ChronosBoltModelForForecasting(config).save_pretrained(directory)
    return Path(directory)


def chronos2(
    directory: Path, context_length: int = 512, max_output_patches: int = 2, size=None
) -> Path:
    """A 2-layer Chronos-2 (amazon/chronos-2 layout) saved under `directory`."""
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    torch.manual_seed(11)
    dims = dict(d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    dims.update(size or {})
    config = Chronos2CoreConfig(
        **dims, feed_forward_proj="relu",
        initializer_factor=0.05, dropout_rate=0.1, layer_norm_epsilon=1e-6, vocab_size=2,
        pad_token_id=0, rope_theta=10000.0,
    )
    config.architectures = ["Chronos2Model"]
    config.chronos_pipeline_class = "Chronos2Pipeline"
    config.reg_token_id = 1
    config.chronos_config = {
        "context_length": context_length,
        "input_patch_size": 16,
        "input_patch_stride": 16,
        "output_patch_size": 16,
        "max_output_patches": max_output_patches,
        "quantiles": CHRONOS2_QUANTILES,
        "time_encoding_scale": context_length,
        "use_arcsinh": True,
        "use_reg_token": True,
    }
    Chronos2Model(config).save_pretrained(directory)
    return Path(directory)


def timesfm25(
    directory: Path, context_length: int = 1024, horizon_length: int = 32, size=None
) -> Path:
    """A 2-layer TimesFM 2.5 (google/timesfm-2.5-200m-transformers layout) under `directory`."""
    from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

    torch.manual_seed(13)
    dims = dict(
        num_hidden_layers=2, hidden_size=32, intermediate_size=32, head_dim=8,
        num_attention_heads=4, num_key_value_heads=4, output_quantile_len=2 * horizon_length,
    )
    dims.update(size or {})
    config = TimesFm2_5Config(
        patch_length=32, context_length=context_length, horizon_length=horizon_length,
        **dims, decode_index=5, use_bias=False, activation="swish",
        quantiles=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        max_position_embeddings=context_length,
    )
    TimesFm2_5ModelForPrediction(config).save_pretrained(directory)
    return Path(directory)


def random_series(count: int, seed: int = 3, longest: int = 400) -> list:
    """SeriesInputs of random lengths, levels, trends, periods and noise."""
    from tsfmd.families.base import SeriesInput

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        n = int(rng.integers(32, longest))
        t = np.arange(n)
        values = (rng.normal(0, 100) + rng.normal(0, 0.1) * t
                  + rng.uniform(0.5, 5) * np.sin(t / rng.uniform(3, 30))
                  + rng.uniform(0.1, 2) * rng.standard_normal(n))
        rows.append(SeriesInput(values=values))
    return rows


def error_in_std(got, want, rows) -> np.ndarray:
    """Per series: the largest |got - want| over the horizon in units of its history's std."""
    std = np.array([np.std(r.values, ddof=1) for r in rows])
    per_series = np.abs(np.asarray(got) - np.asarray(want)).max(axis=1) / std
    print(f"error / std over {len(rows)} series: median {np.median(per_series):.4f}, "
          f"worst {per_series.max():.4f}")
    return per_series


def series(n, seed=0, level=20.0):
    """A trending, seasonal, noisy series for family tests."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return level + 0.1 * t + 3 * np.sin(t / 5) + rng.normal(0, 0.5, n)


def forecast_ok(server, route, body):
    """POST a forecast and return its JSON body, failing the test on anything but success."""
    r = server.post(route, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "success"
    return answer


def tdtsfm(directory: Path, config=None, seed: int = 17) -> Path:
    """A tdtsfm checkpoint as TDgpt ships it: `taos.pth`, a torch state dict under
    TaosForPrediction's names, plus config.json with TaosConfig's Taos_* keys (`config`:
    a mapping of those keys; absent ones keep the shipped values). Every tensor is random,
    the norms' weights and biases too, so a wrong mapping of any of them shows."""
    from tsfmd.families.tdtsfm import TaosConfig, taos_shapes

    cfg = TaosConfig.from_dict(config or {})
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in taos_shapes(cfg).items():
        base = 1.0 if key.endswith("norm1.weight") or key.endswith("norm2.weight") \
            or key.endswith("Taos_norm.weight") else 0.0
        state[key] = base + 0.1 * torch.randn(shape, generator=generator)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "taos.pth")
    (directory / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return directory


def timesfm20(
    directory: Path, context_length: int = 256, horizon_length: int = 32, size=None
) -> Path:
    """A 2-layer TimesFM 2.0 (google/timesfm-2.0-500m-pytorch's transformers layout)."""
    from transformers import TimesFmConfig, TimesFmModelForPrediction

    torch.manual_seed(19)
    dims = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=32, head_dim=8,
                num_attention_heads=4)
    dims.update(size or {})
    config = TimesFmConfig(
        patch_length=32, context_length=context_length, horizon_length=horizon_length,
        freq_size=3, quantiles=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        use_positional_embedding=False, **dims,
    )
    model = TimesFmModelForPrediction(config)
    with torch.no_grad():  # the init leaves some parts at 0/1; a test should see them all
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(directory)
    return Path(directory)


def tsfmd_check(directory: Path, models: str):
    """`tsfmd check` (the real command) on a registry of `models` YAML, hub cache in an
    empty state dir: (CompletedProcess, registry path)."""
    import subprocess
    import sys

    path = Path(directory) / "tsfmd.yaml"
    path.write_text("models:\n" + models)
    result = subprocess.run(
        [sys.executable, "-m", "tsfmd", "check", "--config", str(path), "--state-dir",
         str(Path(directory) / "state")], capture_output=True, text=True, timeout=120,
    )
    return result, path
