"""Every way a call to tsfmd can fail becomes a ValueError the SQL user can act on.

tsfmd never answers short, slowly or with a non-JSON body, so those replies come from a
small stub HTTP server written here (a stand-in for a broken or overloaded service), and
"tsfmd down" is a port with nothing listening. The anode is a stand-in from
tests/anode_standin/: TDgpt cannot be installed from the package registries here.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from anode_standin.lab import (
    adapters, direct, fracast_entry, make_anode, run_anode, write_registry,
)

ROWS = 12
GOOD = [float(i) for i in range(ROWS)]
REPLIES = {  # route -> (status, body, seconds to wait first)
    "/slow": (200, {"status": "success", "output": GOOD}, 3.0),
    "/short": (200, {"status": "success", "output": GOOD[:5]}, 0),
    "/notjson": (200, "<html>proxy error</html>", 0),
    "/nolist": (200, {"status": "success"}, 0),
    "/badlower": (200, {"status": "success", "output": GOOD, "lower": [0.0], "upper": GOOD}, 0),
    "/nointerval": (200, {"status": "success", "output": GOOD}, 0),
    "/busy": (503, {"status": "error", "error": "model busy-fc: queue full, retry later"}, 0),
}


class Stub(BaseHTTPRequestHandler):
    bodies: dict = {}

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", 0))
        Stub.bodies[self.path] = json.loads(self.rfile.read(length))
        status, body, wait = REPLIES[self.path]
        time.sleep(wait)
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the adapter gave up waiting (the timeout case)

    def do_GET(self):  # noqa: N802
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def registry_models():
    models = "".join(fracast_entry(route[1:] + "-fc", f"    route: {route}\n") for route in REPLIES)
    return models.replace(
        "    route: /slow\n", "    route: /slow\n    adapter: {read_timeout_s: 0.5}\n"
    )


@pytest.fixture(scope="module", params=["ini", "config.py"])
def outcome(request, tmp_path_factory):
    """Install adapters pointing at the stub, call each with it up, then with it gone."""
    era = request.param
    tmp_path = tmp_path_factory.mktemp(era.replace(".", "_"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    anode, config = make_anode(tmp_path, era)
    reg = write_registry(tmp_path / "tsfmd.yaml", port, registry_models())
    code, _, err = adapters("install", anode, config, reg)
    assert code == 0, err
    calls = [direct(route[1:] + "-fc", ROWS) for route in REPLIES]
    calls.append(direct("nointerval-fc", ROWS, return_conf=0))
    Stub.bodies = {}
    try:
        up = run_anode(anode, era, config, {"direct": calls})
    finally:
        server.shutdown()
        server.server_close()
    down = run_anode(anode, era, config, {"direct": [direct("short-fc", ROWS)]})
    return {"era": era, "port": port, "up": dict(zip(list(REPLIES) + ["nointerval0"],
                                                      up["direct"])),
            "down": down, "bodies": dict(Stub.bodies)}


def error(outcome, route):
    result = outcome["up"][route]
    assert result.get("type") == "ValueError", result
    url = f"http://127.0.0.1:{outcome['port']}{route}"
    assert url in result["error"], result["error"]
    return result["error"]


def test_timeout_names_the_url_and_the_registry_setting(outcome):
    text = error(outcome, "/slow")
    assert "did not answer within 0.5s" in text and "read_timeout_s" in text


def test_short_reply_is_refused(outcome):
    assert "returned 5 'output' values for 12 forecast rows" in error(outcome, "/short")


def test_malformed_replies_are_refused(outcome):
    assert "not JSON" in error(outcome, "/notjson")
    assert "without a 'output' list" in error(outcome, "/nolist")
    assert "returned 1 'lower' values" in error(outcome, "/badlower")


def test_error_status_carries_tsfmds_message(outcome):
    text = error(outcome, "/busy")
    assert "HTTP 503" in text and "queue full, retry later" in text


def test_tsfmd_down_is_a_clear_error_not_a_start_failure(outcome):
    down = outcome["down"]
    assert "start_error" not in down and down["registered"]["short-fc"] == 1
    (result,) = down["direct"]
    assert result["type"] == "ValueError"
    assert f"http://127.0.0.1:{outcome['port']}/short" in result["error"]
    assert "cannot reach tsfmd" in result["error"]
    if outcome["era"] == "config.py":
        listed = {a["name"]: a for a in down["list"]["details"][0]["algo"]}
        assert listed["short-fc"]["status"] == "UNAVAIL"


def test_model_without_interval_gives_values_three_times(outcome):
    res = outcome["up"]["/nointerval"]["res"]
    assert len(res) == 4 and res[1] == res[2] == res[3] == GOOD
    assert len(outcome["up"]["nointerval0"]["res"]) == 2


def test_wire_body_is_what_tsfmd_expects(outcome):
    body = outcome["bodies"]["/nointerval"]
    assert body["next_len"] == ROWS and body["conf_interval"] == 0.9
    assert len(body["input"]) == len(body["ts"]) == 64
    assert "past_dynamic_real" not in body and "dynamic_real" not in body


def test_broken_anode_config_does_not_break_the_adapter(tmp_path):
    """A config.py that raises: built-ins that read it fail, tsfmd's adapters still load.

    (The real anode reads its config at start and would not start at all; the stand-in reads
    it when first asked, so the adapter's own fallback can be seen.)"""
    anode, config = make_anode(tmp_path, "config.py")
    config.write_text(config.read_text() + "\nraise RuntimeError('broken config')\n")
    broken = config.read_bytes()
    # a built-in name needs an edit, which cannot be checked on a file that does not run
    reg = write_registry(tmp_path / "tsfmd.yaml", 1, fracast_entry("timemoe-fc"))
    code, _, err = adapters("install", anode, config, reg)
    assert code == 1 and "does not execute as it is" in err and config.read_bytes() == broken
    # a generated adapter needs no config entry: it installs and falls back to its own URL
    write_registry(reg, 1, fracast_entry("fracast-fc"))
    code, _, err = adapters("install", anode, config, reg)
    assert code == 0, err
    assert config.read_bytes() == broken
    module = "taosanalytics.algo.custom.fc.tsfmd_fracast_fc:_TsfmdFracastFcService"
    answer = run_anode(anode, "config.py", config, {"build": [module]})
    (built,) = answer["build"]
    assert built["ok"] and built["url"] == "http://127.0.0.1:1/fracast-fc"
    assert answer["registered"].get("fracast-fc") == 1
    assert "timemoe-fc" not in answer["registered"]  # the built-in raised and was skipped
