"""Properties every family must have, checked the way the daemon serves: a series' answer
never depends on its batch-mates, and scaling and shifting a series scales and shifts its
forecast.

Each family is a real model (fracast's bundled weights; tiny random-weight Chronos-Bolt,
Chronos-2, TimesFM 2.5 and Time-MoE checkpoints from tests/tinymodels.py and
write_random_checkpoint). Requests go the daemon's way: protocol.parse_request (which
scales the series in float64 and cuts the context for the request's own horizon), the
BatchingExecutor the daemon uses, and protocol.success_reply. To make requests meet in one
batch without relying on timing, the family is wrapped so that a first "gate" forecast
holds the worker until all the others wait in the queue; the worker then takes them all
at once and groups them as the daemon would (Capabilities.horizon_block).

Time-MoE's tiny model here has 256 positions, so series of up to 400 points with horizons
up to 128 sit at its position limit: a long series asking 64 steps used to be cut by its
batch-mate's 128 and got a different forecast.
"""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

import tinymodels
from conftest import wait_until
from tsfmd.core.batching import BatchingExecutor
from tsfmd.families import get_family
from tsfmd.families.base import Family, Forecast, LoadSpec, SeriesInput
from tsfmd.families.timemoe.weights import write_random_checkpoint
from tsfmd.api.tdgpt import parse_request, success_reply
from tsfmd.core.registry import BatchingSettings

TIMEMOE_TINY = Path(__file__).parent / "fixtures" / "timemoe" / "tiny"
#: horizons drawn per family: a few values so that random batches hold equal ones too
HORIZONS = {
    "fracast": (1, 12, 48, 60),
    "chronos-bolt": (3, 16, 20, 40),
    "chronos-2": (5, 16, 17, 40),
    "timesfm-2.5": (7, 32, 40, 70),
    "time-moe": (8, 64, 64, 96, 128),
}
#: histories drawn up to this long (beyond each tiny model's context or position limit)
LONGEST = {"fracast": 300, "chronos-bolt": 600, "chronos-2": 600, "timesfm-2.5": 300,
           "time-moe": 400}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("independence")
    raw = json.loads((TIMEMOE_TINY / "config.json").read_text())
    raw["max_position_embeddings"] = 256
    sources = {
        "fracast": "bundled",
        "chronos-bolt": tinymodels.chronos_bolt(root / "bolt", context_length=256),
        "chronos-2": tinymodels.chronos2(root / "c2", context_length=256),
        "timesfm-2.5": tinymodels.timesfm25(root / "tfm", context_length=256),
        "time-moe": write_random_checkpoint(root / "tm", raw, seed=3),
    }
    return {name: get_family(name).load(LoadSpec(key=name, source=str(source)))
            for name, source in sources.items()}


class Gated(Family):
    """The family, with a first forecast that waits until `release` (the gate)."""

    def __init__(self, inner: Family):
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()
        self.name = inner.name

    @classmethod
    def load(cls, spec):  # pragma: no cover - built around a loaded family
        raise NotImplementedError

    def capabilities(self):
        return self.inner.capabilities()

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(60)
        return self.inner.forecast(batch, horizon)


def body(values, horizon: int) -> dict:
    return {"input": np.asarray(values, dtype=np.float64).tolist(), "next_len": horizon,
            "conf_interval": 0.9}


def served(family: Family, bodies, together: bool):
    """The replies for `bodies`: all in one queue (together) or each alone."""
    caps = family.capabilities()
    requests_ = [parse_request(b, caps, family.name) for b in bodies]
    gated = Gated(family)
    settings = BatchingSettings(max_batch=len(requests_), max_wait_ms=1)
    executor = BatchingExecutor(gated, settings, family.name)
    try:
        with ThreadPoolExecutor(len(requests_) + 1) as pool:
            gate = pool.submit(executor.submit, requests_[0])
            assert gated.entered.wait(60)
            if together:
                answers = [pool.submit(executor.submit, r) for r in requests_]
                wait_until(lambda: executor.describe()["queue_depth"] == len(requests_), 60,
                           interval=0.01)
                gated.release.set()
                forecasts = [a.result(120) for a in answers]
            else:
                gated.release.set()
                forecasts = [executor.submit(r) for r in requests_]
            gate.result(120)
        largest = executor.describe()["largest_batch"]
    finally:
        executor.close()
    replies = [success_reply(r, f, 0, caps) for r, f in zip(requests_, forecasts)]
    return replies, largest


def random_bodies(name: str, rng: np.random.Generator, count: int):
    bodies = []
    for _ in range(count):
        n = int(rng.integers(30, LONGEST[name] + 1))
        level = float(rng.choice([-50.0, 0.0, 20.0, 1e4]))
        values = tinymodels.series(n, seed=int(rng.integers(1 << 30)), level=level)
        bodies.append(body(values, int(rng.choice(HORIZONS[name]))))
    return bodies


def assert_same(got: dict, want: dict, scale: float, what: str) -> None:
    for key in ("output", "lower", "upper"):
        if key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5 * scale,
                                       err_msg=f"{what}: {key}")


@pytest.mark.parametrize("name", sorted(HORIZONS))
def test_a_forecast_alone_equals_the_same_forecast_among_random_batch_mates(models, name):
    family = models[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    for trial in range(2):
        bodies = random_bodies(name, rng, count=8)
        if name == "time-moe":  # at the position limit, horizons sharing 64-step chunks
            long_ = tinymodels.series(380, seed=trial)
            bodies[:3] = [body(long_, 64), body(long_[:-20], 128), body(long_[-200:], 64)]
        alone, _ = served(family, bodies, together=False)
        together, largest = served(family, bodies, together=True)
        assert largest >= 2, "no batch formed: the test would prove nothing"
        for i, (b, one, many) in enumerate(zip(bodies, alone, together)):
            scale = float(np.std(b["input"])) + 1.0
            assert_same(many, one, scale, f"{name} trial {trial} series {i} "
                        f"(length {len(b['input'])}, horizon {b['next_len']})")


@pytest.mark.parametrize("name", sorted(HORIZONS))
def test_scaling_and_shifting_a_series_scales_and_shifts_its_forecast(models, name):
    """f(a*x + b) = a*f(x) + b within 1e-3 of a*std(x).

    With a = 1e-12 and b = 1e9, float64 itself cannot hold x's shape: a*x is ~1e-12 while
    the spacing of float64 numbers near 1e9 is ~1.2e-7, so a*x + b is exactly the constant
    1e9 and so is its forecast, while a*f(x) + b rounds to 1e9 within a spacing or two.
    The tolerance is therefore 1e-3*a*std(x) plus two spacings of float64 at b (which is
    nothing at b = 0 and negligible beside 1e-3*a*std(x) for a = 1e6)."""
    family = models[name]
    x = tinymodels.series(150, seed=5)
    horizon = HORIZONS[name][1]
    cases = [(a, b) for a in (1e-12, 1e6) for b in (0.0, 1e9)]
    bodies = [body(x, horizon)] + [body(a * x + b, horizon) for a, b in cases]
    replies, _ = served(family, bodies, together=False)
    plain = replies[0]
    for (a, b), got in zip(cases, replies[1:]):
        tolerance = 1e-3 * a * float(np.std(x)) + 2 * float(np.spacing(b))
        for key in ("output", "lower", "upper"):
            if key in plain:
                want = a * np.array(plain[key]) + b
                np.testing.assert_allclose(got[key], want, rtol=0, atol=tolerance,
                                           err_msg=f"{name} a={a} b={b} {key}")
