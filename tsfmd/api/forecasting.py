"""Run one forecast, or a batch of them, through a model the way every API must.

The path is the same for TDgpt's route and every API beside it:
  handle.ready_capabilities()   503 while the model loads or after it failed
  admission.enter(...)          503 + Retry-After at once when the model is over budget,
                                before the body is parsed (tsfmd/core/admission.py)
  build(caps)                   the API parses its own body into ForecastRequests
                                (core.request.prepare), knowing the model's capabilities
  handle.submit(...)            the model's executor (its batcher), deadline from arrival
  ticket.release()

Admission for many series: one admission per series in flight. A request of N series
runs them through a window of W = min(N, the model's batch size, its admission limit)
slots, all W admitted at once or none (503 + Retry-After, before any series runs), so a
request never fills more than one batch and a model's queue bound stays true. The W
series in flight go to the batcher concurrently and batch with everything else; the first
error stops the rest and is the answer: never a partial one.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from tsfmd.core import errors
from tsfmd.core.admission import Admission
from tsfmd.core.request import ForecastRequest
from tsfmd.families.base import Capabilities, Forecast


@dataclass
class Served:
    """What a model answered: its capabilities, the requests as run, one forecast each."""

    caps: Capabilities
    requests: List[ForecastRequest]
    forecasts: List[Forecast]


def forecast_series(
    handle, admission: Admission, build: Callable[[Capabilities], Sequence[ForecastRequest]],
    disconnected: Optional[Callable[[], bool]] = None, arrived: Optional[float] = None,
    per_series: Tuple[type, ...] = (),
) -> Served:
    """Admit, build the requests (`build(caps)`), run them all, release: see the module.
    Errors of the kinds in `per_series` (for an API that answers each series on its own,
    like KServe's) are kept as that series' outcome instead of failing the request."""
    caps = handle.ready_capabilities()
    tickets = [admission.enter(handle.key, handle.executor)]  # before the body is parsed
    try:
        requests = list(build(caps))
        window = max(1, min(len(requests), handle.executor.running_slots,
                            admission.limit(handle.executor)))
        while len(tickets) < window:
            tickets.append(admission.enter(handle.key, handle.executor))
        forecasts = _run_all(handle, requests, window, disconnected, arrived, per_series)
    except errors.Unsupported as exc:
        raise errors.Unsupported(f"model {handle.key}: {exc}", exc.field) from exc
    finally:
        for ticket in tickets:
            ticket.release()
    return Served(caps, requests, forecasts)


def _run_all(handle, requests: List[ForecastRequest], window: int, disconnected,
             arrived, per_series: Tuple[type, ...] = ()) -> list:
    """Each request's forecast (or its per-series error), `window` submitted at once."""
    if len(requests) == 1 and not per_series:  # on the request's own thread, as TDgpt's
        return [handle.submit(requests[0], disconnected, arrived)]
    answers: List[Optional[Forecast]] = [None] * len(requests)
    failures: List[BaseException] = []
    lock = threading.Lock()
    pending = iter(range(len(requests)))

    def work() -> None:
        while True:
            with lock:
                index = None if failures else next(pending, None)
            if index is None:
                return
            try:
                answers[index] = handle.submit(requests[index], disconnected, arrived)
            except per_series as exc:  # this series' own answer; the others go on
                answers[index] = exc
            except BaseException as exc:  # the first failure is the request's answer
                with lock:
                    failures.append(exc)

    helpers = [threading.Thread(target=work, name=f"series-{handle.key}", daemon=True)
               for _ in range(window - 1)]
    for thread in helpers:
        thread.start()
    work()  # the request's own thread is one of the window's slots
    for thread in helpers:
        thread.join()
    if failures:
        raise failures[0]
    return answers  # type: ignore[return-value]
