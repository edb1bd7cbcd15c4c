"""What the anode lists for tsfmd's models, and where the adapters' warnings go.

The config.py-era anode's list endpoint (taosd's `update all anodes`, `show anodes full`)
reports each algorithm's `get_status()`; TDgpt's own TSFM classes say READY whenever the
service answers a GET at all (tsfmd answered 405 there whatever the model's state). The
generated adapters ask tsfmd's /v1/models instead. Ini-era list endpoints report no status;
get_status() is still checked there, for releases in between.
TDgpt cannot be installed from the package registries here: the anodes are the stand-ins
in tests/anode_standin/, each run in a fresh process with its log file in a temp dir.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from anode_standin.lab import (
    adapters, anode_log, fracast_entry, make_anode, run_anode, write_registry,
)
from conftest import free_port

MISSING = "/nonexistent/tsfmd-test-weights"
MODELS = (fracast_entry("fracast-fc")
          + fracast_entry("broken-fc").replace("source: bundled", f"source: {MISSING}"))
LOGGER = {"ini": "taosanalytics.conf", "config.py": "taosanalytics.log"}


def listed(answer):
    (forecast,) = answer["list"]["details"]
    return {entry["name"]: entry["status"] for entry in forecast["algo"]}


@pytest.mark.parametrize("era", ["ini", "config.py"])
def test_failed_model_is_unavailable_and_the_warning_reaches_the_anode_log(
        tmp_path, tsfmd_server, era):
    tsfmd = tsfmd_server(MODELS)
    states = {m["key"]: m["status"] for m in tsfmd.get("/v1/models").json()["models"]}
    assert states == {"fracast-fc": "ready", "broken-fc": "failed"}
    anode, config = make_anode(tmp_path, era)
    code, _, err = adapters("install", anode, config, tsfmd.config_path)
    assert code == 0, err

    answer = run_anode(anode, era, config, {"status": ["fracast-fc", "broken-fc"]})
    assert answer["status"] == {"fracast-fc": "READY", "broken-fc": "UNAVAIL"}
    if era == "config.py":
        statuses = listed(answer)
        assert {k: statuses[k] for k in answer["status"]} == answer["status"]
    warnings = [line for line in anode_log(config).read_text().splitlines()
                if "WARNING" in line and "tsfmd adapter broken-fc" in line]
    assert warnings, anode_log(config).read_text()
    assert f"{tsfmd.url}/broken-fc is failed" in warnings[0] and MISSING in warnings[0]
    assert not any("fracast-fc" in line and "WARNING" in line
                   for line in anode_log(config).read_text().splitlines())


class Service(BaseHTTPRequestHandler):
    """A tsfmd whose model is still loading (LISTING), or some other service (no listing)."""

    answers: dict = {}  # port -> {path: (status, body)}

    def do_GET(self):  # noqa: N802 - http.server's naming
        status, body = Service.answers[self.server.server_address[1]].get(
            self.path, (404, {"status": "error", "error": "not found"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def services():
    started = []

    def start(answers):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Service)
        Service.answers[server.server_address[1]] = answers
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server.server_address[1]

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def test_loading_model_and_other_services(tmp_path, services):
    loading = {"status": "loading", "key": "warming-fc", "routes": ["/warming-fc"]}
    tsfmd_port = services({"/v1/models": (200, {"models": [loading]})})
    # not a tsfmd (no /v1/models): the route's own answer decides, 503 meaning unavailable
    other = services({"/up-fc": (405, {}), "/down-fc": (503, {"error": "model warming up"})})
    dead = free_port()
    anode, config = make_anode(tmp_path, "config.py")
    keys = ["warming-fc", "gone-fc", "up-fc", "down-fc", "dead-fc"]
    reg = write_registry(tmp_path / "tsfmd.yaml", tsfmd_port,
                         "".join(fracast_entry(key) for key in keys))
    assert adapters("install", anode, config, reg)[0] == 0
    # the operator points some names elsewhere in the anode's own config
    config.write_text(config.read_text() + "globals().update({"
                      f"'up-fc': 'http://127.0.0.1:{other}/up-fc', "
                      f"'down-fc': 'http://127.0.0.1:{other}/down-fc', "
                      f"'dead-fc': 'http://127.0.0.1:{dead}/dead-fc'}})\n")
    answer = run_anode(anode, "config.py", config, {"status": keys})
    assert answer["status"] == {"warming-fc": "UNAVAIL", "gone-fc": "UNAVAIL", "up-fc": "READY",
                                "down-fc": "UNAVAIL", "dead-fc": "UNAVAIL"}
    assert {k: listed(answer)[k] for k in keys} == answer["status"]
    text = anode_log(config).read_text()
    assert "tsfmd adapter warming-fc: the model at" in text and "is loading" in text
    assert "gone-fc is not served (no model of this tsfmd has that route)" in text
    assert "down-fc is unavailable (model warming up)" in text
    assert f"tsfmd adapter dead-fc: tsfmd at http://127.0.0.1:{dead}/dead-fc does not answer" \
        in text
