"""A model's worker process: `<env python> -m tsfmd.runners.worker`, started by the daemon.

It loads one model and answers the daemon's frames (tsfmd/runners/protocol.py) on its
stdin/stdout: `load` (import the family, load, warm up; answer the capabilities), `forecast`
and `impute` (one batch each), `close`; a standby worker first gets `prepare` (import the
family's module and torch, so that a restart skips the interpreter's start and imports).
Anything the family or its libraries print goes to stderr, which the daemon reads and logs:
the reply pipe is a private copy of stdout, and fd 1 then points at stderr. The worker ends with the daemon: the kernel SIGKILLs it when
the daemon dies (PR_SET_PDEATHSIG), it exits when its parent is not the daemon that
started it, and at the end of its request pipe.
Only the stdlib, numpy and the family's own modules are imported here.
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import signal
import sys
import traceback

from tsfmd.families.base import LoadSpec
from tsfmd.runners import THREADS_ENV, protocol
from tsfmd.runners.inprocess import load_family, run_forecast, run_impute

#: the daemon's pid, set by the ProcessRunner
PARENT_ENV = "TSFMD_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> bool:
    """Ask the kernel for SIGKILL when the parent dies, then check the parent is still the
    daemon (it may have died before the request took effect)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe's end still ends the worker
        pass
    expected = os.environ.get(PARENT_ENV)
    return expected is None or os.getppid() == int(expected)


def _private_pipes():
    """The request and reply streams, and fds 0/1 made harmless for library code."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # a print() in a library must not corrupt the reply stream
    return requests, replies


def _torch_threads():
    """Give torch, where the family uses it, the daemon's thread count: torch's own default
    (every core) would have each worker fight the daemon and the other workers."""
    torch = sys.modules.get("torch")
    wanted = os.environ.get(THREADS_ENV)
    if torch is None:
        return None
    if wanted:
        torch.set_num_threads(int(wanted))
    return torch.get_num_threads()


def _family_class(target: str):
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


class Worker:
    def __init__(self):
        self.model = None

    def answer(self, header: dict, arrays):
        """(reply header, reply arrays) for one request frame."""
        op = header.get("op")
        if op == "prepare":  # a standby worker: import now what a load will need
            _family_class(header["target"])
            if importlib.util.find_spec("torch") is not None:
                importlib.import_module("torch")  # most families' library; seconds to import
            return {"ok": True, "pid": os.getpid()}, []
        if op == "load":
            spec = LoadSpec(**header["spec"])
            self.model = load_family(_family_class(header["target"]), spec)
            caps = protocol.capabilities_dict(self.model.capabilities())
            return {"ok": True, "capabilities": caps, "pid": os.getpid(),
                    "python": sys.executable, "torch_threads": _torch_threads()}, []
        if op == "close":
            if self.model is not None:
                self.model.close()
            return {"ok": True}, []
        if self.model is None:
            raise RuntimeError(f"op {op!r} before a model was loaded")
        if op == "forecast":
            batch = protocol.decode_series(header["series"], arrays)
            forecast = run_forecast(self.model, batch, int(header["horizon"]))
            reply, out = protocol.forecast_arrays(forecast)
            return dict(reply, ok=True), out
        if op == "impute":
            return {"ok": True}, run_impute(self.model, list(arrays))
        raise protocol.ProtocolError(f"unknown op {op!r}")


def main() -> int:
    if not _die_with_parent():
        print("tsfmd worker: the daemon that started this worker is gone", file=sys.stderr)
        return 3
    requests, replies = _private_pipes()
    worker = Worker()
    while True:
        frame = protocol.read_frame(requests)
        if frame is None:
            return 0  # the daemon closed the request pipe
        header, arrays = frame
        try:
            reply, out = worker.answer(header, arrays)
        except Exception as exc:  # every error goes back typed; the worker serves on
            reply, out = protocol.error_header(exc), []
            if reply["kind"] == "fault":
                traceback.print_exc(file=sys.stderr)
        protocol.write_frame(replies, reply, out)
        if header.get("op") == "close":
            return 0


if __name__ == "__main__":
    sys.exit(main())
