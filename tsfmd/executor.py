"""How a model's forecasts are run: batched by a worker thread, or one at a time.

`make_executor` picks from the model's registry `batching:` settings. Both executors
offer `submit(request, disconnected=None) -> Forecast` (a batch of 1), `describe()` for
/v1/models, and `close()`; both run one forward pass at a time per model, so concurrent
requests queue instead of fighting over the cores, and both answer overload the same way:
a full queue or a request that waited `timeout_s` without starting gets a 503 with
Retry-After. The batching executor lives in `tsfmd/batching.py`.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import torch

from tsfmd.batching import BatchingExecutor, ClientGone, Stats
from tsfmd.families.base import Family, Forecast
from tsfmd.protocol import ForecastRequest, RequestError

#: how often a caller waiting for the serial lock looks whether its client hung up
_POLL_S = 0.25


class SerialExecutor:
    """Runs requests one after another on the calling threads (`batching.enabled: false`)."""

    def __init__(self, model: Family, key: str, settings=None):
        self.model = model
        self.key = key
        self.queue_size = int(getattr(settings, "queue_size", 1 << 30))
        self.timeout_s = float(getattr(settings, "timeout_s", 3600.0))
        self.stats = Stats()
        self._lock = threading.Lock()  # the model: one forward pass at a time
        self._count = threading.Lock()  # the counters below
        self._waiting = 0
        self._running = 0

    def submit(
        self, request: ForecastRequest, disconnected: Optional[Callable[[], bool]] = None
    ) -> Forecast:
        with self._count:
            if self._waiting >= self.queue_size:
                self.stats.rejected_full += 1
                raise RequestError(
                    503,
                    f"model {self.key} is busy: {self._waiting} requests already wait "
                    f"(batching.queue_size {self.queue_size}); retry later",
                    {"Retry-After": self._retry_after()},
                )
            self._waiting += 1
        started = time.monotonic()
        try:
            self._acquire(started, disconnected)
        finally:
            with self._count:
                self._waiting -= 1
        try:
            with self._count:
                self._running = 1
            began = time.monotonic()
            with torch.inference_mode():
                forecast = self.model.forecast([request.series], request.horizon)
            with self._count:
                self.stats.record_batch(1, time.monotonic() - began)
            return forecast
        finally:
            with self._count:
                self._running = 0
            self._lock.release()

    def _acquire(self, started: float, disconnected) -> None:
        """Take the model lock, or raise 503 after timeout_s / ClientGone on a hang-up."""
        while True:
            left = started + self.timeout_s - time.monotonic()
            if left <= 0:
                with self._count:
                    self.stats.timed_out += 1
                    self.stats.dropped += 1
                raise RequestError(
                    503,
                    f"model {self.key} is overloaded: the request waited {self.timeout_s:g}s "
                    f"without starting (batching.timeout_s); retry later",
                    {"Retry-After": self._retry_after()},
                )
            if self._lock.acquire(timeout=min(left, _POLL_S) if disconnected else left):
                return
            if disconnected is not None and _gone(disconnected):
                with self._count:
                    self.stats.client_gone += 1
                    self.stats.dropped += 1
                raise ClientGone(self.key)

    def _retry_after(self) -> str:
        backlog = self._waiting + self._running
        return str(max(1, round(backlog * self.stats.seconds_per_forecast + 0.5)))

    def describe(self) -> dict:
        with self._count:
            info = {
                "enabled": False,
                "queue_size": self.queue_size,
                "timeout_s": self.timeout_s,
                "queue_depth": self._waiting,
                "running": self._running,
            }
            info.update(self.stats.as_dict())
        return info

    def close(self) -> None:
        pass


def _gone(disconnected: Callable[[], bool]) -> bool:
    try:
        return bool(disconnected())
    except Exception:  # a broken probe must not break serving
        return False


def make_executor(model: Family, settings, key: str):
    """The executor for one model: batched unless its registry entry turns batching off."""
    if settings is not None and settings.enabled:
        return BatchingExecutor(model, settings, key)
    return SerialExecutor(model, key, settings)
