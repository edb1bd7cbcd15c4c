"""GET /metrics: tsfmd's numbers in Prometheus' text format (prometheus_client).

Two kinds of numbers, none counted twice:
  * born with each HTTP answer: `tsfmd_http_requests_total` and the latency histogram
    `tsfmd_http_request_duration_seconds`, by route, model and code (this blueprint's
    app-wide after_request hook observes every answer Flask gives);
  * read at scrape time from what tsfmd counts anyway (`TsfmdCollector`): each model's
    state, load seconds, queue, admission and executor Stats (forecasts, batch sizes,
    rejections, timeouts), and the daemon's reload counters (Daemon.reloads).

Labels stay bounded: `route` is a Flask rule template ("/v1/models", "/<path:path>" for a
path nothing serves) or a registry route, never a raw path; `model` is a key the registry
serves, else ""; `code` is the HTTP status. An API module that serves a model under a route
of its own calls `note_model(key)` so its requests carry the model label (a rule with a
`<key>` part that names a served model gets it without that).

No worker-restart metric: a model's worker is a thread inside tsfmd, never restarted on its
own (a dead or wedged worker stops the systemd watchdog, which restarts the whole daemon);
`process_start_time_seconds` shows those restarts.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

import prometheus_client
from flask import Blueprint, Response, g, request
from prometheus_client import (CollectorRegistry, Counter, GCCollector, Histogram,
                               PlatformCollector, ProcessCollector)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from tsfmd.core.admission import Admission
from tsfmd.core.models import FAILED, LOADING, READY, RESTARTING, Models
from tsfmd.daemon.waitress_hooks import ARRIVED
from tsfmd.version import __version__

#: the label names of the per-request metrics
REQUEST_LABELS = ("route", "model", "code")
#: seconds; forecasts take milliseconds to tens of seconds (batching.timeout_s defaults 50 s)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0,
                   60.0)
#: requests per forward pass
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL_STATES = (LOADING, READY, RESTARTING, FAILED)

_NOTED = "tsfmd_metrics_model"  # flask.g attribute: (model key, route) of this request


def note_model(key: str, route: Optional[str] = None) -> None:
    """Label this request with the model `key` serves it (and `route`, a registry route;
    default the Flask rule). Call once the key is known to be served."""
    if route is None:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    setattr(g, _NOTED, (key, route))


def metrics_blueprint(models: Models, admission: Admission,
                      daemon_status: Optional[Callable[[], dict]] = None) -> Blueprint:
    """The /metrics route and the hook that counts every answer, with a registry of this
    app's own (so several apps in one process never share numbers)."""
    prometheus_client.disable_created_metrics()  # no `_created` series beside each counter
    registry = CollectorRegistry()
    requests_total = Counter(
        "tsfmd_http_requests", "HTTP requests answered, by route, model and status code.",
        REQUEST_LABELS, registry=registry)
    duration = Histogram(
        "tsfmd_http_request_duration_seconds",
        "Seconds from a request's arrival until its answer was ready, by route, model and "
        "status code.", REQUEST_LABELS, buckets=LATENCY_BUCKETS, registry=registry)
    registry.register(TsfmdCollector(models, admission, daemon_status))
    for standard in (ProcessCollector, PlatformCollector, GCCollector):
        standard(registry=registry)

    blueprint = Blueprint("metrics", __name__)

    @blueprint.after_app_request
    def _observe(response):
        labels = (*_route_and_model(models), str(response.status_code))
        requests_total.labels(*labels).inc()
        duration.labels(*labels).observe(_seconds_since_arrival())
        return response

    @blueprint.get("/metrics")
    def metrics():
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(registry), headers={"Content-Type": content_type})

    return blueprint


def _route_and_model(models: Models) -> tuple:
    noted = g.get(_NOTED)
    if noted is not None:
        key, route = noted
    elif request.url_rule is not None:
        route, key = request.url_rule.rule, (request.view_args or {}).get("key", "")
    else:  # nothing routed it (a method no rule takes)
        route, key = "unmatched", ""
    return route, key if key in models.table.handles else ""


def _seconds_since_arrival() -> float:
    now = time.monotonic()
    arrived = request.environ.get(ARRIVED) or g.get("started") or now
    return max(0.0, now - arrived)


class TsfmdCollector:
    """Reads tsfmd's own counters at each scrape (a prometheus_client custom collector)."""

    def __init__(self, models: Models, admission: Admission,
                 daemon_status: Optional[Callable[[], dict]]):
        self.models, self.admission, self.daemon_status = models, admission, daemon_status

    def collect(self) -> Iterable:
        yield _build_info()
        yield from _model_families(list(self.models.table.handles.values()), self.admission)
        if self.daemon_status is not None:
            yield from _daemon_families(self.daemon_status())


def _build_info() -> GaugeMetricFamily:
    info = GaugeMetricFamily("tsfmd_build_info", "Always 1; the tsfmd version as a label.",
                             labels=["version"])
    info.add_metric([__version__], 1)
    return info


#: executor describe() field -> (counter name without _total, help)
_EXECUTOR_COUNTERS = (
    ("forecasts", "tsfmd_model_forecasts", "Forecasts computed (one per request answered)."),
    ("rejected_queue_full", "tsfmd_model_requests_rejected",
     "Requests answered 503 at once: over the model's admission limit or its queue full."),
    ("timed_out", "tsfmd_model_requests_timed_out",
     "Requests past batching.timeout_s: 503 when they never ran, 504 when their batch did."),
    ("client_gone", "tsfmd_model_requests_client_gone",
     "Requests dropped because the client hung up."),
    ("failed_batches", "tsfmd_model_failed_batches",
     "Batches that raised and were retried one request at a time."),
)
#: executor describe() field -> (gauge name, help)
_EXECUTOR_GAUGES = (
    ("queue_depth", "tsfmd_model_queue_depth", "Requests waiting for the model's worker."),
    ("running", "tsfmd_model_requests_running", "Requests in the forward pass running now."),
)


def _model_families(handles, admission: Admission) -> Iterable:
    state = GaugeMetricFamily(
        "tsfmd_model_state", "1 for the state each model is in (loading, ready, failed), "
        "else 0.", labels=["model", "state"])
    load = GaugeMetricFamily("tsfmd_model_load_seconds",
                             "Seconds the model took to load and warm up.", labels=["model"])
    in_flight = GaugeMetricFamily(
        "tsfmd_model_requests_in_flight",
        "Forecast requests admitted for the model (queued or running).", labels=["model"])
    limit = GaugeMetricFamily(
        "tsfmd_model_requests_in_flight_limit",
        "The most forecast requests the model is admitted at once; more get 503.",
        labels=["model"])
    per_executor = (
        [(field, GaugeMetricFamily(name, text, labels=["model"]))
         for field, name, text in _EXECUTOR_GAUGES]
        + [(field, CounterMetricFamily(name, text, labels=["model"]))
           for field, name, text in _EXECUTOR_COUNTERS])
    batches = HistogramMetricFamily("tsfmd_model_batch_size",
                                    "Requests per forward pass.", labels=["model"])
    for handle in handles:
        for name in MODEL_STATES:
            state.add_metric([handle.key, name], 1 if handle.status == name else 0)
        if handle.load_seconds is not None:
            load.add_metric([handle.key], handle.load_seconds)
        executor = handle.executor
        if executor is None:
            continue
        described = executor.describe()
        admitted = admission.describe(handle.key, executor)
        in_flight.add_metric([handle.key], admitted["admitted"])
        limit.add_metric([handle.key], admitted["limit"])
        for field, family in per_executor:
            family.add_metric([handle.key], described[field])
        sizes = dict(executor.stats.batch_sizes)  # a copy: the worker adds to it
        batches.add_metric([handle.key], _cumulative(sizes),
                           sum(size * n for size, n in sizes.items()))
    yield from [state, load, in_flight, limit, *(f for _, f in per_executor), batches]


def _cumulative(counts: dict) -> list:
    """Prometheus buckets (le, observations <= le) from {batch size: batches of that size}."""
    buckets = [(floatToGoString(le), sum(n for size, n in counts.items() if size <= le))
               for le in BATCH_BUCKETS]
    return buckets + [("+Inf", sum(counts.values()))]


def _daemon_families(status: dict) -> Iterable:
    reloads = status["reloads"]
    in_flight = GaugeMetricFamily(
        "tsfmd_http_requests_in_flight",
        "HTTP requests being served, not counting this scrape.")
    in_flight.add_metric([], status["in_flight"])
    yield in_flight
    yield CounterMetricFamily("tsfmd_config_reloads", "Registry reloads finished (SIGHUP, "
                              "`tsfmd reload`).", value=reloads["finished"])
    yield CounterMetricFamily("tsfmd_config_reload_failures", "Registry reloads that failed: "
                              "refused as invalid, or a required model did not load.",
                              value=reloads["failed"])
    yield GaugeMetricFamily("tsfmd_config_last_reload_successful",
                            "Whether the last registry (re)load succeeded.",
                            value=1 if reloads["last_successful"] else 0)
    success = GaugeMetricFamily("tsfmd_config_last_reload_success_timestamp_seconds",
                                "Unix time of the last successful registry (re)load.")
    if reloads.get("last_success_time") is not None:
        success.add_metric([], reloads["last_success_time"])
    yield success
