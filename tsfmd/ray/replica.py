"""One model's Serve deployment: each replica is tsfmd's own ModelHandle, batcher included.

A replica loads its registry entry exactly as `tsfmd serve` does (`ModelHandle.load`: the
family, the checks, warm-up) and runs every forecast through the entry's executor, with the
batching settings of the entry's `ray.batching` (its `batching:` where that says nothing).

Why tsfmd's batcher and not Serve's `@serve.batch`: `@serve.batch` gathers whatever calls
arrive into one list, with no key to group them by. tsfmd's batcher groups by what a family
declares (`Capabilities.horizon_block`: Time-MoE's first steps depend on the total horizon
asked for, so requests with horizons in different groups must never share a forward pass),
pads to the longest horizon and cuts each answer back, retries a failed batch one request at
a time, and drops requests whose deadline passed or whose client left before their batch
runs. Re-creating that on top of `@serve.batch` would be a second batcher with the same
rules; instead each replica takes up to `max_ongoing_requests` calls at once, each on a
thread of its own, and those calls batch in tsfmd's batcher as concurrent HTTP requests do
in the daemon. Serve still decides which replica gets a call and queues the rest.

Errors cross to the ingress as plain records (tsfmd/ray/remote.py): the ingress raises them
again as the same tsfmd errors, so the client reads what `tsfmd serve` would answer.
"""
from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import yaml
from ray import serve

from tsfmd.core import errors
from tsfmd.core.models import ModelHandle
from tsfmd.core.registry import parse_registry
from tsfmd.ray.remote import error_record

#: threads a replica waits on its batcher with: above any sane max_ongoing_requests
_CALL_THREADS = 512


@serve.deployment(max_ongoing_requests=32)
class ModelReplica:
    """`key`'s model; `registry`: a registry (as YAML reads it) holding `server:` and that
    entry, its `batching:` the replicas' (config.py)."""

    def __init__(self, key: str, registry: dict):
        text = yaml.safe_dump(registry, sort_keys=False)
        parsed = parse_registry(text, f"<ray config of {key}>")
        spec = parsed.model(key)
        _set_torch_threads(parsed.server.torch_threads)
        self.handle = ModelHandle(spec, parsed.server.resolved_state_dir())
        self.handle.load()  # never raises: a failure shows as `failed`, as in the daemon
        self.calls = ThreadPoolExecutor(_CALL_THREADS, thread_name_prefix=f"call-{key}")

    async def forecast(self, request, sent_at: float):
        """The Forecast for one prepared request, or an error record; `sent_at`: when the
        request reached the ingress (time.time()), where its deadline starts."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.calls, self._forecast, request, sent_at)

    def _forecast(self, request, sent_at: float):
        arrived = time.monotonic() - max(0.0, time.time() - sent_at)
        try:
            self.handle.ready_capabilities()
            return self.handle.submit(request, None, arrived)
        except errors.ServeError as exc:
            return error_record(exc)

    def describe(self) -> dict:
        """The model's state as this replica has it, for the ingress's /v1/models."""
        handle = self.handle
        info = handle.describe()
        info["ray"] = {"replica_pid": os.getpid(),
                       "replica": serve.get_replica_context().replica_id.unique_id}
        return {"status": handle.status, "reason": handle.reason, "caps": handle.caps,
                "load_seconds": handle.load_seconds, "info": info}

    def check_health(self) -> None:
        """Serve restarts a replica whose batcher died or wedged (as the systemd watchdog
        restarts the daemon); a model that failed to load stays up to say why."""
        executor = self.handle.executor
        problem = executor.liveness_problem(60.0) if executor is not None else None
        if problem:
            raise RuntimeError(problem)

    def __del__(self):
        handle = getattr(self, "handle", None)
        if handle is not None:
            handle.close()


def _set_torch_threads(configured) -> None:
    """The replica's intra-op threads: `server.torch_threads`, else the CPUs Ray reserved
    for it (at least one)."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(configured or max(1, int(cpus)))


def model(args: dict):
    """`tsfmd.ray:model`, the builder each model's application imports (config.py)."""
    key = args["key"]
    return ModelReplica.options(name=key).bind(key, args["registry"])
