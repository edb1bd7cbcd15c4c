"""Logging for journald: one line per event, a level prefix, no timestamps of our own
when systemd's journal adds them (JOURNAL_STREAM is set), timestamps otherwise."""
from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "INFO") -> None:
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journal:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # waitress logs queue depth warnings under its own name; keep them, at WARNING.
    logging.getLogger("waitress").setLevel(logging.WARNING)


class _OneLine(logging.Formatter):
    """Tracebacks folded onto the event's line so journald keeps one entry per event."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")
