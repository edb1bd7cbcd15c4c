"""How a model's forecasts are run: batched by a worker thread, or one at a time.

Either way the forward pass runs on a thread the model owns (the batch worker, or the
serial executor's ModelThread: tsfmd/core/model_thread.py), never on a request thread.

`make_executor` picks from the model's registry `batching:` settings. Both executors
offer `submit(request, disconnected=None) -> Forecast` (a batch of 1), `describe()` for
/v1/models, and `close()`; both run one forward pass at a time per model, so concurrent
requests queue instead of fighting over the cores, and both answer overload the same way:
a full queue or a request that waited `timeout_s` since it arrived without starting gets a
503 with Retry-After. `running_slots` (requests that run at once) and `queue_size` are what
tsfmd/core/admission.py bounds a model's request threads by, and `liveness_problem()` is what
the systemd watchdog asks. The batching executor lives in `tsfmd/core/batching.py`.
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
import weakref
from typing import Callable, Deque, Optional

from tsfmd.core.batching import BatchingExecutor, Stats, running_too_long, start_of
from tsfmd.core.errors import ClientGone, Overloaded
from tsfmd.core.model_thread import ModelThread
from tsfmd.families.base import Forecast
from tsfmd.core.request import ForecastRequest
from tsfmd.runners.inprocess import as_runner

#: how often a caller waiting for the serial lock looks whether its client hung up
_POLL_S = 0.25


class SerialExecutor:
    """Runs requests one after another (`batching.enabled: false`), each on the model's
    own thread (`run_on_model`), while the request's thread waits.

    Waiters are served first come, first served: a plain lock lets a thread that just
    arrived overtake ones that waited long, which shows as seconds of p99 latency.
    """

    def __init__(self, model, key: str, settings=None):
        self.runner = as_runner(model)  # a Runner, or a family run in this process
        self.key = key
        self.queue_size = int(getattr(settings, "queue_size", 1 << 30))
        self.timeout_s = float(getattr(settings, "timeout_s", 3600.0))
        self.stats = Stats()
        self._lock = threading.Lock()  # guards the fields below
        self._busy = False  # a forecast runs (or the model was just handed to a waiter)
        self._waiters: Deque[threading.Event] = collections.deque()
        self._forecast_started: Optional[float] = None
        self._thread = ModelThread(key)  # started by the first forecast
        # imputation's gates are dropped, not closed, with their model: end the thread then
        weakref.finalize(self, self._thread.close)

    #: one forecast at a time
    running_slots = 1

    def submit(
        self, request: ForecastRequest, disconnected: Optional[Callable[[], bool]] = None,
        arrived: Optional[float] = None,
    ) -> Forecast:
        """Run `request` when the model is free; its deadline starts at `arrived`
        (time.monotonic() when it reached tsfmd), else now."""
        now = time.monotonic()
        deadline = start_of(arrived, now) + self.timeout_s
        self._acquire(deadline, disconnected)
        try:
            began = self._forecast_started = time.monotonic()
            forecast = self._thread.run(self.runner.forecast, [request.series],
                                        request.horizon, deadline)
            with self._lock:
                self.stats.record_batch(1, time.monotonic() - began)
            return forecast
        finally:
            self._forecast_started = None
            self._release()

    def run_on_model(self, fn, *args):
        """fn(*args) on the model's own thread: for work done while `holding` the model."""
        return self._thread.run(fn, *args)

    @contextlib.contextmanager
    def holding(self, deadline: float, disconnected=None):
        """Own the model until the block ends (first come, first served, as `submit`): for
        work that is not a forecast, such as an imputation. Raises as `submit` does."""
        self._acquire(deadline, disconnected)
        try:
            yield
        finally:
            self._release()

    def _acquire(self, deadline: float, disconnected) -> None:
        """Own the model, or raise Overloaded (queue full, waited timeout_s) / ClientGone."""
        ticket = threading.Event()
        with self._lock:
            if deadline <= time.monotonic():  # it waited its whole deadline before reaching us
                raise self._too_late()
            if not self._busy and not self._waiters:
                self._busy = True
                return
            if len(self._waiters) >= self.queue_size:
                backlog = len(self._waiters) + int(self._busy)
                raise self.stats.queue_full(self.key, len(self._waiters), self.queue_size, backlog)
            self._waiters.append(ticket)
        while True:
            left = deadline - time.monotonic()
            if left > 0 and ticket.wait(min(left, _POLL_S) if disconnected else left):
                return  # the previous owner handed the model over
            timed_out = left <= 0
            if not timed_out and not (disconnected is not None and _gone(disconnected)):
                continue
            with self._lock:
                if ticket.is_set():
                    return  # handed over just now: run it after all
                self._waiters.remove(ticket)
                if not timed_out:
                    self.stats.dropped += 1
                    self.stats.client_gone += 1
                    raise ClientGone(
                        f"model {self.key}: the client closed the connection; request dropped")
                raise self._too_late()

    def _too_late(self) -> Overloaded:
        """Count a request whose deadline passed before it started (call under the lock)."""
        self.stats.dropped += 1
        self.stats.timed_out += 1
        return Overloaded(
            f"model {self.key} is overloaded: the request waited {self.timeout_s:g}s since it "
            f"arrived without starting (batching.timeout_s); retry later",
            self._retry_after(),
        )

    def _release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # stays busy: the next in line owns it now
            else:
                self._busy = False

    def _retry_after(self) -> int:
        return self.stats.retry_after(len(self._waiters) + int(self._busy))

    def liveness_problem(self, stale_after: float, now: Optional[float] = None) -> Optional[str]:
        """The model's thread died, or one forecast is stuck far past every deadline."""
        now = time.monotonic() if now is None else now
        if self._thread.dead():
            return f"model {self.key}: its model thread has died"
        return running_too_long(self.key, self._forecast_started, self.timeout_s, now)

    def describe(self) -> dict:
        with self._lock:
            info = {
                "enabled": False,
                "queue_size": self.queue_size,
                "timeout_s": self.timeout_s,
                "queue_depth": len(self._waiters),
                "running": int(self._busy),
            }
            info.update(self.stats.as_dict())
        return info

    def close(self) -> None:
        """Called once no request holds this executor (tsfmd/core/models.py): the model's
        thread ends."""
        self._thread.close()


def _gone(disconnected: Callable[[], bool]) -> bool:
    try:
        return bool(disconnected())
    except Exception:  # a broken probe must not break serving
        return False


def make_executor(model, settings, key: str):
    """The executor for one model: batched unless its registry entry turns batching off."""
    if settings is not None and settings.enabled:
        return BatchingExecutor(model, settings, key)
    return SerialExecutor(model, key, settings)
