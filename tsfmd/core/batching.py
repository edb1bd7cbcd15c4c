"""Dynamic batching: concurrent requests for one model share one forward pass.

Each batched model has a bounded queue and one inference worker thread. The worker takes
the oldest waiting request, waits until a batch is full or the oldest has waited
`max_wait_ms` (no wait while requests come one at a time), and runs them as ONE
`runner.forecast(series, longest horizon)` call (tsfmd/runners: the family in this process,
under torch.inference_mode, or one round trip to its worker process). Every
caller gets its own batch-of-1 `Forecast`, cut to its horizon. One worker per model means
one forward pass at a time per model: on a small CPU concurrent requests queue instead of
fighting over the cores.

A batch is full at `max_batch` requests or at `max_points`, the work one pass should hold:
each request counts its context plus its horizon, and the budget is the registry's
`batching.max_batch_points` or else the family's own measure for its device
(`Capabilities.batch_points`). On a CPU a pass of a few hundred points already keeps the
cores busy, so gathering more only adds latency and cache misses (Time-MoE 50M at
512x96: 0.16 s per forecast alone, 0.24 s in a batch of 8), while short requests still
gather by the dozen (64x8: 42 ms alone, 25 ms in a batch of 4). Requests are taken in
arrival order; a request bigger than the budget runs alone.

Overload is answered, never absorbed:
  * over the model's admission limit (tsfmd/core/admission.py) or queue full
                                 -> 503 with Retry-After, at once;
  * still queued at its deadline -> 503 with Retry-After (it never ran; the model is busy);
  * its batch still running then -> 504 (the forecast itself is slower than `timeout_s`).
A request's deadline is `timeout_s` after it ARRIVED (waitress read its first bytes), not
after a thread picked it up. A request whose deadline passed, or whose client hung up, is
dropped before its batch runs.
Under waitress a hang-up is visible only while the channel stays readable, which the
daemon turns on with `channel_request_lookahead`; a client that vanishes while its batch
runs still costs its slot in that batch (a forward pass cannot drop a row half-way).

If a batch raises, its members are retried one by one, so one bad series fails only its
own request; when the model itself is gone (its worker died: Unavailable, or was killed for
missing the deadline: DeadlineExceeded) the whole batch gets that answer at once. A family
declares `Capabilities.horizon_block` (read through
`caps.batch_group(horizon)`): requests whose horizons fall in different groups never share a
forward pass (for models whose first h steps depend on the total horizon asked for, e.g. a
decoder that picks its output head by the steps left).

The worker beats a heartbeat at least every second; `liveness_problem()` says when the
worker died, stopped beating, or runs one batch far longer than any deadline (wedged), so
the systemd watchdog stops pinging (tsfmd/daemon/liveness.py).
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

import numpy as np

from tsfmd.families.base import Forecast, SeriesInput
from tsfmd.runners.inprocess import as_runner
from tsfmd.core.errors import ClientGone, DeadlineExceeded, Overloaded, ServeError, Unavailable

log = logging.getLogger("tsfmd.batching")

#: how often a waiting caller looks whether its client hung up
_DISCONNECT_POLL_S = 0.25
#: smoothing of the measured time per forecast that Retry-After is estimated from
_EWMA = 0.2
#: the longest an idle worker sleeps between heartbeats
HEARTBEAT_S = 1.0


def wedged_after(timeout_s: float) -> float:
    """A forward pass running this long is stuck, not slow: far past every deadline."""
    return max(120.0, 10.0 * timeout_s)


def start_of(arrived: Optional[float], now: float) -> float:
    """When a request's deadline starts: its arrival (a time.monotonic() stamp), else now."""
    return arrived if arrived is not None and arrived <= now else now


def running_too_long(key: str, since: Optional[float], timeout_s: float,
                     now: float) -> Optional[str]:
    if since is not None and now - since > wedged_after(timeout_s):
        return (f"model {key}: one forward pass has run for {now - since:.0f}s "
                f"(batching.timeout_s {timeout_s:g})")
    return None


@dataclass(eq=False)
class Job:
    """One caller's request while it waits for, or rides in, a batch."""

    series: SeriesInput
    horizon: int
    enqueued: float
    deadline: float
    arrived: float
    disconnected: Optional[Callable[[], bool]] = None
    work: int = 0  # points it brings to a pass: context + horizon
    state: str = "queued"  # queued -> running -> done, or queued -> done (dropped)
    result: Optional[Forecast] = None
    error: Optional[BaseException] = None
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, result: Optional[Forecast] = None, error: Optional[BaseException] = None):
        """Hand over the answer; the first answer wins (call under the executor's lock)."""
        if self.done.is_set():
            return
        self.result, self.error, self.state = result, error, "done"
        self.done.set()

    def client_gone(self) -> bool:
        try:
            return bool(self.disconnected and self.disconnected())
        except Exception:  # a broken probe must not break serving
            return False


class Stats:
    """Counters for /v1/models and /metrics; written by the worker and callers under the
    queue lock."""

    def __init__(self):
        self.forecasts = 0
        self.batches = 0
        self.largest_batch = 0
        self.batch_sizes: Dict[int, int] = {}  # requests per batch -> batches (/metrics)
        self.rejected_full = 0
        self.timed_out = 0
        self.client_gone = 0
        self.dropped = 0  # expired or hung up before their batch ran: no compute spent
        self.failed_batches = 0
        self.seconds_per_forecast = 0.0  # smoothed, for Retry-After

    def record_batch(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.forecasts += size
        self.largest_batch = max(self.largest_batch, size)
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
        per = seconds / max(1, size)
        old = self.seconds_per_forecast
        self.seconds_per_forecast = per if old == 0.0 else (1 - _EWMA) * old + _EWMA * per

    def retry_after(self, backlog: int) -> int:
        """Seconds until `backlog` forecasts are likely done, from the measured pace (>= 1)."""
        return max(1, math.ceil(backlog * self.seconds_per_forecast))

    def queue_full(self, key: str, waiting: int, queue_size: int, backlog: int) -> Overloaded:
        """Count a rejection and return the Overloaded error that says so."""
        self.rejected_full += 1
        return Overloaded(
            f"model {key} is busy: {waiting} requests already wait "
            f"(batching.queue_size {queue_size}); retry later",
            self.retry_after(backlog),
        )

    def as_dict(self) -> dict:
        return {
            "forecasts": self.forecasts,
            "batches": self.batches,
            "mean_batch": round(self.forecasts / self.batches, 2) if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "rejected_queue_full": self.rejected_full,
            "timed_out": self.timed_out,
            "client_gone": self.client_gone,
            "dropped_before_run": self.dropped,
            "failed_batches": self.failed_batches,
        }


def cut(forecast: Forecast, row: int, horizon: int) -> Forecast:
    """Row `row` of a batched forecast as a batch of 1, cut to `horizon` steps."""
    point = np.array(forecast.point[row:row + 1, :horizon])
    quantiles = None
    if forecast.quantiles is not None:
        quantiles = np.array(forecast.quantiles[row:row + 1, :horizon])
    return Forecast(point=point, quantiles=quantiles)


class BatchingExecutor:
    """A bounded queue and one worker thread that runs waiting requests as one batch."""

    def __init__(self, model, settings, key: str):
        self.runner = as_runner(model)  # a Runner, or a family run in this process
        self.key = key
        self.max_batch = int(settings.max_batch)
        self.max_wait_s = float(settings.max_wait_ms) / 1000.0
        self.queue_size = int(settings.queue_size)
        self.timeout_s = float(settings.timeout_s)
        self.stats = Stats()
        self._queue: Deque[Job] = collections.deque()
        self._running = 0
        self._cond = threading.Condition()
        self._closing = False
        self._beat = time.monotonic()  # the worker's heartbeat
        self._batch_started: Optional[float] = None
        self._expect_company = False  # were requests concurrent lately? then gather
        caps = self.runner.capabilities()
        self._group = caps.batch_group  # declared: Capabilities.horizon_block
        self.max_points = settings.max_batch_points or caps.batch_points  # None: no bound
        self._points_from = "registry" if settings.max_batch_points else "family"
        self._queued_work = 0  # sum of the queue's Job.work
        self._worker = threading.Thread(target=self._work, name=f"batch-{key}", daemon=True)
        self._worker.start()

    # -- the caller's side ---------------------------------------------------------------

    @property
    def running_slots(self) -> int:
        """Requests that run at once (one batch)."""
        return self.max_batch

    def submit(self, request, disconnected: Optional[Callable[[], bool]] = None,
               arrived: Optional[float] = None) -> Forecast:
        """Queue `request`, wait for its batch, return its own Forecast (batch of 1).
        `arrived` (time.monotonic()) is when the request reached tsfmd: its deadline starts
        there."""
        now = time.monotonic()
        start = start_of(arrived, now)
        job = Job(request.series, int(request.horizon), now, start + self.timeout_s, start,
                  disconnected, work=len(request.series.values) + int(request.horizon))
        with self._cond:
            if now >= job.deadline:  # it waited its whole deadline before reaching us
                error = self._late_error(job)
                self._count_dropped(error, before_run=True)
                raise error
            if self._closing:
                raise Unavailable(f"model {self.key} is shutting down", retry_after=5)
            if len(self._queue) >= self.queue_size:
                backlog = len(self._queue) + self._running
                raise self.stats.queue_full(self.key, len(self._queue), self.queue_size, backlog)
            self._queue.append(job)
            self._queued_work += job.work
            self._cond.notify_all()
        self._wait(job)
        if job.error is not None:
            raise job.error
        return job.result

    def _wait(self, job: Job) -> None:
        poll = _DISCONNECT_POLL_S if job.disconnected else None
        while not job.done.is_set():
            left = job.deadline - time.monotonic()
            if left <= 0:
                self._give_up(job, timed_out=True)
                return
            job.done.wait(min(left, poll) if poll else left)
            if not job.done.is_set() and job.client_gone():
                self._give_up(job, timed_out=False)
                return

    def _give_up(self, job: Job, timed_out: bool) -> None:
        """The caller stops waiting: a queued job leaves the queue; a running one finishes
        in its batch and that result is thrown away."""
        with self._cond:
            if job.done.is_set():
                return  # it finished just now: answer normally
            error = self._late_error(job) if timed_out else _gone_error(self.key)
            if job.state == "queued":
                self._queue.remove(job)
                self._queued_work -= job.work
            self._count_dropped(error, job.state == "queued")
            job.finish(error=error)

    def _late_error(self, job: Job) -> ServeError:
        waited = time.monotonic() - job.arrived
        if job.state == "running":
            return DeadlineExceeded(
                f"model {self.key}: the forecast did not finish within batching.timeout_s "
                f"{self.timeout_s:g}s of the request's arrival (waited {waited:.1f}s)",
            )
        return Overloaded(
            f"model {self.key} is overloaded: the request waited {waited:.1f}s since it arrived "
            f"without starting (batching.timeout_s {self.timeout_s:g}); retry later",
            self._retry_after(),
        )

    def _count_dropped(self, error: ServeError, before_run: bool) -> None:
        if isinstance(error, ClientGone):
            self.stats.client_gone += 1
        else:
            self.stats.timed_out += 1
        if before_run:
            self.stats.dropped += 1

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained, from the measured pace (at least 1)."""
        return self.stats.retry_after(len(self._queue) + self._running)

    # -- the worker's side ---------------------------------------------------------------

    def _work(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            try:
                self._batch_started = time.monotonic()
                self._run(jobs)
            except BaseException as exc:  # the worker must outlive any one batch
                log.exception("model %s: batch worker error", self.key)
                with self._cond:
                    for job in jobs:
                        job.finish(error=RuntimeError(f"batch worker error: {exc}"))
            finally:
                with self._cond:
                    self._running = 0
                    self._batch_started = None
                    self._beat = time.monotonic()

    def _next_batch(self) -> Optional[List[Job]]:
        """Block for the next batch; None once closed. May return [] (all were dropped)."""
        with self._cond:
            while not self._queue and not self._closing:
                self._beat = time.monotonic()
                self._cond.wait(HEARTBEAT_S)
            self._beat = time.monotonic()
            if self._closing:
                return None
            # Wait for company until the oldest request has waited max_wait: a request that
            # queued behind a running batch has waited already and goes at once, and a lone
            # caller (the last batch was one request with nobody behind it) does not wait.
            gather_until = self._queue[0].enqueued + self.max_wait_s
            while self._expect_company and not self._full() and not self._closing:
                left = gather_until - time.monotonic()
                if left <= 0 or not self._queue:
                    break
                self._cond.wait(min(left, HEARTBEAT_S))
                self._beat = time.monotonic()
            jobs: List[Job] = []
            now = time.monotonic()
            work = 0
            while self._queue and len(jobs) < self.max_batch:
                if jobs and not self._fits(work + self._queue[0].work):
                    break  # the next in line starts the next pass: arrival order is kept
                job = self._queue.popleft()
                self._queued_work -= job.work
                if now >= job.deadline or job.client_gone():
                    # Its caller is giving up or has gone: spend no compute on it.
                    error = (self._late_error(job) if now >= job.deadline
                             else _gone_error(self.key))
                    self._count_dropped(error, before_run=True)
                    job.finish(error=error)
                    continue
                job.state = "running"
                jobs.append(job)
                work += job.work
            self._expect_company = len(jobs) > 1 or bool(self._queue)
            self._running = len(jobs)
            return jobs

    def _fits(self, work: int) -> bool:
        return self.max_points is None or work <= self.max_points

    def _full(self) -> bool:
        """Enough waits for a whole pass (call under the lock)."""
        return len(self._queue) >= self.max_batch or not self._fits(self._queued_work)

    def _run(self, jobs: List[Job]) -> None:
        groups: Dict[object, List[Job]] = {}
        for job in jobs:
            key = self._group(job.horizon) if self._group else None
            groups.setdefault(key, []).append(job)
        for members in groups.values():
            self._run_group(members)

    def _run_group(self, jobs: List[Job]) -> None:
        horizon = max(j.horizon for j in jobs)
        started = time.monotonic()
        try:
            forecast = self.runner.forecast([j.series for j in jobs], horizon,
                                            max(j.deadline for j in jobs))
            _check_shape(forecast, len(jobs), horizon)
        except Exception as exc:
            if len(jobs) == 1 or isinstance(exc, (Unavailable, DeadlineExceeded)):
                with self._cond:
                    for job in jobs:
                        job.finish(error=exc)
                return
            # One bad series must not fail the others: answer each on its own.
            with self._cond:
                self.stats.failed_batches += 1
            log.warning("model %s: a batch of %d failed (%s: %s); retrying one by one",
                         self.key, len(jobs), type(exc).__name__, exc)
            for job in jobs:
                self._run_group([job])
            return
        seconds = time.monotonic() - started
        answers = [cut(forecast, row, job.horizon) for row, job in enumerate(jobs)]
        with self._cond:
            self.stats.record_batch(len(jobs), seconds)
            for job, answer in zip(jobs, answers):
                job.finish(result=answer)

    # -- lifecycle and reporting ---------------------------------------------------------

    def liveness_problem(self, stale_after: float, now: Optional[float] = None) -> Optional[str]:
        """Why this model's worker is not alive (None when it is): it died, it has not beaten
        for `stale_after` seconds while idle, or one batch runs far past every deadline."""
        now = time.monotonic() if now is None else now
        if self._closing:
            return None  # closed on purpose (reload, stop)
        if not self._worker.is_alive():
            return f"model {self.key}: its batch worker thread has died"
        started = self._batch_started
        if started is None and now - self._beat > stale_after:
            return f"model {self.key}: its batch worker has not run for {now - self._beat:.0f}s"
        return running_too_long(self.key, started, self.timeout_s, now)

    def describe(self) -> dict:
        with self._cond:
            info = {
                "enabled": True,
                "max_batch": self.max_batch,
                "max_batch_points": self.max_points,
                "max_batch_points_from": self._points_from if self.max_points else None,
                "max_wait_ms": self.max_wait_s * 1000.0,
                "queue_size": self.queue_size,
                "timeout_s": self.timeout_s,
                "queue_depth": len(self._queue),
                "running": self._running,
            }
            info.update(self.stats.as_dict())
        return info

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking requests; the batch in flight finishes, queued ones get a 503."""
        with self._cond:
            self._closing = True
            for job in self._queue:
                job.finish(error=Unavailable(
                    f"model {self.key} was unloaded before this request ran; retry",
                    retry_after=1,
                ))
            self._queue.clear()
            self._queued_work = 0
            self._cond.notify_all()
        if self._worker is not threading.current_thread():
            self._worker.join(timeout)


def _gone_error(key: str) -> ClientGone:
    return ClientGone(f"model {key}: the client closed the connection; request dropped")


def _check_shape(forecast: Forecast, rows: int, horizon: int) -> None:
    """A family bug must become a clear error, not a wrong row handed to another caller."""
    point = np.asarray(forecast.point)
    if point.ndim != 2 or point.shape[0] != rows or point.shape[1] < horizon:
        raise RuntimeError(
            f"the family returned point forecasts of shape {point.shape}, expected ({rows}, "
            f"{horizon})"
        )
    if forecast.quantiles is not None:
        q = np.asarray(forecast.quantiles)
        if q.ndim != 3 or q.shape[0] != rows or q.shape[1] < horizon:
            raise RuntimeError(
                f"the family returned quantiles of shape {q.shape}, expected ({rows}, "
                f"{horizon}, Q)"
            )
