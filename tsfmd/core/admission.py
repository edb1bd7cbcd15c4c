"""Admission: how many forecast requests each model may hold, decided before any of them blocks.

A waiting forecast request holds one of waitress's `server.threads` request threads until its
answer is ready, so a model's queue is only as deep as the threads it may hold. Admission
turns that into a rule, checked the moment a request thread picks a forecast request up and
before its body is parsed; a request over the budget gets 503 with Retry-After at once:

  reserved   R = max(2, threads // 8)   threads never held by forecasts: /healthz, /readyz,
                                        /v1/*, and the quick 503s themselves;
  forecasts  M = threads - R            threads that all models together may hold;
  share      S = max(1, 3 * M // 4)     threads one model may hold, so a slow model leaves at
                                        least a quarter of M to the others;
  limit      L = min(queue_size + max_batch, S)   requests one model holds at once (queued and
                                        running; a model without batching runs 1 at a time).

So `batching.queue_size` is a real bound: the effective queue limit is `L - max_batch`
(reported in /v1/models as `batching.admission.effective_queue_limit`), and a queue_size
above what the threads allow is cut to that. With the default `threads: 32`: R = 4, M = 28,
S = 21; a model with max_batch 4 queues at most 17 requests behind its running batch. More
waiting requests need more threads (they are cheap; each one waits, it does not compute).
"""
from __future__ import annotations

import threading
from typing import Dict, Optional

from tsfmd.core.errors import Overloaded


def reserved_threads(threads: int) -> int:
    """Request threads no forecast may hold (at least one thread is left for forecasts)."""
    return max(0, min(max(2, threads // 8), threads - 1))


def model_share(threads: int) -> int:
    """Request threads one model may hold."""
    return max(1, 3 * (threads - reserved_threads(threads)) // 4)


class Ticket:
    """One admitted request; `release()` when its answer is built (idempotent)."""

    def __init__(self, admission: "Admission", key: str):
        self._admission, self._key, self._held = admission, key, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release(self._key)


class Admission:
    """The daemon-wide budget of request threads that forecast requests may hold.

    `threads=None` (an app without a waitress thread pool behind it) bounds each model by its
    own queue and batch only.
    """

    def __init__(self, threads: Optional[int] = None):
        self.threads = threads
        self.for_models = threads - reserved_threads(threads) if threads else None
        self.share = model_share(threads) if threads else None
        self._held: Dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def limit(self, executor) -> int:
        """Requests the model behind `executor` may hold at once (queued plus running)."""
        own = executor.queue_size + executor.running_slots
        return own if self.share is None else min(own, self.share)

    def enter(self, key: str, executor) -> Ticket:
        """Admit one request for model `key`, or raise Overloaded (503 + Retry-After)."""
        limit = self.limit(executor)
        with self._lock:
            held = self._held.get(key, 0)
            if held >= limit:
                executor.stats.rejected_full += 1
                raise Overloaded(self._model_busy(key, executor, held, limit),
                                 executor.stats.retry_after(held))
            if self.for_models is not None and self._total >= self.for_models:
                executor.stats.rejected_full += 1
                raise Overloaded(
                    f"tsfmd is busy: forecasts hold {self._total} of its {self.threads} request "
                    f"threads, the most they may (server.threads minus "
                    f"{self.threads - self.for_models} kept for health checks); retry later",
                    executor.stats.retry_after(held),
                )
            self._held[key] = held + 1
            self._total += 1
        return Ticket(self, key)

    def _model_busy(self, key: str, executor, held: int, limit: int) -> str:
        parts = f"batching.queue_size {executor.queue_size} + {executor.running_slots} running"
        if self.share is not None and self.share < executor.queue_size + executor.running_slots:
            parts += f", cut to its share {self.share} of server.threads {self.threads}"
        return (f"model {key} is busy: {held} requests already wait or run, its limit is "
                f"{limit} ({parts}); retry later")

    def _release(self, key: str) -> None:
        with self._lock:
            self._held[key] -= 1
            self._total -= 1
            if not self._held[key]:
                del self._held[key]

    def describe(self, key: str, executor) -> dict:
        """The admission part of a model's /v1/models batching info."""
        limit = self.limit(executor)
        with self._lock:
            held = self._held.get(key, 0)
        return {
            "limit": limit,
            "effective_queue_limit": max(0, limit - executor.running_slots),
            "thread_share": self.share,
            "server_threads": self.threads,
            "admitted": held,
        }
