"""The process runner: one model in a worker process of its own (tsfmd/runners/worker.py).

The daemon keeps batching and admission; each batch is one round trip over the worker's
pipes. A worker that dies (a signal, the OOM killer, an exit) fails the batch it was running
and every later one at once with Unavailable (503 + Retry-After) while the runner shows
`restarting`; a new worker is started after a backoff (0.5 s, 1, 2, 4 ... capped). Too many
deaths in a short time (a crash loop, or a worker that dies during every load) end as
`failed`, with the last lines the worker wrote to stderr in the reason. A worker that does
not answer a batch by its deadline is SIGKILLed and replaced; that batch gets
DeadlineExceeded (504). The waiting executor thread never blocks past that deadline, so the
daemon's own liveness (the systemd watchdog) is not affected by a hung worker.
The worker's interpreter is the daemon's own (`isolation: process`) or an environment's.
"""
from __future__ import annotations

import atexit
import collections
import concurrent.futures
import dataclasses
import logging
import math
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Deque, List, Optional, Sequence

import numpy as np

from tsfmd.core.errors import DeadlineExceeded, Unavailable
from tsfmd.families.base import Capabilities, Forecast, LoadSpec, ModelLoadError, SeriesInput
from tsfmd.runners import protocol
from tsfmd.runners.inprocess import FAILED, LOADING, READY, RESTARTING
from tsfmd.runners.worker import PARENT_ENV

log = logging.getLogger("tsfmd.runners")
worker_log = logging.getLogger("tsfmd.worker")

#: extra import paths for a worker (an out-of-tree family's module), os.pathsep-separated
WORKER_PATH_ENV = "TSFMD_WORKER_PATH"
#: what the worker must not inherit: the daemon's import path and its systemd sockets
_NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "NOTIFY_SOCKET",
                  "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
#: stderr lines kept for a `failed` reason
STDERR_TAIL = 20
_DEAD = object()  # the reply queue's end-of-worker mark


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """Backoff between restarts, and what counts as a crash loop."""

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    loop_deaths: int = 5  # this many deaths ...
    loop_window_s: float = 60.0  # ... within this many seconds: `failed`
    close_timeout_s: float = 5.0
    #: a worker that has not loaded its model by then is killed and the load fails: a wedged
    #: library must not hold a reload (and every later one) forever. Generous: a load may
    #: read gigabytes from a slow disk
    load_timeout_s: float = 1800.0
    #: keep one started worker with the family's libraries imported, so that a restart
    #: only loads the weights (costs one idle interpreter with those libraries per model)
    standby: bool = True

    def delay(self, recent_deaths: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2 ** max(0, recent_deaths - 1))


class WorkerGone(Exception):
    """The worker ended (its reply pipe closed) before it answered."""


class WorkerHung(Exception):
    """The worker did not answer in time."""


class DiedLoading(ModelLoadError):
    """The worker ended while it loaded the model."""


class _Spawner:
    """Forks every worker from one long-lived thread. PR_SET_PDEATHSIG fires when the
    *thread* that forked the child ends, not only the process: a worker forked by a load
    or restart thread would be killed when that thread finished."""

    def __init__(self):
        self._requests: "queue.Queue" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="worker-spawner",
                                                daemon=True)
                self._thread.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._requests.put((future, args, kwargs))
        return future.result()

    def _serve(self) -> None:
        while True:
            future, args, kwargs = self._requests.get()
            try:
                future.set_result(subprocess.Popen(*args, **kwargs))
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)


_SPAWNER = _Spawner()
_PATH_LOCK = threading.Lock()
_package_dir: Optional[str] = None


def package_path() -> str:
    """A directory holding only a `tsfmd` link to this package: the worker's import path
    for tsfmd, so it never sees the daemon's site-packages."""
    global _package_dir
    with _PATH_LOCK:
        if _package_dir is None:
            made = tempfile.mkdtemp(prefix="tsfmd-worker-path-")
            os.symlink(Path(__file__).resolve().parent.parent, os.path.join(made, "tsfmd"))
            atexit.register(shutil.rmtree, made, True)
            _package_dir = made
        return _package_dir


def worker_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    extra = [p for p in os.environ.get(WORKER_PATH_ENV, "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([package_path()] + extra)
    env[PARENT_ENV] = str(os.getpid())
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def describe_exit(returncode: Optional[int]) -> str:
    if returncode is None:
        return "ended"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the OOM killer, or a kill)" if -returncode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {returncode}"


class WorkerProcess:
    """One worker process: its pipes, a thread reading its replies, one reading stderr."""

    def __init__(self, key: str, python: str, on_exit):
        self.key = key
        self.python = python
        self._on_exit = on_exit
        self._replies: "queue.Queue" = queue.Queue()
        self._call_lock = threading.Lock()
        self.dead = False
        self.prepared = False  # a standby that has imported the family's libraries
        self.killed_because = ""  # set when the runner killed it on purpose
        self.stderr_tail: Deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.started = time.monotonic()
        cwd = package_path()  # `-m` puts the working directory on sys.path: only tsfmd there
        self.proc = _SPAWNER.popen(
            [python, "-m", "tsfmd.runners.worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=worker_env(),
            close_fds=True,
        )
        self.pid = self.proc.pid
        self._stderr = threading.Thread(target=self._read_stderr, name=f"worker-err-{key}",
                                        daemon=True)
        self._stderr.start()
        self._reader = threading.Thread(target=self._read_replies, name=f"worker-{key}",
                                        daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.stderr_tail.append(line)
                worker_log.info("[%s pid %d] %s", self.key, self.pid, line)

    def _read_replies(self) -> None:
        try:
            while True:
                frame = protocol.read_frame(self.proc.stdout)
                if frame is None:
                    break
                self._replies.put(frame)
        except (protocol.ProtocolError, OSError, ValueError) as exc:
            log.error("model %s: worker pid %d sent a broken reply (%s); killing it",
                      self.key, self.pid, exc)
            self.kill("sent a broken reply")
        self.dead = True
        self._replies.put(_DEAD)
        self.proc.wait()
        self._stderr.join(2.0)  # its last lines belong in the reason
        self._on_exit(self)

    def call(self, header: dict, arrays: Sequence[np.ndarray] = (),
             timeout: Optional[float] = None):
        """One round trip; WorkerGone when it ends first, WorkerHung after `timeout` s."""
        with self._call_lock:
            if self.dead:
                raise WorkerGone()
            try:
                protocol.write_frame(self.proc.stdin, header, arrays)
            except (BrokenPipeError, OSError, ValueError) as exc:
                raise WorkerGone() from exc
            try:
                reply = self._replies.get(timeout=None if timeout is None else max(0, timeout))
            except queue.Empty:
                raise WorkerHung() from None
            if reply is _DEAD:
                self._replies.put(_DEAD)
                raise WorkerGone()
            return reply

    def exit_text(self) -> str:
        """How it ended, e.g. "was killed by SIGSEGV", waiting a moment for the status."""
        try:
            code = self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            code = None
        text = self.killed_because or describe_exit(code)
        return f"worker pid {self.pid} {text}"

    def stderr_text(self) -> str:
        lines = list(self.stderr_tail)
        return " | ".join(lines) if lines else "(nothing)"

    def kill(self, because: str = "") -> None:
        if because and not self.killed_because:
            self.killed_because = f"was killed by tsfmd: {because}"
        try:
            self.proc.kill()
        except OSError:
            pass

    def stop(self, timeout: float) -> None:
        """Ask it to close, then end it: its memory goes back to the system."""
        if not self.dead:
            try:
                self.call({"op": "close"}, timeout=timeout)
            except (WorkerGone, WorkerHung):
                pass
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill("did not exit when closed")
            self.proc.wait()
        self._reader.join(timeout)


class ProcessRunner:
    """A model served by a worker process, restarted when it dies."""

    is_runner = True
    kind = "process"

    def __init__(self, key: str, target: str, spec: LoadSpec, python: str,
                 policy: RestartPolicy = RestartPolicy()):
        self.key, self.target, self.spec, self.python = key, target, spec, python
        self.policy = policy
        self.state = LOADING
        self.reason = ""
        self.restarts = 0
        self.torch_threads: Optional[int] = None  # the worker's, once loaded (None: no torch)
        self._caps: Optional[Capabilities] = None
        self._worker: Optional[WorkerProcess] = None
        self._standby: Optional[WorkerProcess] = None
        self._deaths: Deque[float] = collections.deque()
        self._closing = threading.Event()
        self._lock = threading.Lock()  # state changes
        self._load_seconds = 0.0
        self._retry_after = 1

    @property
    def pid(self) -> Optional[int]:
        worker = self._worker
        return None if worker is None or worker.dead else worker.pid

    # -- loading ----------------------------------------------------------------------

    def load(self) -> None:
        """Start the first worker and load the model there (blocking); ModelLoadError says
        why not, with the worker's last stderr lines when it died."""
        self._caps = self._start()
        self.state = READY

    def _start(self) -> Capabilities:
        began = time.monotonic()
        worker, self._standby = self._standby, None
        if worker is None or worker.dead:
            worker = WorkerProcess(self.key, self.python, self._worker_ended)
        self._worker = worker
        request = {"op": "load", "target": self.target, "spec": dataclasses.asdict(self.spec)}
        try:
            header, _ = worker.call(request, timeout=self.policy.load_timeout_s)
        except WorkerHung:
            limit = self.policy.load_timeout_s
            worker.kill(f"it had not loaded the model after {limit:g}s")
            raise ModelLoadError(
                f"its worker pid {worker.pid} had not loaded it after {limit:g}s and was "
                f"killed (python {self.python}); its last stderr lines: "
                f"{worker.stderr_text()}") from None
        except WorkerGone:
            raise DiedLoading(
                f"its {worker.exit_text()} while loading (python {self.python}); its last "
                f"stderr lines: {worker.stderr_text()}") from None
        if not header.get("ok"):
            worker.stop(self.policy.close_timeout_s)
            raise protocol.error_from(header, self.key)
        self._load_seconds = time.monotonic() - began
        self.torch_threads = header.get("torch_threads")
        log.info("model %s: worker pid %d (%s) loaded it in %.1fs", self.key, worker.pid,
                 header.get("python", self.python), self._load_seconds)
        if self.policy.standby:
            threading.Thread(target=self._start_standby, name=f"standby-{self.key}",
                             daemon=True).start()
        return protocol.capabilities_from(header["capabilities"])

    def _start_standby(self) -> None:
        """Start the next worker now, with the family's libraries imported: a restart then
        costs the weights' load only."""
        try:
            spare = WorkerProcess(self.key, self.python, self._worker_ended)
        except OSError as exc:
            log.warning("model %s: no standby worker: %s", self.key, exc)
            return
        with self._lock:
            if self._closing.is_set() or self._standby is not None:
                spare.kill()
                return
            self._standby = spare
        try:
            header, _ = spare.call({"op": "prepare", "target": self.target})
        except WorkerGone:
            return  # it died; a restart starts a fresh worker instead
        if not header.get("ok"):
            log.warning("model %s: the standby worker could not import the family: %s",
                        self.key, header.get("message"))
        spare.prepared = True

    # -- serving ----------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return self._caps

    def warm_up(self) -> None:
        """The worker warmed the model up when it loaded it."""

    def forecast(self, batch: Sequence[SeriesInput], horizon: int,
                 deadline: Optional[float] = None) -> Forecast:
        arrays: List[np.ndarray] = []
        series = protocol.encode_series(batch, arrays)
        header, out = self._round_trip(
            {"op": "forecast", "series": series, "horizon": int(horizon)}, arrays, deadline)
        return protocol.forecast_from(header, out)

    def impute(self, batch: Sequence[np.ndarray],
               deadline: Optional[float] = None) -> List[np.ndarray]:
        _, out = self._round_trip({"op": "impute"}, [np.asarray(a) for a in batch], deadline)
        return out

    def _round_trip(self, header: dict, arrays, deadline: Optional[float]):
        worker = self._worker
        if self.state != READY or worker is None:
            raise self._unavailable()
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:  # never sent: the worker is not at fault
            raise DeadlineExceeded(f"model {self.key}: the request's deadline passed before "
                                   "its batch was sent to the worker")
        try:
            reply, out = worker.call(header, arrays, timeout)
        except WorkerHung:
            worker.kill("it did not answer a batch within the request's deadline")
            raise DeadlineExceeded(
                f"model {self.key}: its worker did not answer within the request's deadline "
                f"(batching.timeout_s); the worker was killed and restarts") from None
        except WorkerGone:
            raise Unavailable(f"model {self.key}: its {worker.exit_text()} while running "
                              "this request; it restarts, retry shortly",
                              retry_after=self.retry_after()) from None
        if not reply.get("ok"):
            raise protocol.error_from(reply, self.key)
        return reply, out

    def _unavailable(self) -> Unavailable:
        if self.state == FAILED:
            return Unavailable(f"model {self.key} is not available: {self.reason}",
                               retry_after=60)
        return Unavailable(f"model {self.key} is restarting its worker ({self.reason}); "
                           "retry shortly", retry_after=self.retry_after())

    def retry_after(self) -> int:
        return self._retry_after

    # -- faults -----------------------------------------------------------------------

    def _worker_ended(self, worker: WorkerProcess) -> None:
        """Called by the ended worker's reader thread."""
        with self._lock:
            if self._closing.is_set() or worker is not self._worker or self.state != READY:
                return  # closed on purpose, an old worker, or a load that failed (reported)
            self._died(worker)

    def _died(self, worker: WorkerProcess) -> None:
        """Record a death (under self._lock): restart after a backoff, or end `failed`."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.policy.loop_window_s:
            self._deaths.popleft()
        what = worker.exit_text()
        if len(self._deaths) >= self.policy.loop_deaths:
            self._fail(f"its worker died {len(self._deaths)} times within "
                       f"{self.policy.loop_window_s:g}s (a crash loop); last: {what}; its last "
                       f"stderr lines: {worker.stderr_text()}")
            return
        delay = self.policy.delay(len(self._deaths))
        self.state, self.reason = RESTARTING, what
        self._retry_after = max(1, math.ceil(delay + self._load_seconds))
        log.warning("model %s: its %s; restarting it in %.1fs", self.key, what, delay)
        threading.Thread(target=self._restart, args=(delay,), name=f"restart-{self.key}",
                         daemon=True).start()

    def _fail(self, reason: str) -> None:
        self.state, self.reason = FAILED, reason
        log.error("model %s failed: %s", self.key, reason)

    def _restart(self, delay: float) -> None:
        if self._closing.wait(delay):
            return
        try:
            caps = self._start()
        except DiedLoading:
            with self._lock:
                if not self._closing.is_set():
                    self._died(self._worker)  # it died while loading: one more death
            return
        except ModelLoadError as exc:
            with self._lock:
                self._fail(f"its worker could not load it again: {exc}")
            return
        except Exception as exc:  # e.g. the interpreter is gone: cannot start a worker
            with self._lock:
                self._fail(f"cannot start its worker: {type(exc).__name__}: {exc}")
            return
        with self._lock:
            if self._closing.is_set():
                return
            if caps != self._caps:
                log.warning("model %s: the restarted worker reports other capabilities (%s); "
                            "serving on with the first ones", self.key, caps)
            self.restarts += 1
            self.state, self.reason = READY, ""
        log.info("model %s: worker restarted (pid %d, restart %d)", self.key,
                 self._worker.pid, self.restarts)

    # -- reporting and closing --------------------------------------------------------

    def describe(self) -> dict:
        standby = self._standby
        return {"isolation": self.kind, "python": self.python, "pid": self.pid,
                "restarts": self.restarts, "torch_threads": self.torch_threads,
                "standby_pid": standby.pid if standby is not None and standby.prepared
                and not standby.dead else None}

    def close(self) -> None:
        """End the worker (its memory goes back to the system); no restart follows."""
        with self._lock:
            self._closing.set()
        for worker in (self._standby, self._worker):
            if worker is not None:
                worker.stop(self.policy.close_timeout_s)
