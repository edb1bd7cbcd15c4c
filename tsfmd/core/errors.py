"""Domain errors: why tsfmd will not (or could not) answer a forecast, with no HTTP in them.

Everything below the HTTP layer (request checks, the model table, executors, families)
raises these; `tsfmd/api/statuses.py` gives each its HTTP status once, and each API shapes
its own error body around it. `retry_after` is seconds, for the APIs that can say when to come back.
"""
from __future__ import annotations

from typing import Optional


class ServeError(Exception):
    """Base of every domain error; `message` is the sentence a user reads."""

    def __init__(self, message: str, retry_after: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadInput(ServeError):
    """The request itself is wrong; `field` names the part that is (when there is one)."""

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


class Unsupported(BadInput):
    """The request asks for something this model cannot do (a covariate, an option)."""


class NotFound(ServeError):
    """No model answers at that route or key."""


class Overloaded(ServeError):
    """The model cannot take the request now (queue full, waited too long to start, or
    shutting down); it never ran, so retrying later is safe."""


class DeadlineExceeded(ServeError):
    """The forecast started but did not finish within its deadline."""


class Unavailable(ServeError):
    """The model is loading, failed to load, or was unloaded."""


class ClientGone(ServeError):
    """The caller hung up before its forecast ran; nobody reads the answer."""


class ModelFault(ServeError):
    """The model ran but its answer is unusable (non-finite values, a wrong shape)."""
