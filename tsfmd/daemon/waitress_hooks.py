"""What tsfmd changes in waitress so that overload is answered, not queued out of sight.

* Arrival: each request is stamped (time.monotonic()) when waitress reads its first bytes
  and the stamp reaches the app as environ["tsfmd.arrived"], so a forecast's deadline counts
  the time it waited for a request thread (`ArrivalParser`, `ArrivalTask`; tsfmd/daemon/wire.py's
  channel uses both).
* Lanes: waitress hands requests to its threads first come, first served. `LanedDispatcher`
  lets every request that cannot block (anything but a POST: /healthz, /readyz, /v1/*) go
  before the POSTs waiting for a thread, so health checks never queue behind a burst.
* Capacity (`capacity_settings`): waitress stops accepting at `connection_limit` open
  connections (default 100), after which new ones, /healthz included, wait unanswered in the
  kernel's listen backlog. tsfmd accepts as many as its file descriptors allow (a burst gets
  quick 503s instead), polls them with poll() rather than select() (no FD_SETSIZE cap), and
  keeps a deep backlog.
"""
from __future__ import annotations

import logging
import resource
import time

from waitress.parser import HTTPRequestParser
from waitress.task import ThreadedTaskDispatcher, WSGITask

log = logging.getLogger("tsfmd.server")

#: the WSGI environ key holding the request's arrival (time.monotonic())
ARRIVED = "tsfmd.arrived"
#: connections tsfmd aims to accept at most, and the descriptors kept for everything else
MAX_CONNECTIONS = 4096
_SPARE_FDS = 256
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


class ArrivalParser(HTTPRequestParser):
    def __init__(self, adj):
        super().__init__(adj)
        # waitress makes one parser per request, when that request's first bytes are read
        self.arrived = time.monotonic()


class ArrivalTask(WSGITask):
    def get_environment(self):
        environ = super().get_environment()
        environ[ARRIVED] = getattr(self.request, "arrived", None)
        return environ


class _NonBlocking:
    """A queued channel whose request cannot block a thread (it is served first)."""

    def __init__(self, channel):
        self.channel = channel

    def service(self):
        self.channel.service()

    def cancel(self):
        self.channel.cancel()


def _may_block(channel) -> bool:
    requests = getattr(channel, "requests", None)
    request = requests[0] if requests else None
    return request is not None and request.error is None and request.command == "POST"


class LanedDispatcher(ThreadedTaskDispatcher):
    """waitress's thread pool, with requests that cannot block ahead of forecast POSTs."""

    def __init__(self, threads: int):
        super().__init__()
        self.set_thread_count(threads)

    def add_task(self, task):
        # waitress calls this with the channel's requests_lock held: requests[0] is stable
        with self.lock:
            if _may_block(task):
                self.queue.append(task)
            else:
                at = 0
                while at < len(self.queue) and isinstance(self.queue[at], _NonBlocking):
                    at += 1
                self.queue.insert(at, _NonBlocking(task))
            self.queue_cv.notify()


def capacity_settings(threads: int) -> dict:
    """waitress arguments about how many connections and requests tsfmd takes at once."""
    limit = connection_limit()
    log.info("accepting up to %d connections, %d request threads", limit, threads)
    return {
        "threads": threads,
        "connection_limit": limit,
        "backlog": LISTEN_BACKLOG,
        "asyncore_use_poll": True,
    }


def connection_limit() -> int:
    """As many connections as the descriptor limit allows, up to MAX_CONNECTIONS (raising the
    soft limit where permitted; systemd's @resources filter forbids it: then LimitNOFILE=)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + _SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.info("keeping the open-files limit of %d (%s)", soft, exc)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(100, min(MAX_CONNECTIONS, soft - _SPARE_FDS))
