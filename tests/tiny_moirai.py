"""Tiny random Moirai checkpoints built with uni2ts' own classes (run in the moirai env).

    <moirai env python> tests/tiny_moirai.py DIR

writes DIR/moirai-1.1, DIR/moirai-moe and DIR/moirai-2.0, each saved with the library's own
`save_pretrained` (huggingface_hub's PyTorchModelHubMixin: config.json + model.safetensors),
the layout of Salesforce's published checkpoints. The weights are random from a fixed seed:
their forecasts mean nothing, but every code path (the mixture distribution and its
sampling, the MoE experts, Moirai 2.0's quantile heads and autoregressive rollout) runs as
with real weights. Needs uni2ts and torch, so it never runs in tsfmd's own venv.
"""
from __future__ import annotations

import sys
from pathlib import Path

#: what each tiny model is: small enough to build and run in seconds on one core
D_MODEL = 128  # uni2ts gives d_model // 64 attention heads: 2 here
NUM_LAYERS = 2
PATCH_SIZES = (8, 16, 32)


def mixture():
    """The distribution head of the published Moirai 1.x and Moirai-MoE checkpoints."""
    from uni2ts.distribution import (
        LogNormalOutput, MixtureOutput, NegativeBinomialOutput, NormalFixedScaleOutput,
        StudentTOutput,
    )

    return MixtureOutput(components=[
        StudentTOutput(), NormalFixedScaleOutput(), NegativeBinomialOutput(), LogNormalOutput(),
    ])


def build_all(root: Path) -> dict:
    import torch
    from uni2ts.model.moirai import MoiraiModule
    from uni2ts.model.moirai2 import Moirai2Module
    from uni2ts.model.moirai_moe import MoiraiMoEModule

    common = dict(d_model=D_MODEL, num_layers=NUM_LAYERS, max_seq_len=512,
                  attn_dropout_p=0.0, dropout_p=0.0, scaling=True)
    builders = {
        "moirai-1.1": lambda: MoiraiModule(
            distr_output=mixture(), patch_sizes=PATCH_SIZES, **common),
        "moirai-moe": lambda: MoiraiMoEModule(
            distr_output=mixture(), d_ff=256, patch_sizes=(16,), **common),
        # 2 predicted tokens of 8 steps: horizons past 16 take Moirai 2.0's rollout path
        "moirai-2.0": lambda: Moirai2Module(
            d_ff=256, patch_size=8, num_predict_token=2,
            quantile_levels=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), **common),
    }
    written = {}
    for seed, (name, build) in enumerate(sorted(builders.items())):
        torch.manual_seed(1000 + seed)
        module = build()
        _shake(module, torch)
        module.save_pretrained(root / name)
        written[name] = str(root / name)
    return written


def _shake(module, torch) -> None:
    """Random init leaves some layers (norms, zero biases) at constants; give every weight a
    spread so that a wrong wiring shows in the numbers. Moirai-MoE's expert centroids are a
    saved buffer that uni2ts allocates with torch.empty (training fills it): left as it is,
    the checkpoint would hold whatever memory held, NaN at times."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        for name, buffer in module.named_buffers():
            if name.endswith("centroid"):
                buffer.normal_()


if __name__ == "__main__":
    import json

    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    print(json.dumps(build_all(target)))
