"""The daemon's lifecycle: bind, load, serve, reload on SIGHUP, drain and stop on SIGTERM.

`Daemon` owns the waitress server (created programmatically so tsfmd decides when it starts
and stops), the current registry, and the models. Signals only set flags; the main thread
does the work, so a reload or a stop never runs inside a signal handler.
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import logging
import os
import signal
import threading
import time
from typing import Optional

import waitress
from flask import has_request_context
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer

from tsfmd.api import auth
from tsfmd.daemon import liveness, wire
from tsfmd.core.admission import Admission
from tsfmd.api.app import create_app
from tsfmd.daemon.notify import Notifier, watchdog_seconds
from tsfmd.core.registry import (Registry, RegistryError, ServerSettings, client_host,
                            load_registry)
from tsfmd.core.models import FAILED, Models
from tsfmd.daemon.waitress_hooks import LanedDispatcher, capacity_settings
from tsfmd.runners import THREADS_ENV

log = logging.getLogger("tsfmd.server")

#: how long a stop waits for requests in flight before it exits anyway
DRAIN_SECONDS = 30.0


class ListenError(Exception):
    """The daemon cannot listen on its address; the message names it and what to do."""


def listen_advice(host: str, port: int, exc: OSError, config_path: str) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        what = ("another program (or another tsfmd) already listens there; stop it "
                f"(`ss -ltnp 'sport = :{port}'` names it) or")
    elif exc.errno == errno.EADDRNOTAVAIL:
        what = f"{host} is not an address of this machine;"
    elif exc.errno == errno.EACCES:
        what = "ports below 1024 need privileges tsfmd does not have;"
    else:
        what = "check the address, or"
    return (f"cannot listen on {where}: {exc.strerror or exc}: {what} choose another "
            f"server.host/server.port in {config_path} (or `tsfmd serve --host/--port`)")


class InFlight:
    """WSGI middleware tracking requests from arrival until their body is handed over.

    Each request gets a sequence number, so a reload can wait for exactly the requests that
    arrived before its route switch (they may hold a replaced model) and no others.
    """

    def __init__(self, app):
        self.app = app
        self._active = set()  # sequence numbers of the requests being served
        self._next = 0
        self._cond = threading.Condition()

    @property
    def count(self) -> int:
        return len(self._active)

    def __call__(self, environ, start_response):
        with self._cond:
            seq = self._next
            self._next += 1
            self._active.add(seq)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._done(seq)
            raise
        return _ClosingIterable(body, lambda: self._done(seq))

    def _done(self, seq: int) -> None:
        with self._cond:
            self._active.discard(seq)
            self._cond.notify_all()

    def wait_for_earlier(self, timeout: float) -> int:
        """Wait until every request that arrived before this call has finished (bounded);
        return how many of them still run."""
        with self._cond:
            mark = self._next
            self._cond.wait_for(lambda: all(s >= mark for s in self._active), timeout)
            return sum(1 for s in self._active if s < mark)


class _ClosingIterable:
    def __init__(self, body, on_close):
        self.body, self.on_close = body, on_close

    def __iter__(self):
        return iter(self.body)

    def close(self):
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            self.on_close()


class Daemon:
    def __init__(self, config_path: str, notifier: Optional[Notifier] = None,
                 host: Optional[str] = None, port: Optional[int] = None):
        self.config_path = config_path
        # `tsfmd serve --host/--port`: where to listen instead of the registry's server.*
        self.listen_override = (host, port)
        self.wire: Optional[wire.Wire] = None
        self.notifier = notifier or Notifier()
        self.registry: Optional[Registry] = None
        self.models: Optional[Models] = None
        self.server = None
        self.inflight: Optional[InFlight] = None
        self.auth: Optional[auth.AuthPolicy] = None
        # `started`/`finished` let `tsfmd reload` wait for the reload its SIGHUP caused.
        self.reloads = {"started": 0, "finished": 0, "succeeded": 0, "failed": 0,
                        "last_successful": True, "last_error": "", "last_warnings": [],
                        "last_changes": {}, "last_success_time": None}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.abandoned_work = False  # set by stop(): a forward pass outlived its bound
        self._server_thread: Optional[threading.Thread] = None
        self._trigger = None  # wakes waitress's loop to run work in its thread

    # -- start ---------------------------------------------------------------------------

    def start(self) -> None:
        """Validate the registry, listen, load every model; READY=1 when all are settled."""
        self.registry = load_registry(self.config_path)  # RegistryError: refuse to start
        for warning in self.registry.warnings:
            log.warning("%s", warning)
        settings = self._listen_settings(self.registry.server)
        _set_torch_threads(settings.torch_threads)
        self.models = Models(settings.resolved_state_dir())
        app = create_app(self.models, settings.max_request_bytes, self.status,
                         Admission(settings.threads))
        self.auth = auth.install(app, self.models, self.registry.server.auth)
        self.inflight = InFlight(app.wsgi_app)
        app.wsgi_app = self.inflight
        self.wire = wire.Wire(settings.max_request_bytes)
        self.server = self._bind(
            app,
            host=settings.host,
            port=settings.port,
            # forecasts hold at most a share of the threads (tsfmd/core/admission.py); the rest,
            # and health checks ahead of waiting forecasts, keep answering during a burst
            _dispatcher=LanedDispatcher(settings.threads),
            **capacity_settings(settings.threads),
            # waitress's own cap sits above Flask's so the JSON 413 answers first
            max_request_body_size=settings.max_request_bytes + 65536,
            ident="tsfmd",
            clear_untrusted_proxy_headers=True,
            # Keep reading a busy connection so a client that hangs up is seen and its
            # queued forecast dropped (environ["waitress.client_disconnected"]).
            channel_request_lookahead=1,
        )
        self._loop_probe = liveness.LoopProbe(self._trigger)
        self._server_thread = threading.Thread(
            target=self.server.run, name="waitress", daemon=True
        )
        self._server_thread.start()
        log.info("listening on %s with registry %s (%d models enabled)", self.address,
                 self.config_path, len(self.registry.enabled))
        self._write_runtime_address()
        self._start_watchdog()
        self.notifier.status(f"listening on {self.address}; loading "
                             f"{len(self.registry.enabled)} model(s)")
        self.models.apply(self.registry.enabled, self._loading_progress)
        self.reloads["last_success_time"] = time.time()  # the first load counts, as Prometheus'
        self.notifier.ready(self.models.table.summary())
        log.info("ready: %s", self.models.table.summary())

    def _listen_settings(self, settings: ServerSettings) -> ServerSettings:
        host, port = self.listen_override
        return dataclasses.replace(settings, host=host or settings.host,
                                   port=settings.port if port is None else port)

    def _bind(self, app, **options):
        """waitress.create_server, with tsfmd's channels (JSON error pages, the stop) and a
        bind failure that names the address."""
        try:
            server = waitress.create_server(app, **options)
        except OSError as exc:
            raise ListenError(listen_advice(options["host"], options["port"], exc,
                                            self.config_path)) from exc
        listeners = _listeners_of(server)
        wire.install(listeners, self.wire)
        self._trigger = listeners[0].trigger
        return server

    @property
    def address(self) -> str:
        settings = self._listen_settings(self.registry.server)
        host = getattr(self.server, "effective_host", settings.host)
        port = getattr(self.server, "effective_port", settings.port)
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def _write_runtime_address(self) -> None:
        """Under systemd (RuntimeDirectory=), leave the address where `tsfmd reload` finds it."""
        runtime_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        if not runtime_dir:
            return
        try:
            with open(os.path.join(runtime_dir, "address"), "w", encoding="utf-8") as f:
                f.write(self._self_url("") + "\n")
        except OSError as exc:  # only `tsfmd reload` needs it; serving goes on
            log.warning("cannot write %s/address: %s", runtime_dir, exc)
        self.auth.write_reload_token(runtime_dir)

    def _loading_progress(self, text: str) -> None:
        # Long loads (big checkpoints, first download) must not trip systemd's start timeout.
        self.notifier.extend_timeout(30.0, text)

    # -- the main loop -----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())

    def run_until_stopped(self) -> None:
        while not self._stop.is_set():
            if self._reload.wait(timeout=0.5):
                self._reload.clear()
                if not self._stop.is_set():
                    self.reload()
        self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    # -- reload ------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the registry. An invalid one is refused whole and the current models keep
        serving. A valid one applies model by model: a model whose new version fails to
        load keeps its working version, and the reload counts as failed when that model is
        required (exit 1 of `tsfmd reload`); the models that did load serve."""
        self.reloads["started"] += 1
        self.notifier.reloading(time.monotonic_ns() // 1000)
        log.info("reloading registry %s", self.config_path)
        try:
            registry = load_registry(self.config_path)
        except RegistryError as exc:
            return self._reload_failed(exc.problems)
        for warning in registry.warnings:
            log.warning("%s", warning)
        if registry.server != self.registry.server:
            log.warning("reload: server settings changed; they take effect at the next restart")
        try:
            outcome = self.models.apply(registry.enabled, self._loading_progress,
                                        quiesce=self._quiesce)
        except Exception as exc:  # a bug in a family must not take the daemon down
            log.exception("reload: applying the new registry failed")
            return self._reload_failed([f"applying the registry failed: {exc}"])
        self.registry = registry
        self.auth.update(registry.server.auth)  # validated with the registry: tokens read
        failed = [f"{key} failed to load: {outcome.failures[key]}"
                  for key in outcome.required_failures]
        # a required model that is down after the reload fails it too, whether this apply
        # tried it or not (e.g. it just became required): /readyz would be 503
        failed += [f"{h.key} is required and not available: {h.reason}"
                   for h in self.models.table.handles.values()
                   if h.spec.required and h.status == FAILED
                   and h.key not in outcome.required_failures]
        if failed:
            return self._reload_failed(failed, outcome.changes)
        warnings = [f"{key} (not required) failed to load: {why}"
                    for key, why in outcome.failures.items()]
        for warning in warnings:
            log.warning("reload: %s", warning)
        self.reloads.update(succeeded=self.reloads["succeeded"] + 1, last_successful=True,
                            last_error="", last_warnings=warnings, last_changes=outcome.changes,
                            last_success_time=time.time())
        self.reloads["finished"] += 1  # last: `tsfmd reload` reads the rest once it moves
        self.notifier.ready(f"reloaded: {self.models.table.summary()}")
        log.info("reload done: %s", self.models.table.summary())
        return True

    def _quiesce(self) -> None:
        """After the route switch: let requests that took a replaced model finish on it."""
        left = self.inflight.wait_for_earlier(DRAIN_SECONDS)
        if left:
            log.warning("reload: %d request(s) from before the switch still run after %.0fs; "
                        "closing the replaced models anyway", left, DRAIN_SECONDS)

    def _reload_failed(self, problems, applied: Optional[dict] = None) -> bool:
        """Record a failed reload: refused whole (`applied` None: the registry was invalid)
        or applied except the models named in `problems` (`applied`: what it did)."""
        self.reloads.update(failed=self.reloads["failed"] + 1, last_successful=False,
                            last_error="; ".join(problems), last_warnings=[],
                            last_changes=applied or {})
        self.reloads["finished"] += 1
        summary = self.models.table.summary()
        head = f"reload failed ({len(problems)} problem(s): {problems[0]})"
        if applied is None:
            log.error("reload refused, still serving the previous registry: %s",
                      self.reloads["last_error"])
            self.notifier.ready(f"{head}; {summary} from the previous registry")
        else:
            log.error("reload failed for %d required model(s), the rest of the registry "
                      "applies: %s", len(problems), self.reloads["last_error"])
            self.notifier.ready(f"{head}; the rest applied: {summary}")
        return False

    def status(self) -> dict:
        """What /v1/status reports about the daemon itself. Asked from a request (the
        /v1/status handler), that request is not counted in `in_flight`."""
        in_flight = self.inflight.count if self.inflight else 0
        if in_flight and has_request_context():
            in_flight -= 1
        return {
            "pid": os.getpid(),
            "registry": self.config_path,
            "summary": self.models.table.summary() if self.models else "starting",
            "reloads": {k: (copy.deepcopy(v) if isinstance(v, (dict, list)) else v)
                        for k, v in self.reloads.items()},
            "in_flight": in_flight,
        }

    # -- stop --------------------------------------------------------------------------

    def stop(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Stop accepting, answer what was accepted (each with `Connection: close`), close
        the idle keep-alive connections, then release the models; bounded by drain_seconds."""
        self._stop.set()  # also ends the watchdog thread when stop() is called directly
        self.notifier.stopping()
        log.info("stopping: no new connections; waiting for %d request(s) in flight",
                 self.inflight.count if self.inflight else 0)
        deadline = time.monotonic() + drain_seconds
        if self.server is not None:
            self._close_listeners()
            while time.monotonic() < deadline and not self._drained():
                time.sleep(0.05)
            if not self._drained():
                log.warning("stopping with %d request(s) still in flight and %d connection(s) "
                            "open after %.0fs", self.inflight.count, len(self._channels()),
                            drain_seconds)
        if self.models is not None:
            self._release_models(deadline)
        log.info("stopped")

    def _release_models(self, deadline: float) -> None:
        """Close the models within what is left of the stop's bound (at least a second). A
        forward pass still running then is abandoned: `abandoned_work` tells the caller to
        end the process without waiting for it (systemd's TimeoutStopSec is near)."""
        closer = threading.Thread(target=self.models.close, name="close-models", daemon=True)
        closer.start()
        closer.join(max(1.0, deadline - time.monotonic()))
        if closer.is_alive():
            self.abandoned_work = True
            log.warning("stopping: a forward pass still runs at the end of the stop's bound; "
                        "exiting without waiting for it")

    def _listeners(self):
        return _listeners_of(self.server)

    def _channels(self):
        return [d for d in list(_server_map(self.server).values()) if isinstance(d, HTTPChannel)]

    def _in_loop(self, work, timeout: float = 5.0):
        """Run `work` in waitress's loop thread (asyncore's sockets are its own); its result,
        or None if the loop did not run it in time."""
        if self._server_thread is None or not self._server_thread.is_alive():
            return work()  # no loop (never started, or gone): nothing races us
        done, result = threading.Event(), []

        def run():
            try:
                result.append(work())
            finally:
                done.set()

        self._trigger.pull_trigger(run)
        return result[0] if done.wait(timeout) and result else None

    def _close_listeners(self) -> None:
        def close_in_loop():
            for listener in self._listeners():
                listener.accepting = False
                # connections the kernel already completed get served, not reset
                taken = wire.accept_backlog(listener, listener.adj.backlog)
                if taken:
                    log.info("stopping: took %d connection(s) waiting in the backlog", taken)
                listener.del_channel()
                listener.socket.close()
            # after the listener is gone: a client told `Connection: close` that reconnects
            # is refused, never left in a backlog about to be reset
            self.wire.begin_stop()

        self._in_loop(close_in_loop)

    def _drained(self) -> bool:
        """Every request answered and flushed, every connection closed (idle ones by the
        sweep, busy ones by their own `Connection: close` answer)."""
        remaining = self._in_loop(lambda: wire.sweep(self._channels(), self.wire))
        return remaining == 0 and not self.inflight.count

    def _start_watchdog(self) -> None:
        watchdog_sec = watchdog_seconds()
        if watchdog_sec <= 0:
            return
        threading.Thread(
            target=self._watchdog_loop, args=(watchdog_sec,), name="watchdog", daemon=True
        ).start()
        log.info("watchdog: pinging systemd (WatchdogSec %gs) while the server loop and every "
                 "model worker run", watchdog_sec)

    def _watchdog_loop(self, watchdog_sec: float) -> None:
        """Ping WATCHDOG=1 from in-process liveness, never from an HTTP request (a burst may
        hold every request thread): pings stop once the server loop has not run for half of
        WatchdogSec, or a model's worker died or is wedged; the log says which."""
        period = min(watchdog_sec / 4, 2.0)
        loop_stale = watchdog_sec / 2
        worker_stale = max(watchdog_sec / 2, 10.0)
        while not self._stop.is_set():
            handles = self.models.table.handles.values() if self.models else ()
            found = liveness.problems(self._loop_probe, handles, loop_stale, worker_stale)
            if found:
                log.error("watchdog: not pinging systemd: %s", "; ".join(found))
            else:
                self.notifier.watchdog()
            self._loop_probe.pull()
            self._stop.wait(period)

    def _self_url(self, path: str) -> str:
        host = client_host(str(getattr(self.server, "effective_host", "127.0.0.1")))
        return f"http://{host}:{self.server.effective_port}{path}"


def _server_map(server) -> dict:
    """asyncore's map of a server: one listener's, or a MultiSocketServer's (several)."""
    return getattr(server, "_map", None) or getattr(server, "map", {})


def _listeners_of(server) -> list:
    return [d for d in list(_server_map(server).values()) if isinstance(d, BaseWSGIServer)]


def _set_torch_threads(configured: Optional[int]) -> None:
    """Intra-op threads = the cores this process may use, once, unless the registry says."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = configured or max(1, usable or 1)
    torch.set_num_threads(threads)
    os.environ[THREADS_ENV] = str(threads)  # for the workers it starts (tsfmd/runners)
    log.info("torch intra-op threads: %d%s", threads,
             " (server.torch_threads)" if configured else "")
