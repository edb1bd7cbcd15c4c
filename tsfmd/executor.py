"""How a model's forecasts are run: one request at a time, under inference mode.

`make_executor` picks the executor for a model from its registry batching settings. The
serial executor holds a lock so concurrent requests never fight over the cores.
"""
from __future__ import annotations

import threading

import torch

from tsfmd.families.base import Family, Forecast
from tsfmd.protocol import ForecastRequest


class SerialExecutor:
    """Runs requests one after another on the calling thread."""

    def __init__(self, model: Family, key: str):
        self.model = model
        self.key = key
        self._lock = threading.Lock()

    def submit(self, request: ForecastRequest) -> Forecast:
        with self._lock, torch.inference_mode():
            return self.model.forecast([request.series], request.horizon)

    def describe(self) -> dict:
        return {"enabled": False}

    def close(self) -> None:
        pass


def make_executor(model: Family, settings, key: str):
    return SerialExecutor(model, key)
