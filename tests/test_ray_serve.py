"""The registry on a real local Ray cluster (a head and a second node process, loopback),
deployed from `tsfmd ray config`'s file, against `tsfmd serve` on the same registry.

  * the same requests through TDgpt's protocol (routes and aliases), the native API and
    KServe's give the same answers as `tsfmd serve`, and so do the errors and /readyz;
  * SIGKILL of a model's replica during a bounded load: the requests it held get a clear
    503 with Retry-After (counted), none hangs, and Serve replaces the replica;
  * a redeployed registry (a model added, one changed) while clients load an unchanged
    model: zero failed requests to it, and its replica is the same process throughout.

Needs the `ray` extra (CI installs it: there a missing ray fails instead of skipping).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

import tinymodels
from conftest import FIXTURES, RunningTsfmd, free_port, registry_yaml, wait_until
from ray_lab import RayCluster, ray_available, wait_ready, write_serve_config

if not ray_available():
    if os.environ.get("CI") == "true":
        pytest.fail("the ray extra is not installed (CI installs tsfmd[ray])", pytrace=False)
    pytest.skip("needs the ray extra: pip install -e '.[ray]'", allow_module_level=True)

TIMEOUT_S = 20  # each model's batching.timeout_s: bounds every request's wait
STUCK_TIMEOUT_S = 5  # the `narrow` model's: how long the ingress waits on a stopped replica
GRACE_S = 5  # tsfmd/ray/remote.py GRACE_S: the ingress waits this much past a deadline
MODELS = f"""\
  fracast-fc:
    family: fracast
    source: bundled
    device: cpu
    batching: {{max_batch: 4, timeout_s: {TIMEOUT_S}}}
    ray: {{num_cpus: 0.5}}
  timemoe-fc:
    family: time-moe
    source: {FIXTURES / 'timemoe' / 'tiny'}
    route: /timemoe-fc
    aliases: [/timemoe, /ds_predict]
    dtype: float32
    device: cpu
    batching: {{max_batch: 4, max_wait_ms: 20, timeout_s: {TIMEOUT_S}}}
    ray: {{num_cpus: 0.5}}
  narrow:
    family: fracast
    source: bundled
    device: cpu
    batching: {{timeout_s: {STUCK_TIMEOUT_S}}}
    ray: {{num_cpus: 0.5, max_ongoing_requests: 1, max_queued_requests: 1}}
"""
# one intra-op thread in the daemon and in each replica: the same arithmetic, the same bits
SERVER = "  torch_threads: 1\n"


class Lab:
    def __init__(self, directory: Path):
        self.directory = directory
        self.port, self.ray_port = free_port(), free_port()
        self.registry = directory / "tsfmd.yaml"
        self.registry.write_text(registry_yaml(MODELS, self.port, SERVER))
        self.ray_url = f"http://127.0.0.1:{self.ray_port}"
        self.daemon = None
        self.cluster = RayCluster(free_port())

    def start(self) -> "Lab":
        self.daemon = RunningTsfmd(self.registry, self.port).start()
        self.cluster.start()
        self.deploy(MODELS)
        return self

    def deploy(self, models: str, expect=("fracast-fc", "timemoe-fc", "narrow")) -> None:
        self.registry.write_text(registry_yaml(models, self.port, SERVER))
        config = write_serve_config(self.registry, self.directory / "serve.yaml", self.ray_port)
        self.cluster.deploy(config)
        wait_ready(self.ray_url, timeout=300, models=list(expect))

    def model(self, key: str) -> dict:
        listed = requests.get(self.ray_url + "/v1/models", timeout=30).json()["models"]
        return next(m for m in listed if m["key"] == key)

    def stop(self) -> None:
        try:
            self.cluster.stop()
        finally:
            if self.daemon is not None:
                self.daemon.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("ray"))
    try:
        yield lab.start()
    finally:
        lab.stop()  # `ray stop`, always


def tdgpt_body(values, next_len, conf=None):
    body = {"input": [float(v) for v in values], "next_len": next_len}
    if conf is not None:
        body["conf_interval"] = conf
    return body


def both(lab, method, path, **kwargs):
    """The same request to `tsfmd serve` and to the Ray proxy."""
    kwargs.setdefault("timeout", 120)
    return (requests.request(method, lab.daemon.url + path, **kwargs),
            requests.request(method, lab.ray_url + path, **kwargs))


def test_the_cluster_has_two_nodes(lab):
    assert lab.cluster.nodes() == 2


@pytest.mark.parametrize("route", ["/fracast-fc", "/timemoe-fc", "/timemoe", "/ds_predict"])
def test_forecasts_equal_tsfmd_serves_through_tdgpts_protocol(lab, route):
    cases = [(tinymodels.series(48, seed=1), 5, None), (tinymodels.series(200, seed=2), 12, 0.9),
             (tinymodels.series(96, seed=3, level=1e6), 1, 0.95)]
    for values, horizon, conf in cases:
        served, on_ray = both(lab, "POST", route, json=tdgpt_body(values, horizon, conf))
        assert served.status_code == 200, served.text
        assert on_ray.status_code == 200, on_ray.text
        assert on_ray.json() == served.json()  # equal to the last bit


def test_the_other_apis_answer_alike(lab):
    values = [float(v) for v in tinymodels.series(64, seed=7)]
    native = {"inputs": [{"target": values}],
              "parameters": {"prediction_length": 6, "quantile_levels": [0.1, 0.5, 0.9]}}
    served, on_ray = both(lab, "POST", "/v1/models/fracast-fc/forecast", json=native)
    assert served.status_code == on_ray.status_code == 200, on_ray.text
    assert on_ray.json() == served.json()
    kserve = {"model": "timemoe-fc", "options": {"horizon": 4},
              "inputs": [{"type": "univariate_time_series", "name": "s0", "series": values,
                          "frequency": "H"}]}
    served, on_ray = both(lab, "POST", "/v1/timeseries/forecast", json=kserve)
    assert served.status_code == on_ray.status_code == 200, on_ray.text
    content = [[o["content"] for o in r.json()["outputs"]] for r in (served, on_ray)]
    assert content[1] == content[0]  # each answer's own `id` aside
    for path in ("/healthz", "/readyz", "/openapi.json", "/v1/timeseries/models"):
        served, on_ray = both(lab, "GET", path)
        assert (on_ray.status_code, on_ray.json()) == (served.status_code, served.json()), path
    served, on_ray = both(lab, "GET", "/metrics")
    assert on_ray.status_code == served.status_code == 200
    assert "tsfmd_model_state" in on_ray.text
    served, on_ray = both(lab, "GET", "/v1/models")
    fields = ("key", "status", "routes", "context_limit", "quantile_levels", "parameters")
    listed = [[tuple(m[f] for f in fields) for m in r.json()["models"]] for r in (served, on_ray)]
    assert listed[1] == listed[0]


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/timemoe", None),                                   # 405, TDgpt's probe
    ("POST", "/no-such-model", {"input": [1.0] * 20, "next_len": 2}),   # 404
    ("POST", "/fracast-fc", {"input": [1.0, 2.0], "next_len": 2}),      # 400: too short
    ("POST", "/fracast-fc", {"input": [1.0] * 20, "next_len": 0}),      # 400: no rows
])
def test_errors_answer_alike(lab, method, path, body):
    served, on_ray = both(lab, method, path, json=body)
    assert on_ray.status_code == served.status_code >= 400
    assert on_ray.json() == served.json()
    assert on_ray.headers.get("Allow") == served.headers.get("Allow")


def load(url: str, route: str, stop: threading.Event, clients: int = 3,
         most: int = 2000):
    """Closed-loop clients until `stop` (or `most` requests): [(status, headers, body, s)]."""
    results, lock = [], threading.Lock()
    body = tdgpt_body(tinymodels.series(64, seed=5), 4)

    def client():
        with requests.Session() as session:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    r = session.post(url + route, json=body, timeout=3 * TIMEOUT_S + 30)
                    outcome = (r.status_code, r.headers, r.json())
                except (requests.RequestException, ValueError) as exc:
                    outcome = (None, {}, {"error": repr(exc)})
                with lock:
                    results.append((*outcome, time.monotonic() - began))
                    if len(results) >= most:
                        stop.set()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads, results


def test_a_killed_replica_costs_clear_503s_and_serve_replaces_it(lab):
    before = lab.model("fracast-fc")["ray"]["replica_pid"]
    stop = threading.Event()
    threads, results = load(lab.ray_url, "/fracast-fc", stop)
    try:
        wait_until(lambda: sum(1 for r in results if r[0] == 200) >= 10, timeout=60)
        os.kill(before, signal.SIGKILL)
        killed_at, killed_time = len(results), time.monotonic()

        def replaced():
            model = lab.model("fracast-fc")
            return model["status"] == "ready" and model["ray"]["replica_pid"] != before
        wait_until(replaced, timeout=120, interval=0.5)
        replaced_after = time.monotonic() - killed_time
        # and the new replica serves the load
        wait_until(lambda: sum(1 for r in results[killed_at:] if r[0] == 200) >= 10, timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=3 * TIMEOUT_S + 40)
    assert not any(thread.is_alive() for thread in threads), "a client hangs"
    failed = [r for r in results if r[0] != 200]
    print(f"\nkilled replica {before}, replaced within {replaced_after:.1f}s: "
          f"{len(failed)} of {len(results)} requests failed: "
          f"{Counter((r[0], r[2].get('error', '')[:90]) for r in failed)}")
    for status, headers, body, _ in failed:
        assert status == 503, (status, body)
        assert headers.get("Retry-After", "").isdigit(), headers
        assert body["status"] == "error" and "fracast-fc" in body["error"], body
    # a bounded wait: no request outlived its deadline plus the ingress's grace
    assert max(r[3] for r in results) <= TIMEOUT_S + 10


def test_a_stopped_replica_and_a_full_queue_are_503s_not_hangs(lab):
    """SIGSTOP of the `narrow` model's only replica (max_ongoing_requests 1, max_queued 1):
    what Serve cannot queue is refused at once (BackPressureError), what it holds gets the
    ingress's 503 after the deadline plus its grace; Serve's health check replaces it."""
    before = lab.model("narrow")["ray"]["replica_pid"]
    os.kill(before, signal.SIGSTOP)
    answers, lock = [], threading.Lock()

    def client():
        began = time.monotonic()
        r = requests.post(lab.ray_url + "/narrow", json=tdgpt_body(range(30), 2),
                          timeout=STUCK_TIMEOUT_S + GRACE_S + 60)
        with lock:
            answers.append((r.status_code, r.headers.get("Retry-After", ""), r.json(),
                            time.monotonic() - began))

    try:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=STUCK_TIMEOUT_S + GRACE_S + 90)
        assert len(answers) == 4, "a request hangs"
        print(f"\nstopped replica: {Counter((a[0], a[2]['error'][:70]) for a in answers)}")
        for status, retry_after, body, took in answers:
            assert status == 503 and retry_after.isdigit(), (status, body)
            assert took <= STUCK_TIMEOUT_S + GRACE_S + 10, took
        errors = [a[2]["error"] for a in answers]
        assert any("Ray Serve queue is full" in e for e in errors), errors
        assert any("no answer from its Ray Serve replicas" in e for e in errors), errors

        def replaced():
            model = lab.model("narrow")
            return model["status"] == "ready" and model["ray"]["replica_pid"] != before
        wait_until(replaced, timeout=180, interval=1.0)
    finally:
        try:
            os.kill(before, signal.SIGCONT)  # where Serve has not killed it yet
        except ProcessLookupError:
            pass
    reply = requests.post(lab.ray_url + "/narrow", json=tdgpt_body(range(30), 2), timeout=60)
    assert reply.status_code == 200, reply.text


def test_a_redeploy_drops_no_request_to_an_unchanged_model(lab):
    unchanged = lab.model("timemoe-fc")["ray"]["replica_pid"]
    changed = MODELS.replace("    ray: {num_cpus: 0.5}\n", "    description: changed\n"
                             "    ray: {num_cpus: 0.5}\n", 1)
    changed += ("  fracast-two:\n    family: fracast\n    source: bundled\n    device: cpu\n"
                "    ray: {num_cpus: 0.5}\n")
    stop = threading.Event()
    threads, results = load(lab.ray_url, "/timemoe", stop, clients=2)
    try:
        wait_until(lambda: len(results) >= 5, timeout=60)
        lab.deploy(changed, expect=("fracast-fc", "timemoe-fc", "narrow", "fracast-two"))
        wait_until(lambda: lab.model("fracast-fc")["description"] == "changed", timeout=120,
                   interval=0.5)
        during = len(results)
        wait_until(lambda: len(results) >= during + 5, timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=3 * TIMEOUT_S + 40)
    failed = [r for r in results if r[0] != 200]
    print(f"\nredeploy: {len(results)} requests to the unchanged model, {len(failed)} failed")
    assert not failed, Counter((r[0], r[2].get("error", "")[:120]) for r in failed)
    assert lab.model("timemoe-fc")["ray"]["replica_pid"] == unchanged  # never restarted
    reply = requests.post(lab.ray_url + "/fracast-two", json=tdgpt_body(range(30), 3),
                          timeout=120)
    assert reply.status_code == 200, reply.text
