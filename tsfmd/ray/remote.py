"""A model as the ingress sees it: `ModelHandle`'s face over the model's Serve deployment.

tsfmd's Flask app (tsfmd/api/app.py) runs unchanged in the ingress; what it holds in its
`Models` table are `RemoteHandle`s. Each one forwards `submit` to the model's deployment
(`ModelReplica.forecast`, tsfmd/ray/replica.py) and keeps the model's state (loading, ready,
failed), capabilities and /v1/models description from the replicas' `describe` answers,
asked for in the background every second (`refresh`).

Errors come back as plain records, not pickled exceptions (a ServeError's `retry_after`
would not survive pickling): the replica's tsfmd error is raised here again as itself, so a
full queue, a deadline or a bad series answers exactly as under `tsfmd serve`. Ray's own
failures become domain errors with a Retry-After: a replica that died mid-request or is
unreachable -> Unavailable (503), Serve's queue full (BackPressureError) -> Overloaded
(503), no answer within the request's deadline plus `GRACE_S` -> Unavailable (503), the
request cancelled. No request waits longer than that.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Callable, Optional

from tsfmd.core import errors
from tsfmd.core.batching import Stats
from tsfmd.core.models import FAILED, LOADING, ModelHandle
from tsfmd.core.registry import ModelSpec
from tsfmd.core.request import ForecastRequest
from tsfmd.families.base import Forecast

log = logging.getLogger("tsfmd.ray")

#: past its deadline a request's own answer (a 503 or 504 from the replica) should have
#: come; this much longer and the ingress stops waiting and answers 503 itself
GRACE_S = 5.0
#: what a Ray failure tells the client to wait before retrying (Serve replaces a replica
#: in seconds; a Retry-After of 1 lets TDgpt's next SQL forecast try again at once)
RETRY_AFTER_S = 1
#: the longest a request waits for the replicas' state when the ingress has none yet
ASK_NOW_S = 5.0


def error_record(exc: errors.ServeError) -> dict:
    """A tsfmd error as plain values, to cross from a replica to the ingress."""
    return {"error": type(exc).__name__, "message": exc.message,
            "retry_after": exc.retry_after, "field": getattr(exc, "field", None)}


def raise_record(record: dict) -> None:
    """Raise the tsfmd error `error_record` described."""
    kind = getattr(errors, record["error"], None)
    if not (isinstance(kind, type) and issubclass(kind, errors.ServeError)):
        raise errors.ModelFault(record["message"])
    if issubclass(kind, errors.BadInput):
        raise kind(record["message"], record.get("field"))
    raise kind(record["message"], record.get("retry_after"))


class RemoteExecutor:
    """What admission and /v1/models read of an executor, for a model on Serve.

    Serve bounds the requests a model holds (each replica's `max_ongoing_requests`, then
    `max_queued_requests` per caller: BackPressureError beyond, a 503 saying so) and each
    replica's batcher its own queue; the ingress's admission adds no bound of its own.
    """

    #: so admission never refuses first: Serve's limits are the ones that hold
    queue_size = 1 << 20

    def __init__(self, spec: ModelSpec):
        batching = spec.ray.batching
        self.running_slots = batching.max_batch if batching.enabled else 1
        self.stats = Stats()  # the ingress's own refusals; the replicas count the rest
        self.replica_view: dict = {}  # the last replica's executor describe()
        self._settings = batching

    def describe(self) -> dict:
        info = {"enabled": self._settings.enabled, "max_batch": self._settings.max_batch,
                "max_wait_ms": self._settings.max_wait_ms, "queue_size": self._settings.queue_size,
                "timeout_s": self._settings.timeout_s, "queue_depth": 0, "running": 0,
                **self.stats.as_dict()}
        info.update(self.replica_view)
        info["replica_view"] = "one replica's batcher (Serve's metrics have every replica)"
        return info

    def close(self) -> None:
        pass


class RemoteHandle:
    """One registry entry served by a Serve deployment `deployment_handle(key)`."""

    def __init__(self, spec: ModelSpec, state_dir: str,
                 deployment_handle: Callable[[], object]):
        # the replicas batch with the `ray.batching` settings: describe those
        self.spec = replace(spec, batching=spec.ray.batching)
        self.state_dir = state_dir
        self.status, self.reason = LOADING, "no replica has answered yet"
        self.caps = None
        self.load_seconds: Optional[float] = None
        self.executor = RemoteExecutor(spec)
        self._info: dict = {}
        self._deployment_handle = deployment_handle
        self._deployment = None
        self._asking = threading.Lock()
        self._asked_at = 0.0  # when a request last asked the replicas itself

    @property
    def key(self) -> str:
        return self.spec.key

    def _handle(self):
        if self._deployment is None:
            self._deployment = self._deployment_handle()
        return self._deployment

    # -- state, from the replicas ---------------------------------------------------------

    def ask(self):
        """Start a `describe` call (its response; None when the deployment is not there)."""
        try:
            return self._handle().describe.remote()
        except Exception as exc:  # the model's application is not deployed (yet)
            self._not_answering(exc)
            return None

    def take(self, response, timeout_s: float) -> None:
        """Apply a `describe` answer. A replica that does not answer in time changes
        nothing once the model served: forecasts queue ahead of it under load."""
        if response is None:
            return
        try:
            answer = response.result(timeout_s=timeout_s)
        except Exception as exc:
            response.cancel()
            self._not_answering(exc)
            return
        self.status, self.reason = answer["status"], answer["reason"]
        self.caps, self.load_seconds = answer["caps"], answer["load_seconds"]
        self._info = answer["info"]
        self.executor.replica_view = answer["info"].get("batching") or {}

    def _ask_now(self) -> None:
        """A request for a model whose state this ingress does not know yet (it just
        started, the model is new) asks the replicas itself, one request at a time and
        bounded, instead of answering "loading" for a model that serves."""
        began = time.monotonic()
        if not self._asking.acquire(timeout=ASK_NOW_S):
            return
        try:
            # one ask answers every request that waited for it: none asks again
            if self.status == LOADING and self._asked_at < began:
                self.take(self.ask(), ASK_NOW_S)
                self._asked_at = time.monotonic()
        finally:
            self._asking.release()

    def _not_answering(self, exc: BaseException) -> None:
        if self.status == LOADING:
            self.reason = f"no replica has answered yet ({type(exc).__name__})"

    def ready_capabilities(self):
        if self.status == LOADING:
            self._ask_now()
        if self.status == LOADING:
            raise errors.Unavailable(f"model {self.key} is still loading on Ray Serve; retry "
                                     "shortly", retry_after=5)
        if self.status == FAILED:
            raise errors.Unavailable(f"model {self.key} is not available: {self.reason}")
        return self.caps

    def describe(self) -> dict:
        if not self._info:
            local = ModelHandle(self.spec, self.state_dir)  # the shape before any load
            local.status, local.reason = self.status, self.reason
            return local.describe()
        info = dict(self._info, status=self.status)
        if self.status != FAILED:
            info.pop("reason", None)
        info["batching"] = self.executor.describe()
        return info

    # -- forecasts ------------------------------------------------------------------------

    def submit(self, request: ForecastRequest, disconnected=None,
               arrived: Optional[float] = None) -> Forecast:
        """One forecast through Serve; its deadline counts from `arrived` as in tsfmd."""
        waited = time.monotonic() - arrived if arrived is not None else 0.0
        sent_at = time.time() - max(0.0, waited)  # wall clock: the replica may be elsewhere
        budget = max(0.0, self.spec.batching.timeout_s - waited) + GRACE_S
        try:
            response = self._handle().forecast.remote(request, sent_at)
        except Exception as exc:
            raise self._ray_failure(exc) from exc
        try:
            answer = response.result(timeout_s=budget)
        except TimeoutError as exc:
            response.cancel()
            raise errors.Unavailable(
                f"model {self.key}: no answer from its Ray Serve replicas within {budget:.0f}s "
                "(replica stuck, restarting or unreachable); request cancelled, retry",
                RETRY_AFTER_S) from exc
        except Exception as exc:
            raise self._ray_failure(exc) from exc
        if isinstance(answer, dict):
            raise_record(answer)
        return answer

    def _ray_failure(self, exc: BaseException) -> errors.ServeError:
        from ray.serve.exceptions import BackPressureError

        if isinstance(exc, errors.ServeError):
            return exc
        if isinstance(exc, BackPressureError):
            return errors.Overloaded(
                f"model {self.key} is busy: its Ray Serve queue is full (every replica holds "
                "ray.max_ongoing_requests and ray.max_queued_requests more wait); retry later",
                RETRY_AFTER_S)
        log.warning("model %s: Ray failure: %s: %s", self.key, type(exc).__name__, exc)
        return errors.Unavailable(
            f"model {self.key}: its Ray Serve replica failed ({type(exc).__name__}: "
            f"{_first_line(exc)}); Serve replaces failed replicas, retry", RETRY_AFTER_S)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "no detail"


def refresh_all(handles, timeout_s: float = 2.0) -> None:
    """Ask every model's replicas for their state at once, then apply the answers."""
    asked = [(handle, handle.ask()) for handle in handles]
    for handle, response in asked:
        handle.take(response, timeout_s)
