"""Is the daemon alive? Asked by the systemd watchdog, answered without any HTTP request.

Alive means: waitress's server loop (the one thread that accepts connections and reads
requests) has run a callback recently, and every ready model's worker is alive (tsfmd's
executors: `liveness_problem`). Neither check needs a request thread, so a burst that
holds every thread cannot make a healthy daemon look dead, and a wedged loop or a dead
worker stops the pings even while request threads still answer.
"""
from __future__ import annotations

import threading
import time
from typing import Iterable, List, Optional


class LoopProbe:
    """Proves the waitress loop runs: a callback pulled through its trigger must run.

    `pull()` queues a callback (it never blocks its caller); `problem(stale_after)` says the
    loop is wedged when the oldest callback not yet run was pulled more than `stale_after`
    seconds ago.
    """

    def __init__(self, trigger):
        self._trigger = trigger
        self._lock = threading.Lock()
        self._waiting_since: Optional[float] = None  # oldest pull not yet answered

    def pull(self) -> None:
        with self._lock:
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
            else:
                return  # one unanswered callback is enough
        # waitress's trigger runs its callbacks holding the lock pull_trigger takes: a loop
        # wedged in a callback would block the watchdog itself, so pull from a helper thread
        threading.Thread(target=self._trigger.pull_trigger, args=(self._ran,),
                         name="watchdog-pull", daemon=True).start()

    def _ran(self) -> None:  # runs in the loop thread
        with self._lock:
            self._waiting_since = None

    def problem(self, stale_after: float, now: Optional[float] = None) -> Optional[str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            since = self._waiting_since
        if since is not None and now - since > stale_after:
            return f"the server loop has not run for {now - since:.1f}s"
        return None


def problems(probe: LoopProbe, handles: Iterable, loop_stale_s: float,
             worker_stale_s: float) -> List[str]:
    """Everything that is not alive (empty when all is)."""
    found = []
    loop = probe.problem(loop_stale_s)
    if loop:
        found.append(loop)
    for handle in handles:
        executor = getattr(handle, "executor", None)
        check = getattr(executor, "liveness_problem", None)
        problem = check(worker_stale_s) if check else None
        if problem:
            found.append(problem)
    return found
