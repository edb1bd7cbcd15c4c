"""Fill the gaps of series through a model that imputes (TDgpt's imputation, MOMENT).

The path every imputation API takes, below HTTP:
  handle.ready_capabilities()   Unavailable while the model loads or after it failed
  "impute" in caps.tasks        else Unsupported: the model only forecasts
  admission.enter(...)          the same thread budget as forecasts (tsfmd/core/admission.py)
  build(caps)                   the API turns its body into float64 series, NaN = missing
  check_series                  finite or NaN, bounded length, enough observed points
  the model's gate              one imputation at a time per loaded model, first come first
                                served; a request that cannot start within the model's
                                batching.timeout_s since it arrived gets Overloaded
  runner.impute(series, deadline)  the runner (in-process, or the model's worker) runs it;
                                a worker that misses the deadline is killed (504)
  check_answer                  one finite array per series, as long as it, every observed
                                point exactly as sent; anything else is a ModelFault

Imputation is not batched: TDgpt sends one series per request and MOMENT splits a long one
into windows itself, so a request is one call (`runner.impute` gets all its series at once).
"""
from __future__ import annotations

import threading
import time
import weakref
from typing import Callable, List, Optional, Sequence

import numpy as np

from tsfmd.core import errors
from tsfmd.core.admission import Admission
from tsfmd.core.batching import start_of
from tsfmd.core.executor import SerialExecutor
from tsfmd.families.base import Capabilities

#: the longest series (after an API completed its time grid) one request may hold: about
#: 200 of MOMENT's 512-point windows, seconds of CPU for MOMENT-small
MAX_POINTS = 100_000

_gates: "weakref.WeakKeyDictionary[object, SerialExecutor]" = weakref.WeakKeyDictionary()
_gates_lock = threading.Lock()


def impute_series(
    handle, admission: Admission, build: Callable[[Capabilities], Sequence[np.ndarray]],
    disconnected: Optional[Callable[[], bool]] = None, arrived: Optional[float] = None,
) -> List[np.ndarray]:
    """Admit, build the series (`build(caps)`), impute them, release: see the module."""
    caps = handle.ready_capabilities()
    if "impute" not in caps.tasks:
        raise errors.Unsupported(
            f"model {handle.key} forecasts; it does not impute (send TDgpt's forecast body)")
    ticket = admission.enter(handle.key, handle.executor)  # before the body is parsed
    try:
        series = [check_series(s, caps, handle.key, i) for i, s in enumerate(build(caps))]
        if not any(np.isnan(s).any() for s in series):
            return [s.copy() for s in series]  # nothing to fill: the model need not run
        runner = handle.runner
        gate = _gate(runner, handle)
        deadline = start_of(arrived, time.monotonic()) + gate.timeout_s
        try:
            with gate.holding(deadline, disconnected):
                began = time.monotonic()
                # on the model's own thread; a worker past its deadline is replaced: 504
                filled = gate.run_on_model(runner.impute, series, deadline)
                gate.stats.record_batch(1, time.monotonic() - began)
        except errors.Unsupported as exc:  # the family's own refusal: say which model
            raise errors.Unsupported(f"model {handle.key}: {exc.message}", exc.field) from exc
        return check_answer(series, filled, handle.key)
    finally:
        ticket.release()


def check_series(values, caps: Capabilities, model: str, index: int = 0) -> np.ndarray:
    """One series as float64 with NaN gaps, or BadInput saying what is wrong with it."""
    values = np.asarray(values, dtype=np.float64)
    where = "the series" if index == 0 else f"series {index}"
    if values.ndim != 1 or values.size == 0:
        raise errors.BadInput(f"{where} must be a non-empty list of numbers")
    if values.size > MAX_POINTS:
        raise errors.BadInput(
            f"{where} has {values.size} points; tsfmd imputes at most {MAX_POINTS} per "
            "request: send a shorter time range")
    if np.isinf(values).any():
        at = np.flatnonzero(np.isinf(values))[:10].tolist()
        raise errors.BadInput(f"{where} has infinite values at positions {at}")
    observed = int(np.count_nonzero(~np.isnan(values)))
    needed = max(1, caps.min_context)
    if observed < needed:
        raise errors.BadInput(
            f"{where} has {observed} observed points; model {model} needs at least {needed} "
            "to fill the others")
    return values


def check_answer(series: Sequence[np.ndarray], filled, model: str) -> List[np.ndarray]:
    """The model's answer, if it keeps the contract of Family.impute; else a ModelFault."""
    if len(filled) != len(series):
        raise errors.ModelFault(
            f"model {model} answered {len(filled)} series for {len(series)}")
    answers = []
    for values, answer in zip(series, filled):
        answer = np.asarray(answer, dtype=np.float64)
        if answer.shape != values.shape:
            raise errors.ModelFault(
                f"model {model} answered {answer.shape[0] if answer.ndim else 0} points for "
                f"a series of {values.size}")
        if not np.isfinite(answer).all():
            raise errors.ModelFault(f"model {model} left gaps or non-finite values unfilled")
        observed = ~np.isnan(values)
        if not np.array_equal(answer[observed], values[observed]):
            raise errors.ModelFault(f"model {model} changed observed points while imputing")
        answers.append(answer)
    return answers


def _gate(runner, handle) -> SerialExecutor:
    """The one-at-a-time gate of a loaded model, shared by every handle around it (a
    settings-only reload keeps the model and its queue). Only its waiting is used, so it
    holds no reference to the runner: a retired model's memory and gate go together."""
    with _gates_lock:
        gate = _gates.get(runner)
        if gate is None:
            gate = _gates[runner] = SerialExecutor(None, handle.key, handle.spec.batching)
        return gate
