"""/metrics over real HTTP from a real tsfmd on loopback, checked by Prometheus' own promtool.

The numbers must move as the test's requests, overload answers and reloads happen: a real
fracast model answers forecasts; two models of test_lifecycle's GateFamily (a real Family
whose forecast waits until the test opens its gate) make the overload deterministic: the
test holds a forecast in the forward pass, queues one behind it, and the next is refused
with 503; with `timeout_s: 1` the held one gets 504 and the queued one 503.

The Grafana dashboard's queries are checked three ways: the metric names they use are all
in a live scrape, promtool parses them, and a real Prometheus scraping a live tsfmd answers
them with data.

promtool and prometheus come from the Debian package `prometheus` (.ci/apt-packages):
without it these tests skip loudly outside CI and fail in CI (CI=true).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, wait_until
from test_lifecycle import ENTERED, GATES
from tsfmd import families
from tsfmd.families import register_family

DASHBOARD = Path(__file__).parent.parent / "packaging" / "grafana" / "tsfmd-dashboard.json"
GATE_FAMILY = "metrics-gate"


@pytest.fixture(autouse=True, scope="module")
def gate_family():
    register_family(GATE_FAMILY, "test_lifecycle:GateFamily")
    yield
    families._FAMILIES.pop(GATE_FAMILY, None)  # no public unregister; tests only


def promtool() -> str:
    return prometheus_tool("promtool")


def prometheus_tool(name: str) -> str:
    """The path of `promtool` or `prometheus`: skip loudly without it, fail in CI."""
    found = shutil.which(name)
    if found:
        return found
    why = (f"{name} is not installed (Debian package `prometheus`; .ci/install-apt "
           "installs it)")
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}: CI must run this test")
    warnings.warn(f"SKIPPED: {why}")
    pytest.skip(f"SKIPPED LOUDLY: {why}")


def check_metrics(text: str) -> None:
    done = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        f"promtool check metrics (exit {done.returncode}):\n{done.stdout}{done.stderr}")


class Scrape:
    """One GET /metrics: its text and a sample lookup by name and labels."""

    def __init__(self, server):
        response = server.get("/metrics")
        assert response.status_code == 200
        self.content_type = response.headers["Content-Type"]
        self.text = response.text
        self.families = list(text_string_to_metric_families(self.text))

    def value(self, name: str, **labels) -> float:
        """The one sample named `name` whose labels include `labels`; 0 if none (a counter
        that has not moved yet has no sample)."""
        found = [s.value for f in self.families for s in f.samples
                 if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
        return found[0] if found else 0.0

    def count(self, name: str, **labels) -> int:
        return sum(1 for f in self.families for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def names(self) -> set:
        """Every name a PromQL query may use: sample names, and what each family's type
        adds (a counter's `_total`, a histogram's `_bucket`, `_sum`, `_count`)."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names = {s.name for f in self.families for s in f.samples}
        for family in self.families:
            names.add(family.name)
            names.update(family.name + end for end in suffixes.get(family.type, ()))
        return names


def gate_model(key: str, gate: str, timeout_s: float) -> str:
    return (f"  {key}:\n    family: {GATE_FAMILY}\n    source: none\n    device: cpu\n"
            f"    options:\n      gate: {gate}\n"
            f"    batching:\n      max_batch: 1\n      queue_size: 1\n"
            f"      timeout_s: {timeout_s}\n")


MODELS = (
    "  fc:\n    family: fracast\n    source: bundled\n    device: cpu\n"
    + gate_model("held", "metrics-held", 60)
    + gate_model("late", "metrics-late", 1)
    + "  gone:\n    family: fracast\n    source: /nonexistent/weights\n    device: cpu\n"
      "    required: false\n"
)
SERIES = {"input": [float(i % 7) for i in range(48)], "next_len": 4}


def in_background(server, route: str) -> tuple:
    answers = []
    thread = threading.Thread(target=lambda: answers.append(server.post(route, SERIES)))
    thread.start()
    return thread, answers


def open_gates(*names):
    for name in names:
        GATES[name].set()


@pytest.fixture
def gates():
    names = ("metrics-held", "metrics-late")
    for name in names:
        GATES[name], ENTERED[name] = threading.Event(), threading.Event()
    yield
    open_gates(*names)  # never leave a worker waiting, whatever failed


def test_metrics_pass_promtool_and_move_with_requests_overload_and_reloads(
        tsfmd_server, gates):
    server = tsfmd_server(MODELS)
    first = Scrape(server)
    assert first.content_type.startswith("text/plain; version=")
    assert first.value("tsfmd_model_state", model="fc", state="ready") == 1
    assert first.value("tsfmd_model_state", model="fc", state="failed") == 0
    assert first.value("tsfmd_model_state", model="gone", state="failed") == 1
    assert first.value("tsfmd_model_load_seconds", model="fc") > 0
    assert first.count("tsfmd_model_load_seconds", model="gone") == 0  # it never loaded
    assert first.value("tsfmd_config_last_reload_successful") == 1
    started = first.value("tsfmd_config_last_reload_success_timestamp_seconds")
    assert 0 < started <= time.time()

    # forecasts, a wrong method on a model route, and paths nothing serves
    for _ in range(3):
        assert server.post("/fc", SERIES).status_code == 200
    assert server.get("/fc").status_code == 405
    for n in range(5):
        assert server.get(f"/nothing/here/{n}").status_code == 404
    moved = Scrape(server)
    fc_200 = dict(route="/fc", model="fc", code="200")
    assert moved.value("tsfmd_http_requests_total", **fc_200) == 3
    assert moved.value("tsfmd_http_request_duration_seconds_count", **fc_200) == 3
    assert moved.value("tsfmd_http_request_duration_seconds_sum", **fc_200) > 0
    assert moved.value("tsfmd_http_requests_total", route="/fc", model="fc", code="405") == 1
    assert moved.value("tsfmd_model_forecasts_total", model="fc") == (
        first.value("tsfmd_model_forecasts_total", model="fc") + 3)
    batches = moved.value("tsfmd_model_batch_size_count", model="fc")
    assert moved.value("tsfmd_model_batch_size_sum", model="fc") == 3 and 1 <= batches <= 3
    assert moved.value("tsfmd_model_batch_size_bucket", model="fc", le="+Inf") == batches
    # five raw paths, one series: the route label is the rule, never the path
    assert moved.count("tsfmd_http_requests_total", code="404") == 1
    assert moved.value("tsfmd_http_requests_total", route="/<path:path>", model="",
                       code="404") == 5

    # overload: one forecast held in the forward pass, one queued, the next refused at once
    held, held_answers = in_background(server, "/held")
    assert ENTERED["metrics-held"].wait(timeout=30)
    queued, queued_answers = in_background(server, "/held")
    wait_until(lambda: Scrape(server).value("tsfmd_model_queue_depth", model="held") == 1,
               timeout=30)
    during = Scrape(server)
    assert during.value("tsfmd_model_requests_running", model="held") == 1
    assert during.value("tsfmd_model_requests_in_flight", model="held") == 2
    assert during.value("tsfmd_model_requests_in_flight_limit", model="held") == 2
    assert during.value("tsfmd_http_requests_in_flight") == 2  # the scrape is not counted
    refused = server.post("/held", SERIES)
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    open_gates("metrics-held")
    for thread in (held, queued):
        thread.join(timeout=60)
    assert [a.status_code for a in held_answers + queued_answers] == [200, 200]

    # timeouts: the held forecast runs past timeout_s (504), the one queued behind it never
    # starts (503); both answers come while the gate stays shut
    late, late_answers = in_background(server, "/late")
    assert ENTERED["metrics-late"].wait(timeout=30)
    behind, behind_answers = in_background(server, "/late")
    for thread in (late, behind):
        thread.join(timeout=60)
    assert sorted(a.status_code for a in late_answers + behind_answers) == [503, 504]
    open_gates("metrics-late")

    after = Scrape(server)
    assert after.value("tsfmd_model_requests_rejected_total", model="held") == 1
    assert after.value("tsfmd_model_requests_timed_out_total", model="held") == 0
    assert after.value("tsfmd_http_requests_total", route="/held", model="held",
                       code="503") == 1
    assert after.value("tsfmd_http_requests_total", route="/held", model="held",
                       code="200") == 2
    assert after.value("tsfmd_model_requests_timed_out_total", model="late") == 2
    for code in ("503", "504"):
        assert after.value("tsfmd_http_requests_total", route="/late", model="late",
                           code=code) == 1
    assert after.value("tsfmd_model_queue_depth", model="held") == 0

    # reloads: one that succeeds, one refused (invalid registry), then one that succeeds
    config = server.config_path
    good = config.read_text()
    before_reload = time.time()
    assert server.daemon.reload() is True
    reloaded = Scrape(server)
    assert reloaded.value("tsfmd_config_reloads_total") == 1
    assert reloaded.value("tsfmd_config_reload_failures_total") == 0
    assert reloaded.value("tsfmd_config_last_reload_successful") == 1
    succeeded_at = reloaded.value("tsfmd_config_last_reload_success_timestamp_seconds")
    assert before_reload <= succeeded_at <= time.time()

    config.write_text(good + "  broken: [this is not a model entry\n")
    assert server.daemon.reload() is False
    refused_reload = Scrape(server)
    assert refused_reload.value("tsfmd_config_reloads_total") == 2
    assert refused_reload.value("tsfmd_config_reload_failures_total") == 1
    assert refused_reload.value("tsfmd_config_last_reload_successful") == 0
    assert refused_reload.value(
        "tsfmd_config_last_reload_success_timestamp_seconds") == succeeded_at

    config.write_text(good)
    assert server.daemon.reload() is True
    again = Scrape(server)
    assert again.value("tsfmd_config_reloads_total") == 3
    assert again.value("tsfmd_config_last_reload_successful") == 1
    assert again.value("tsfmd_config_last_reload_success_timestamp_seconds") >= succeeded_at

    # Prometheus' own linter on the scrapes at start, after the overload and the refused reload
    for scrape in (first, after, refused_reload):
        check_metrics(scrape.text)


# -- the Grafana dashboard ---------------------------------------------------------------

#: words of PromQL that are not metric names
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                 "and", "or", "unless", "offset", "inf", "nan"}


def dashboard_queries() -> list:
    """Every PromQL expression of the dashboard: panel targets and templating queries."""
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def as_promql(expr: str) -> str:
    """Grafana's variables replaced as Grafana would, so the text is plain PromQL."""
    expr = re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> set:
    """The metric names in a PromQL expression (label_values(metric, label) included)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', as_promql(expr))  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)", r"\1", text)
    words = [m for m in re.finditer(r"(?<![\w.:])[a-zA-Z_:][\w:]*", text)
             if not text[m.end():].lstrip().startswith("(")]  # not a function call
    return {m.group() for m in words if m.group().lower() not in _PROMQL_WORDS}


def test_dashboard_queries_use_only_exposed_metrics_and_parse(tsfmd_server, tmp_path):
    queries = dashboard_queries()
    used = set().union(*(metric_names(q) for q in queries))
    # what the dashboard must show (issue 12): each is in some query
    for wanted in ("tsfmd_http_requests_total", "tsfmd_http_request_duration_seconds_bucket",
                   "tsfmd_model_requests_rejected_total", "tsfmd_model_queue_depth",
                   "tsfmd_model_batch_size_bucket", "tsfmd_model_state",
                   "tsfmd_config_reloads_total", "tsfmd_config_last_reload_successful"):
        assert wanted in used, f"the dashboard shows no {wanted}"

    server = tsfmd_server("  fc:\n    family: fracast\n    source: bundled\n    device: cpu\n")
    assert server.post("/fc", SERIES).status_code == 200
    exposed = Scrape(server).names()
    assert used <= exposed, f"the dashboard asks for what /metrics lacks: {used - exposed}"

    # and each expression is PromQL Prometheus parses: promtool checks them as recording rules
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": as_promql(q)}
        for n, q in enumerate(queries) if not q.startswith("label_values(")]}]}
    path = tmp_path / "dashboard-rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(rules))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"promtool check rules:\n{done.stdout}{done.stderr}"


def test_a_real_prometheus_scrapes_tsfmd_and_answers_every_dashboard_query(
        tsfmd_server, tmp_path):
    """Prometheus itself (the same Debian package) scrapes a live tsfmd each second; every
    dashboard query, with Grafana's variables filled in, is evaluated by it."""
    binary = prometheus_tool("prometheus")
    server = tsfmd_server("  fc:\n    family: fracast\n    source: bundled\n    device: cpu\n")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "tsfmd", "static_configs": [
            {"targets": [f"127.0.0.1:{server.port}"]}]}]}))
    log = (tmp_path / "prometheus.log").open("w")
    prometheus = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    local = requests.Session()
    local.trust_env = False  # loopback only: never through a proxy

    def query(expr: str) -> list:
        answer = local.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr},
                           timeout=30).json()
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def answers(expr: str):
        try:
            return query(expr)
        except requests.ConnectionError:  # still starting
            return []

    try:
        wait_until(lambda: answers('up{job="tsfmd"} == 1'), timeout=90, interval=0.5)
        # a series is born with its first request; rate() needs a later scrape that saw it grow
        assert server.post("/fc", SERIES).status_code == 200
        fc = 'tsfmd_http_requests_total{job="tsfmd", model="fc", code="200"}'
        wait_until(lambda: answers(fc), timeout=90, interval=0.5)
        for _ in range(3):
            assert server.post("/fc", SERIES).status_code == 200
        wait_until(lambda: answers(f"rate({fc}[1m]) > 0"), timeout=90, interval=0.5)
        empty = []
        for expr in dashboard_queries():
            values = re.match(r"label_values\((.*),\s*(\w+)\)$", expr)
            promql = (f"count by ({values.group(2)}) ({values.group(1)})" if values else expr)
            promql = promql.replace("$job", "tsfmd").replace("$__rate_interval", "1m")
            if not query(as_promql(promql)):
                empty.append(expr)
        # no request here got a 503, so no series has code="503"; every other query has data
        unexplained = [e for e in empty if 'code="503"' not in e]
        assert not unexplained, f"dashboard queries with no data from a live tsfmd: {unexplained}"
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        log.close()


def test_metric_names_reads_promql():
    """The dashboard test's PromQL reader, on expressions whose names are known."""
    expr = ('histogram_quantile(0.99, sum by (model, le) (rate('
            'tsfmd_http_request_duration_seconds_bucket{model=~"$model", code="200"}'
            '[$__rate_interval]))) / on (model) group_left sum without (code) (up offset 5m)')
    assert metric_names(expr) == {"tsfmd_http_request_duration_seconds_bucket", "up"}
    assert metric_names("label_values(tsfmd_model_state, model)") == {"tsfmd_model_state"}
    assert metric_names("time() - tsfmd_config_last_reload_success_timestamp_seconds") == {
        "tsfmd_config_last_reload_success_timestamp_seconds"}
