"""One long-lived thread per model that runs its forward passes, one at a time.

Why a thread of its own, and always the same one: torch's OpenMP pool belongs to the thread
that calls into torch. When forecasts ran on waitress's request threads (the serial path),
every request thread that ever ran one built and kept its own pool: 68 threads instead of
38 and 1.84 GB RSS instead of 0.91 GB for one Time-MoE 50M, and 5-12% slower even at one
client. Handing the call to the model's own thread keeps one warm pool per model. The
batching executor has had such a thread from the start (its worker); the serial executor
and imputation use this one.

Callers serialise themselves first (the serial executor's first-come-first-served gate),
so at most one call waits here; `run` still queues in order if several do.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Deque, Optional

from tsfmd.core.errors import Unavailable


class _Call:
    __slots__ = ("fn", "args", "done", "result", "error")

    def __init__(self, fn: Callable[..., Any], args: tuple):
        self.fn, self.args = fn, args
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None


class ModelThread:
    """`run(fn, *args)` runs fn(*args) on this model's thread and returns (or raises) what
    it did. The thread starts on the first call and ends at `close()`."""

    def __init__(self, key: str):
        self.key = key
        self._cond = threading.Condition()
        self._calls: Deque[_Call] = collections.deque()
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self.beat = time.monotonic()  # last time the thread was seen alive and idle/done

    def run(self, fn: Callable[..., Any], *args) -> Any:
        call = _Call(fn, args)
        with self._cond:
            if self._closed:
                raise Unavailable(f"model {self.key} was unloaded before this request ran; "
                                  "retry", retry_after=1)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"model-{self.key}",
                                                daemon=True)
                self._thread.start()
            self._calls.append(call)
            self._cond.notify()
        call.done.wait()  # the call's own deadline bounds it (runners honour it)
        if call.error is not None:
            raise call.error
        return call.result

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._calls and not self._closed:
                    self.beat = time.monotonic()
                    self._cond.wait(1.0)
                if not self._calls:
                    return  # closed and nothing left to run
                call = self._calls.popleft()
            try:
                call.result = call.fn(*call.args)
            except BaseException as exc:  # handed to the caller; the thread lives on
                call.error = exc
            finally:
                self.beat = time.monotonic()
                call.done.set()

    def dead(self) -> bool:
        """The thread was started and has died while the model is still served."""
        thread = self._thread
        return thread is not None and not self._closed and not thread.is_alive()

    def close(self) -> None:
        """No new calls; the thread ends once what it holds has run."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
