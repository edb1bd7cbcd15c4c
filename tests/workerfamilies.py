"""A test-only family for the worker-process tests: it misbehaves on cue.

No real family segfaults or hangs on demand, so the fault tests use this one (registered
with tsfmd.families.register_family and imported by the worker through TSFMD_WORKER_PATH).
It imports only numpy, so its worker starts in a fraction of a second. Its cues, all through
`options:` or the request's values, so they work across the process boundary:
- options.crash_on_load_if: a path; when that file exists, `load` writes a line to stderr
  and segfaults (ctypes.string_at(0)), as a broken native library would;
- options.hang_on_load: true: `load` never returns (a library wedged while loading);
- options.gate_dir: a directory; each forecast creates `entered` there, then waits for a
  file `release` (a request held in flight while the test kills the worker);
- a series whose first value is HANG: forecast blocks forever (a wedged library);
- a series whose first value is BAD: the family raises BadInput (a 400 the worker forwards);
- a series whose first value is BOOM: the family raises RuntimeError (the model's fault).
The forecast itself is exact arithmetic: the last value plus the step number; `impute`
fills each missing point with the mean of the observed ones.
"""
from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from tsfmd.core.errors import BadInput
from tsfmd.families.base import Capabilities, Family, Forecast, LoadSpec, SeriesInput

HANG, BAD, BOOM = -7777.0, -8888.0, -9999.0


class FaultFamily(Family):
    name = "fault-test"
    option_values = {"crash_on_load_if": str, "gate_dir": str, "hang_on_load": bool}

    @classmethod
    def check_source(cls, spec: LoadSpec) -> None:
        """Nothing to find on disk."""

    @classmethod
    def weights_location(cls, spec: LoadSpec):
        return None

    def __init__(self, options):
        self.options = dict(options)

    @classmethod
    def load(cls, spec: LoadSpec) -> "FaultFamily":
        marker = spec.options.get("crash_on_load_if")
        print(f"fault-test: loading {spec.key} in pid {os.getpid()}", file=sys.stderr)
        if marker and Path(marker).exists():
            print("fault-test: the native library is about to crash", file=sys.stderr,
                  flush=True)
            ctypes.string_at(0)  # SIGSEGV
        while spec.options.get("hang_on_load"):
            time.sleep(3600)
        return cls(spec.options)

    def capabilities(self) -> Capabilities:
        return Capabilities(context_limit=512, horizon_limit=64, min_context=1)

    def warm_up(self) -> None:
        """No gate or cue at warm-up."""

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        first = float(batch[0].values[0])
        if first == HANG:
            while True:
                time.sleep(3600)
        if first == BAD:
            raise BadInput("fault-test refuses this series", field="input")
        if first == BOOM:
            raise RuntimeError("fault-test broke")
        gate = self.options.get("gate_dir")
        if gate:
            (Path(gate) / "entered").touch()
            while not (Path(gate) / "release").exists():
                time.sleep(0.01)
        steps = np.arange(1, horizon + 1, dtype=np.float64)
        point = np.stack([float(s.values[-1]) + steps for s in batch])
        return Forecast(point=point)

    def impute(self, batch: Sequence[np.ndarray]):
        filled = []
        for values in batch:
            values = np.array(values, dtype=np.float64)
            values[np.isnan(values)] = np.nanmean(values)
            filled.append(values)
        return filled
