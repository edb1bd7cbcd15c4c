"""Where a model runs: in the daemon's process, or in a worker process of its own.

`start_runner` loads a model and returns its Runner, which the executors call as they
would a family: `capabilities()`, `forecast(batch, horizon, deadline)`, `impute(batch,
deadline)`, `warm_up()`, `close()`, plus `state` (ready, restarting, failed) and `reason`.
The in-process runner (inprocess.py) is today's behaviour; the process runner (process.py)
talks to `python -m tsfmd.runners.worker` (worker.py) over pipes (protocol.py).
Nothing here is imported at package import: a worker imports only what it runs.
"""
from __future__ import annotations

from typing import Optional

#: torch intra-op threads for a worker: the daemon's own count (server.torch_threads, else
#: its usable cores), which the daemon puts in its environment for the workers it starts
THREADS_ENV = "TSFMD_TORCH_THREADS"


def start_runner(family_cls, loading, python: Optional[str] = None):
    """Load the model `loading` describes: in this process when `python` is None, else in
    a worker process on that interpreter. Raises ModelLoadError with the reason."""
    if python is None:
        from tsfmd.runners.inprocess import InProcessRunner, load_family

        return InProcessRunner(load_family(family_cls, loading))
    from tsfmd.runners.process import ProcessRunner

    target = f"{family_cls.__module__}:{family_cls.__qualname__}"
    runner = ProcessRunner(loading.key, target, loading, str(python))
    try:
        runner.load()
    except BaseException:
        runner.close()
        raise
    return runner
