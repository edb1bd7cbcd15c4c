"""Time-MoE parity: tsfmd's engine against outputs of the original implementation.

tests/fixtures/timemoe/ (copied from the shared fixtures) holds a tiny random-weight
checkpoint in the official layout and what the original code (Time-MoE d3524fd,
transformers 4.40.1, float32, eager attention) gave for fixed inputs; manifest.json says
what each array is. Every output array must match within 1e-4 of its own scale.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from tsfmd.families.base import Capabilities, SeriesInput
from tsfmd.families.timemoe.family import TimeMoeFamily, normalise
from tsfmd.families.timemoe.generate import generate, hidden_states
from tsfmd.families.timemoe.weights import load_model

HERE = FIXTURES / "timemoe"
MANIFEST = json.loads((HERE / "manifest.json").read_text())
REFERENCE = dict(np.load(HERE / "reference.npz"))
INPUTS = {"batch_input", "short_input"}
TOLERANCE = 1e-4


def close(got, want, name):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, reference {want.shape}"
    scale = max(float(np.abs(want).max()), 1e-12)
    error = float(np.abs(got - want).max()) / scale
    assert error <= TOLERANCE, f"{name}: max error {error:.2e} of its scale (limit {TOLERANCE})"


@pytest.fixture(scope="module")
def model():
    return load_model(HERE / "tiny", dtype=torch.float32)


@pytest.fixture(scope="module")
def family(model):
    return TimeMoeFamily(model, Capabilities(context_limit=4096, horizon_limit=2048))


def outputs_of(model, family, name):
    """What tsfmd computes for reference array `name` (following the manifest's recipe)."""
    batch, short = REFERENCE["batch_input"], REFERENCE["short_input"]
    first = normalise(batch[0])[0]
    with torch.inference_mode():
        if name == "last_hidden_state":
            return hidden_states(model, [first])[0].numpy()[None]
        match = re.fullmatch(r"head(\d+)_last_position", name)
        if match:
            index = model.config.horizon_lengths.index(int(match.group(1)))
            last = hidden_states(model, [first])[0][-1:]
            return model.head(index, last).numpy()
        match = re.fullmatch(r"(batch|short|batch_normed)_forecast_h(\d+)", name)
        assert match, f"the manifest lists {name}, which this test does not know"
        kind, horizon = match.group(1), int(match.group(2))
        if kind == "batch_normed":
            return generate(model, [normalise(s)[0] for s in batch], horizon).numpy()
        rows = batch if kind == "batch" else short
        return family.forecast([SeriesInput(values=r) for r in rows], horizon).point


OUTPUTS = sorted(set(MANIFEST["arrays"]) - INPUTS)


def test_the_manifest_describes_the_arrays_on_disk():
    assert set(MANIFEST["arrays"]) == set(REFERENCE)
    for name, info in MANIFEST["arrays"].items():
        assert list(REFERENCE[name].shape) == info["shape"], name
    assert len(OUTPUTS) >= 20  # six horizons x three kinds, four heads, hidden states


@pytest.mark.parametrize("name", OUTPUTS)
def test_matches_the_original(model, family, name):
    close(outputs_of(model, family, name), REFERENCE[name], name)


def test_the_tiny_checkpoint_exercises_every_head(model):
    """Horizons 1..200 of the fixture pick each head at least once (else parity is thin)."""
    from tsfmd.families.timemoe.generate import chunk_plan

    used = {c for h in (1, 8, 24, 64, 96, 200) for c in chunk_plan(model.config.horizon_lengths, h)}
    assert set(model.config.horizon_lengths) <= used
