"""Loaded models and the route table the HTTP layer reads.

`ModelHandle` owns one registry entry's model: its status (loading, ready, failed with a
reason), the family object once loaded, and the executor that runs its forecasts.
`ModelTable` maps routes to handles; a reload builds the next table beside the current one
and swaps it in one assignment, so a request sees either the old table or the new one.
Only an entry's load identity (registry.LOAD_FIELDS) decides whether weights load again;
other settings get a new handle around the same loaded model.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from tsfmd.core.errors import Unavailable
from tsfmd.core.executor import make_executor
from tsfmd.core.heap import release_free_memory
from tsfmd.families import get_family
from tsfmd.families.base import Capabilities, Forecast, ModelLoadError, resolve_limit
from tsfmd.core.preflight import load_spec
from tsfmd.core.request import ForecastRequest
from tsfmd.core.registry import ModelSpec
from tsfmd.families.hub import source_fingerprint
from tsfmd.families.metadata import WeightsInfo, weights_info
from tsfmd.runners import start_runner

log = logging.getLogger("tsfmd.models")

#: a model's status in /v1/models; RESTARTING: its worker process died and restarts
LOADING, READY, RESTARTING, FAILED = "loading", "ready", "restarting", "failed"


def worker_python(spec: ModelSpec, state_dir: str) -> Optional[str]:
    """The interpreter of the model's worker process; None: it runs in this process."""
    environment = spec.environment
    if environment is not None:
        from tsfmd.envs import env_problem, python_for

        problem = env_problem(environment, state_dir)
        if problem:
            raise ModelLoadError(problem)
        return str(python_for(environment, state_dir))
    return sys.executable if spec.isolation == "process" else None


class ModelHandle:
    """One served model: the registry entry, its load state, its runner and executor."""

    def __init__(self, spec: ModelSpec, state_dir: str):
        self.spec = spec
        self.state_dir = state_dir
        self._status = LOADING
        self._reason = ""
        #: where the model runs (tsfmd/runners): this process or a worker process
        self.runner = None
        self.model_caps: Optional[Capabilities] = None  # as the family reports them
        self.caps: Optional[Capabilities] = None  # what tsfmd enforces (registry limits)
        self.executor = None
        self.load_seconds: Optional[float] = None
        #: the source's files on this machine when the load failed (None: none found)
        self.source_seen: Optional[tuple] = None
        #: why the registry's newer version of this model did not load (this one serves on)
        self.change_error = ""
        #: licence, parameter count and bytes of the weights (/v1/models)
        self.weights = WeightsInfo()
        self.loaded = threading.Event()

    @property
    def key(self) -> str:
        return self.spec.key

    def _state(self) -> Tuple[str, str]:
        """(status, reason): the load's, unless the loaded model's runner says otherwise
        (its worker restarts, or failed after a crash loop)."""
        runner = self.runner
        if self._status == READY and runner is not None and runner.state in (RESTARTING,
                                                                              FAILED):
            return runner.state, runner.reason
        return self._status, self._reason

    @property
    def status(self) -> str:
        """loading, ready, restarting (its worker process died) or failed."""
        return self._state()[0]

    @property
    def reason(self) -> str:
        return self._state()[1]

    @property
    def model(self):
        """The family object when it runs in this process (None in a worker)."""
        return getattr(self.runner, "family", None)

    def load(self) -> None:
        """Load the model (blocking); never raises: a failure is recorded as `failed`."""
        started = time.monotonic()
        spec = self.spec
        try:
            family = get_family(spec.family)
            self.weights = WeightsInfo(license=family.license or WeightsInfo.license)
            problems = family.check_options(spec.options)
            if problems:
                raise ModelLoadError("; ".join(problems))
            # the device stays as written ("auto"): the runner resolves it with its own torch
            loading = load_spec(spec, self.state_dir, spec.device)
            python = worker_python(spec, self.state_dir)
            runner = start_runner(family, loading, python)
            self.weights = weights_info(family.weights_location(loading), family.license)
            self._serve(runner, runner.capabilities(),
                        make_executor(runner, spec.batching, spec.key))
            self.load_seconds = time.monotonic() - started
            where = f" in a worker (pid {runner.pid}, {python})" if python else ""
            log.info("model %s ready (%s from %s%s) in %.1fs", spec.key, spec.family,
                     spec.source, where, self.load_seconds)
        except Exception as exc:  # any load problem must leave the others serving
            self._status, self._reason = FAILED, _reason(exc)
            self.source_seen = source_fingerprint(spec.source, self.state_dir)
            # `required: false` says the model may be missing here: worth a warning only
            level = logging.ERROR if spec.required else logging.WARNING
            log.log(level, "model %s%s failed to load: %s", spec.key,
                    "" if spec.required else " (not required)", self.reason)
            log.debug("load traceback for %s", spec.key, exc_info=True)
        finally:
            self.loaded.set()

    def _serve(self, runner, model_caps: Capabilities, executor) -> None:
        self.runner, self.model_caps, self.executor = runner, model_caps, executor
        self.caps = serving_caps(model_caps, self.spec)
        self._status = READY

    def with_settings(self, spec: ModelSpec) -> "ModelHandle":
        """A handle serving `spec`, whose load identity is this one's, around this handle's
        loaded model: new routes, limits and description at once, a new executor only when
        the batching settings changed. A failed handle gives a failed handle."""
        handle = ModelHandle(spec, self.state_dir)
        handle._status, handle._reason = self._status, self._reason
        handle.source_seen, handle.load_seconds = self.source_seen, self.load_seconds
        handle.weights = self.weights
        if self.runner is not None:
            same = spec.batching == self.spec.batching
            executor = self.executor if same else make_executor(self.runner, spec.batching,
                                                                spec.key)
            handle._serve(self.runner, self.model_caps, executor)
        handle.loaded.set()
        return handle

    def worth_retrying(self) -> bool:
        """For a failed model whose entry did not change: are its files on this machine now,
        and not the ones the failed load saw (or did its worker fail after it loaded)? Looks
        offline: a reload never goes to the network for a model the registry did not change."""
        if self._status == READY:
            return True  # loaded, then its worker crash-looped: a reload tries it again
        now = source_fingerprint(self.spec.source, self.state_dir)
        return now is not None and now != self.source_seen

    def ready_capabilities(self) -> Capabilities:
        """The model's capabilities, or Unavailable saying why it cannot answer now."""
        status = self.status
        if status == LOADING:
            raise Unavailable(f"model {self.key} is still loading; retry shortly", retry_after=5)
        if status == RESTARTING:
            raise Unavailable(f"model {self.key} is restarting its worker ({self.reason}); "
                              "retry shortly", retry_after=self.runner.retry_after())
        if status == FAILED:
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
            "required": self.spec.required,
            "description": self.spec.description,
            "device": self.spec.device,
            "dtype": self.spec.dtype,
            "isolation": self.spec.isolation,
            **self.weights.as_dict(),
        }
        if self.runner is not None and self.runner.kind != "inprocess":
            info["worker"] = self.runner.describe()
        if info["status"] in (FAILED, RESTARTING):
            info["reason"] = self.reason
        if self.change_error:
            info["reload_error"] = self.change_error
        if caps is not None:
            info.update(
                context_limit=caps.context_limit,
                horizon_limit=caps.horizon_limit,
                min_context=caps.min_context,
                intervals=caps.intervals,
                quantile_levels=list(caps.quantile_levels),
                point_forecast="median" if caps.intervals else caps.point_forecast,
                covariates={"past": caps.past_covariates, "future": caps.future_covariates},
                tasks=list(caps.tasks),
                dtype=caps.dtype or self.spec.dtype,
                batching=self.executor.describe() if self.executor else None,
            )
        else:
            info.update(
                context_limit=self.spec.context_limit,
                horizon_limit=self.spec.horizon_limit,
                intervals=None,
            )
        return info

    def _unshared(self, successor: Optional["ModelHandle"]) -> dict:
        """The executor and model this handle holds that `successor` (the handle serving
        its key now, if any) does not share: what retiring this handle closes."""
        held = {"executor": self.executor, "runner": self.runner}
        return {name: own for name, own in held.items() if own is not None
                and (successor is None or getattr(successor, name) is not own)}

    def holds_beyond(self, successor: Optional["ModelHandle"]) -> bool:
        return bool(self._unshared(successor))

    def retire(self, successor: Optional["ModelHandle"] = None) -> None:
        """Close the executor, then the runner (a worker process ends), unless `successor`
        serves on with them."""
        for own in self._unshared(successor).values():
            own.close()
        self.runner = None

    def close(self) -> None:
        self.retire(None)


def serving_caps(model_caps: Capabilities, spec: ModelSpec) -> Capabilities:
    """The loaded model's capabilities with the registry's `horizon_limit` applied (tsfmd
    enforces it; `context_limit` went to the family's load)."""
    return replace(model_caps,
                   horizon_limit=resolve_limit(spec.horizon_limit, model_caps.horizon_limit))


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:1000]  # room for the fetch command at the end


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
        for state in (LOADING, RESTARTING):
            waiting = [h.key for h in handles if h.status == state]
            if waiting:
                text += f"; {state} {', '.join(waiting)}"
        for h in handles:
            if h.status == FAILED:
                text += f"; {h.key} failed{'' if h.spec.required else ' (not required)'}: " \
                        f"{h.reason}"
        return text


#: what an apply did with each model key; every key is in exactly one list
CHANGE_KINDS = ("added", "changed", "reconfigured", "retried", "failed", "removed", "unchanged")


@dataclass
class Outcome:
    """What `Models.apply` did. `failures`: key -> why its load failed in this apply."""

    changes: Dict[str, List[str]]
    failures: Dict[str, str] = field(default_factory=dict)
    required_failures: List[str] = field(default_factory=list)


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
    ) -> Outcome:
        """Serve `specs` (see _apply), then give the memory of the models that no longer
        serve back to the OS: here, once nothing of the old table is referenced any more."""
        outcome = self._apply(specs, on_progress, quiesce)
        if any(outcome.changes.get(kind) for kind in ("changed", "removed", "failed")):
            release_free_memory("models replaced, removed or failed to load")
        return outcome

    def _apply(
        self, specs: Iterable[ModelSpec], on_progress: Optional[Callable[[str], None]],
        quiesce: Optional[Callable[[], None]],
    ) -> Outcome:
        """Serve `specs`, then close what no longer serves. Per key (Outcome.changes):
        added / changed (the load identity differs: new weights load while the old serve),
        retried (failed before, same entry, its files are now on this machine), reconfigured
        (only serving settings differ: the same loaded model), unchanged, removed, failed.
        A changed model whose new version fails keeps its working version, under the new
        serving settings. The table switches in one step; `quiesce` returns once requests
        that may hold a replaced executor or model have finished, so closing drops none."""
        with self._lock:
            current = self.table.handles
            wanted = {s.key: s for s in specs if s.enabled}
            changes: Dict[str, List[str]] = {kind: [] for kind in CHANGE_KINDS}
            serving: Dict[str, ModelHandle] = {}
            loads: Dict[str, Tuple[str, ModelHandle]] = {}
            for key, spec in wanted.items():
                kind = _plan(current.get(key), spec)
                if kind == "unchanged":
                    serving[key] = current[key]
                    current[key].change_error = ""  # the entry is back to what serves
                elif kind == "reconfigured":
                    serving[key] = current[key].with_settings(spec)
                else:
                    loads[key] = (kind, ModelHandle(spec, self.state_dir))
                    continue
                changes[kind].append(key)
            if not current:
                # First start: publish the routes at once so they answer "loading" (503)
                # and /healthz answers while the weights load.
                self.table = ModelTable.build(h for _, h in loads.values())
            self._load_all([h for _, h in loads.values()], on_progress)
            failures = {}
            for key, (kind, handle) in loads.items():
                serving[key] = handle
                if handle.status == READY:
                    changes[kind].append(key)
                    continue
                changes["failed"].append(key)
                failures[key] = handle.reason
                old = current.get(key)
                if old is not None and old.status == READY:
                    # As nginx keeps its workers on a config that does not load: a version
                    # that fails never replaces one that serves.
                    serving[key] = old.with_settings(handle.spec.loading_as(old.spec))
                    serving[key].change_error = handle.reason
                    failures[key] += "; its previous version keeps serving"
            new_table = ModelTable.build(serving[key] for key in wanted)
            self.table = new_table  # the atomic switch: one reference assignment
            retired = [(h, new_table.handles.get(k)) for k, h in current.items()
                       if new_table.handles.get(k) is not h]
            if quiesce is not None and any(h.holds_beyond(new) for h, new in retired):
                quiesce()
            for handle, successor in retired:
                handle.retire(successor)
            changes["removed"] = [k for k in current if k not in wanted]
            changes = {kind: sorted(keys) for kind, keys in changes.items()}
            log.info("models: %s (%s)", new_table.summary(), _describe_changes(changes))
            required = sorted(k for k in failures if wanted[k].required)
            return Outcome(changes, failures, required)

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


def _plan(old: Optional[ModelHandle], spec: ModelSpec) -> str:
    """What an apply does with `spec`, given the handle serving its key now (see apply)."""
    if old is None:
        return "added"
    if old.spec.load_identity != spec.load_identity:
        return "changed"
    if old.status == FAILED and old.worth_retrying():
        return "retried"
    return "unchanged" if old.spec == spec else "reconfigured"


def _describe_changes(changes: dict) -> str:
    parts = [f"{what} {', '.join(keys)}" for what, keys in changes.items() if keys]
    return "; ".join(parts) or "no models"
