"""Logging for journald: one line per event, a level prefix, no timestamps of our own
when systemd's journal adds them, timestamps otherwise.

Under journald each line also starts with the kernel-style priority `<N>` (sd-daemon(3)),
which journald strips and stores as the entry's priority, so `journalctl -p warning -u tsfmd`
finds warnings and errors; the level name stays in the text for people reading it.
"""
from __future__ import annotations

import logging
import os
import sys

#: logging level -> syslog priority (sd-daemon.h SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG)
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


def stderr_goes_to_journal() -> bool:
    """True when stderr is the journal stream systemd set up (JOURNAL_STREAM is dev:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "INFO") -> None:
    under_journal = stderr_goes_to_journal()
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journal:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(fmt, priority_prefix=under_journal))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # waitress logs queue depth warnings under its own name; keep them, at WARNING.
    logging.getLogger("waitress").setLevel(logging.WARNING)


class _OneLine(logging.Formatter):
    """Tracebacks folded onto the event's line so journald keeps one entry per event."""

    def __init__(self, fmt: str, priority_prefix: bool = False):
        super().__init__(fmt)
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).replace("\n", " | ")
        if self.priority_prefix:
            line = f"<{_priority(record.levelno)}>{line}"
        return line


def _priority(levelno: int) -> int:
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7
