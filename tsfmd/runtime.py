"""Loaded models and the route table the HTTP layer reads.

`ModelHandle` owns one registry entry's model: its status (loading, ready, failed with a
reason), the family object once loaded, and the executor that runs its forecasts.
`ModelTable` maps routes to handles; a reload builds the next table beside the current one
and swaps it in one assignment, so a request sees either the old table or the new one.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

from tsfmd.executor import make_executor
from tsfmd.families import get_family
from tsfmd.families.base import Capabilities, Family, Forecast, LoadSpec
from tsfmd.errors import Unavailable
from tsfmd.protocol import ForecastRequest
from tsfmd.registry import ModelSpec

log = logging.getLogger("tsfmd.models")

LOADING, READY, FAILED = "loading", "ready", "failed"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelHandle:
    """One served model: the registry entry, its load state and its executor."""

    def __init__(self, spec: ModelSpec, state_dir: str):
        self.spec = spec
        self.state_dir = state_dir
        self.status = LOADING
        self.reason = ""
        self.model: Optional[Family] = None
        self.caps: Optional[Capabilities] = None
        self.executor = None
        self.load_seconds: Optional[float] = None
        self.loaded = threading.Event()

    @property
    def key(self) -> str:
        return self.spec.key

    def load(self) -> None:
        """Load the model (blocking); never raises: a failure is recorded as `failed`."""
        started = time.monotonic()
        try:
            family = get_family(self.spec.family)
            spec = self.spec
            load_spec = LoadSpec(
                key=spec.key, source=spec.source, device=resolve_device(spec.device),
                dtype=spec.dtype, context_limit=spec.context_limit,
                horizon_limit=spec.horizon_limit, cache_dir=self.state_dir,
                options=dict(spec.options),
            )
            model = family.load(load_spec)
            caps = model.capabilities()
            model.warm_up()
            self.executor = make_executor(model, spec.batching, spec.key)
            self.model, self.caps = model, caps
            self.status = READY
            self.load_seconds = time.monotonic() - started
            log.info("model %s ready (%s from %s) in %.1fs", spec.key, spec.family,
                     spec.source, self.load_seconds)
        except Exception as exc:  # any load problem must leave the others serving
            self.status = FAILED
            self.reason = _reason(exc)
            log.error("model %s failed to load: %s", self.spec.key, self.reason)
            log.debug("load traceback for %s", self.spec.key, exc_info=True)
        finally:
            self.loaded.set()

    def ready_capabilities(self) -> Capabilities:
        """The model's capabilities, or Unavailable saying why it cannot answer now."""
        if self.status == LOADING:
            raise Unavailable(f"model {self.key} is still loading; retry shortly", retry_after=5)
        if self.status == FAILED:
            raise Unavailable(f"model {self.key} is not available: {self.reason}")
        return self.caps

    def submit(
        self, request: ForecastRequest, disconnected: Optional[Callable[[], bool]] = None,
        arrived: Optional[float] = None,
    ) -> Forecast:
        """Run one request through the model's executor (batched or serial); `disconnected`
        says whether the client hung up, so a request nobody waits for is not run; the
        deadline counts from `arrived` (time.monotonic() when the request reached tsfmd)."""
        return self.executor.submit(request, disconnected, arrived)

    def describe(self) -> dict:
        caps = self.caps
        info = {
            "key": self.key,
            "family": self.spec.family,
            "source": self.spec.source,
            "routes": list(self.spec.routes),
            "status": self.status,
            "description": self.spec.description,
            "device": self.spec.device,
            "dtype": self.spec.dtype,
        }
        if self.status == FAILED:
            info["reason"] = self.reason
        if caps is not None:
            info.update(
                context_limit=caps.context_limit,
                horizon_limit=caps.horizon_limit,
                min_context=caps.min_context,
                intervals=caps.intervals,
                quantile_levels=list(caps.quantile_levels),
                point_forecast="median" if caps.intervals else caps.point_forecast,
                covariates={"past": caps.past_covariates, "future": caps.future_covariates},
                batching=self.executor.describe() if self.executor else None,
            )
        else:
            info.update(
                context_limit=self.spec.context_limit,
                horizon_limit=self.spec.horizon_limit,
                intervals=None,
            )
        return info

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()
        if self.model is not None:
            self.model.close()
        self.model = None


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


@dataclass(frozen=True)
class ModelTable:
    """An immutable snapshot: key -> handle and route -> handle."""

    handles: Dict[str, ModelHandle]
    routes: Dict[str, ModelHandle]

    @classmethod
    def build(cls, handles: Iterable[ModelHandle]) -> "ModelTable":
        by_key = {h.key: h for h in handles}
        routes = {route: h for h in by_key.values() for route in h.spec.routes}
        return cls(by_key, routes)

    def summary(self) -> str:
        """One line for logs and systemd's STATUS=, e.g. "serving 3 of 4 models; x failed: ..."."""
        handles = list(self.handles.values())
        ready = [h for h in handles if h.status == READY]
        text = f"serving {len(ready)} of {len(handles)} models"
        loading = [h.key for h in handles if h.status == LOADING]
        if loading:
            text += f"; loading {', '.join(loading)}"
        for h in handles:
            if h.status == FAILED:
                text += f"; {h.key} failed: {h.reason}"
        return text


class Models:
    """The daemon's current ModelTable and the way a new registry replaces it."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.table = ModelTable.build([])
        self._lock = threading.Lock()  # one reload at a time

    def route(self, path: str) -> Optional[ModelHandle]:
        return self.table.routes.get(path)

    def apply(
        self, specs: Iterable[ModelSpec], on_progress: Optional[Callable[[str], None]] = None,
        quiesce: Optional[Callable[[], None]] = None,
    ) -> dict:
        """Serve `specs`: load new and changed models while the current ones keep serving,
        swap the table in one step, then close removed and replaced models. Models whose
        spec is unchanged keep their loaded object untouched. Returns what changed.
        `quiesce` returns once requests that may hold a replaced handle have finished, so
        closing it (its executor refuses work) drops none of them."""
        with self._lock:
            current = self.table.handles
            wanted = {s.key: s for s in specs if s.enabled}
            keep, start = [], []
            for key, spec in wanted.items():
                old = current.get(key)
                if old is not None and old.spec == spec and old.status != FAILED:
                    keep.append(old)
                else:
                    start.append(ModelHandle(spec, self.state_dir))
            if not current:
                # First start: publish the routes at once so they answer "loading" (503)
                # and /healthz answers while the weights load.
                self.table = ModelTable.build(start)
            self._load_all(start, on_progress)
            new_table = ModelTable.build(keep + start)
            self.table = new_table  # the atomic switch: one reference assignment
            retired = [h for k, h in current.items() if new_table.handles.get(k) is not h]
            if retired and quiesce is not None:
                quiesce()
            for handle in retired:
                handle.close()
            changes = {
                "added": sorted(h.key for h in start if h.key not in current),
                "changed": sorted(h.key for h in start if h.key in current),
                "removed": sorted(k for k in current if k not in wanted),
                "unchanged": sorted(h.key for h in keep),
            }
            log.info("models: %s (%s)", new_table.summary(), _describe_changes(changes))
            return changes

    @staticmethod
    def _load_all(handles: List[ModelHandle], on_progress) -> None:
        threads = [
            threading.Thread(target=h.load, name=f"load-{h.key}", daemon=True) for h in handles
        ]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=1.0)
            if on_progress is not None:
                pending = [h.key for h in handles if not h.loaded.is_set()]
                if pending:
                    on_progress(f"loading {', '.join(pending)}")

    def close(self) -> None:
        for handle in self.table.handles.values():
            handle.close()


def _describe_changes(changes: dict) -> str:
    parts = [f"{what} {', '.join(keys)}" for what, keys in changes.items() if keys]
    return "; ".join(parts) or "no models"
