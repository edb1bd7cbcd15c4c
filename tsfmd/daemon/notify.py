"""systemd's readiness protocol (sd_notify): datagrams to $NOTIFY_SOCKET.

A few lines of our own rather than a dependency: the protocol is one sendto() per message.
Outside systemd (no NOTIFY_SOCKET) every call does nothing.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("tsfmd.notify")


class Notifier:
    def __init__(self, address: str = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self.address = address

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:  # systemd gone or socket full: never fatal for serving
            log.warning("sd_notify failed: %s", exc)

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def ready(self, text: str) -> None:
        self.send("READY=1", f"STATUS={text}")

    def reloading(self, monotonic_usec: int) -> None:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload);
        # older ones ignore the extra field.
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading registry")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: finishing requests in flight")

    def extend_timeout(self, seconds: float, text: str) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}", f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def watchdog_seconds() -> float:
    """systemd's WatchdogSec for this process (WATCHDOG_USEC), or 0 when not asked for."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 1_000_000
