"""What tsfmd changes in waitress's HTTP handling: its own error pages, and the stop.

waitress answers some requests itself, before the app sees them: a malformed request, a bad
chunk size or Content-Length, a body over its cap, headers too large. Its pages are
text/plain and name its own cap; here they are the JSON body every tsfmd error is
({"status": "error", "error": ...}), stating the configured server.max_request_bytes.

On stop, `Wire.begin_stop()` makes every response from then on carry `Connection: close`
(an app may not send that hop-by-hop header itself: waitress refuses it), so each
keep-alive connection ends cleanly after the answer it is being served. `sweep()` closes
the connections left idle: only past a grace after the stop began (a client that was about
to send on one gets that request answered, with `Connection: close`), and never one with
a request in progress, a partial request, unsent output or unread input.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Iterable, Optional

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask
from waitress.utilities import (BadRequest, InternalServerError, RequestEntityTooLarge,
                                RequestHeaderFieldsTooLarge, ServerNotImplemented)

from tsfmd.daemon.waitress_hooks import ArrivalParser, ArrivalTask

#: how long a connection idle when the stop began may still bring one more request
IDLE_GRACE_SECONDS = 2.0


def too_large_message(limit: int) -> str:
    """The one wording of a body over the limit, from Flask's check and from waitress's."""
    return (f"the body is larger than the server's limit of {limit} bytes "
            "(server.max_request_bytes)")


class Wire:
    """What tsfmd's channels need from the daemon: the configured limit and the stop."""

    def __init__(self, max_request_bytes: int):
        self.max_request_bytes = max_request_bytes
        self.stopping = threading.Event()
        self.stop_began = 0.0  # time.time(), as waitress's last_activity
        self.idle_grace = IDLE_GRACE_SECONDS

    def begin_stop(self) -> None:
        self.stop_began = time.time()
        self.stopping.set()

    def describe(self, error, adj) -> str:
        """The sentence a client reads for one of waitress's own errors."""
        if isinstance(error, RequestEntityTooLarge):
            return too_large_message(self.max_request_bytes)
        if isinstance(error, RequestHeaderFieldsTooLarge):
            return (f"the request headers are larger than the server's limit of "
                    f"{adj.max_request_header_size} bytes")
        if isinstance(error, ServerNotImplemented):
            return f"not implemented: {error.body} (send identity or chunked bodies)"
        if isinstance(error, BadRequest):
            return f"malformed HTTP request: {error.body}"
        if isinstance(error, InternalServerError):
            return "internal error while answering the request"
        return f"{error.reason}: {error.body}"


class JsonErrorTask(ErrorTask):
    """waitress's error answer, as JSON; the connection still closes after it."""

    def execute(self):
        error = self.request.error
        message = self.channel.server.tsfmd_wire.describe(error, self.channel.adj)
        body = json.dumps({"status": "error", "error": message}).encode("utf-8")
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class StoppableTask(ArrivalTask):
    """A WSGI answer (stamped with its arrival) that says `Connection: close` once the daemon
    is stopping."""

    def build_response_header(self):
        if self.channel.server.tsfmd_wire.stopping.is_set():
            # as if the client had asked to close: waitress then says `Connection: close`
            # and closes after this answer, for HTTP/1.1 and for HTTP/1.0 keep-alive alike
            self.request.headers["CONNECTION"] = "close"
        return super().build_response_header()


class TsfmdChannel(HTTPChannel):
    """The one channel class tsfmd's listeners open: arrival stamps, JSON errors, the stop."""

    parser_class = ArrivalParser
    task_class = StoppableTask
    error_task_class = JsonErrorTask

    def idle_since(self) -> Optional[float]:
        """When this connection went quiet with nothing owed to the client, else None."""
        if (self.requests or self.request is not None or self.total_outbufs_len
                or self.will_close or self.close_when_flushed):
            return None
        return self.last_activity

    def has_unread_input(self) -> bool:
        """Bytes the client sent that waitress has not read yet (a request on its way)."""
        try:
            return bool(self.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False  # a broken socket owes nobody an answer


def install(listeners: Iterable[BaseWSGIServer], wire: Wire) -> None:
    """Make `listeners` (the servers waitress.create_server made) use tsfmd's channels.
    Done before the loop runs, so every accepted connection gets one."""
    for listener in listeners:
        listener.channel_class = TsfmdChannel
        listener.tsfmd_wire = wire


def accept_backlog(listener: BaseWSGIServer, most: int) -> int:
    """Take the connections the kernel completed but waitress has not accepted yet: closing
    the listening socket would reset them, requests included. Run in the loop thread."""
    taken = 0
    while taken < most:
        try:
            conn, addr = listener.socket.accept()
        except OSError:  # BlockingIOError: the backlog is empty
            break
        listener.set_socket_options(conn)
        listener.channel_class(listener, conn, listener.fix_addr(addr), listener.adj,
                               map=listener._map)
        taken += 1
    return taken


def sweep(channels: Iterable[HTTPChannel], wire: Wire, now: Optional[float] = None) -> int:
    """Close the connections idle beyond the grace since the later of their last activity
    and the stop; return how many remain open. Run in the loop thread (it owns the sockets)."""
    now = time.time() if now is None else now
    remaining = 0
    for channel in channels:
        since = channel.idle_since() if isinstance(channel, TsfmdChannel) else None
        if since is not None and now - max(since, wire.stop_began) >= wire.idle_grace \
                and not channel.has_unread_input():
            channel.handle_close()
            continue
        remaining += 1
    return remaining
