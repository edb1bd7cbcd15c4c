"""The in-process runner: the family object itself, in the daemon's own process.

What the executors call for every model: a Runner looks like a Family (capabilities,
forecast, impute, warm_up, close) plus `state` and a `deadline` per call, which only the
process runner can enforce. Forward passes run under torch.inference_mode when the family
uses torch (it imported it); this is the only place outside families/ that asks for torch,
and the worker process does the same on its side.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import sys
from typing import List, Optional, Sequence

import numpy as np

from tsfmd.core.errors import Unsupported
from tsfmd.core.heap import release_free_memory
from tsfmd.families.base import Capabilities, Family, Forecast, LoadSpec, SeriesInput

#: runner states; a process runner also passes through RESTARTING and may end FAILED
LOADING, READY, RESTARTING, FAILED = "loading", "ready", "restarting", "failed"


def resolve_device(device: str) -> str:
    """"auto" is cuda when this interpreter's torch sees a GPU, else cpu."""
    if device != "auto":
        return device
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def no_grad():
    """torch.inference_mode() when torch is loaded (a family imported it), else nothing."""
    torch = sys.modules.get("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()


def load_family(family_cls, spec: LoadSpec) -> Family:
    """Load and warm up one model in this process (the daemon's or a worker's), then give
    what the load freed back to the OS (tsfmd/core/heap.py)."""
    model = family_cls.load(dataclasses.replace(spec, device=resolve_device(spec.device)))
    with no_grad():
        model.warm_up()
    release_free_memory(f"model {spec.key} loaded")
    return model


def run_forecast(model: Family, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
    with no_grad():
        return model.forecast(batch, horizon)


def run_impute(model: Family, batch: Sequence[np.ndarray]) -> List[np.ndarray]:
    impute = getattr(model, "impute", None)
    if impute is None:
        raise Unsupported(f"family {model.name or type(model).__name__} does not impute")
    with no_grad():
        return [np.asarray(a) for a in impute(batch)]


class InProcessRunner:
    """A loaded family in this process, behind the Runner interface."""

    is_runner = True
    kind = "inprocess"
    state = READY
    reason = ""
    pid: Optional[int] = None

    def __init__(self, family: Family):
        self.family = family

    def capabilities(self) -> Capabilities:
        return self.family.capabilities()

    def forecast(self, batch: Sequence[SeriesInput], horizon: int,
                 deadline: Optional[float] = None) -> Forecast:
        """`deadline` cannot be enforced in-process: a forward pass cannot be interrupted."""
        return run_forecast(self.family, batch, horizon)

    def impute(self, batch: Sequence[np.ndarray],
               deadline: Optional[float] = None) -> List[np.ndarray]:
        return run_impute(self.family, batch)

    def warm_up(self) -> None:
        with no_grad():
            self.family.warm_up()

    def retry_after(self) -> int:
        return 1

    def describe(self) -> dict:
        return {"isolation": self.kind}

    def close(self) -> None:
        self.family.close()


def as_runner(model) -> "InProcessRunner":
    """A Runner for `model`: itself when it is one, else the family wrapped in-process (the
    executors take either, so a test can hand them a family object)."""
    return model if getattr(model, "is_runner", False) else InProcessRunner(model)
