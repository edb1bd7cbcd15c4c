"""Readiness means "what must serve serves" (`required:` per model), and the shipped registry
is ready on a fresh offline machine: fracast-fc serves, the Time-MoE routes answer 503 with
the one command that fetches their weights, and their failure is a warning, not an error.
Real daemon, real HTTP, the real shipped registry (only its port and state dir changed)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, RunningTsfmd, free_port
from hubcache import put_in_hub_cache

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def shipped(tmp_path, caplog):
    """The shipped default registry on a free port, with an empty state dir."""
    registry = yaml.safe_load((REPO / "etc/tsfmd/tsfmd.yaml").read_text())
    port = free_port()
    state = tmp_path / "state"
    registry["server"].update(port=port, state_dir=str(state))
    config = tmp_path / "tsfmd.yaml"
    config.write_text(yaml.safe_dump(registry, sort_keys=False))
    caplog.set_level(logging.INFO, logger="tsfmd")
    server = RunningTsfmd(config, port).start()
    yield server, state
    server.stop()


def test_the_shipped_registry_is_ready_offline(shipped, caplog):
    server, state = shipped
    ready = server.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["models"] == ["fracast-fc"]
    assert set(body["optional_not_ready"]) == {"timemoe-fc", "timemoe-200m"}
    assert body["optional_not_ready"]["timemoe-fc"].startswith("failed: weights not found")

    hub = state / "hub"
    for route, repo in (("/ds_predict", "Maple728/TimeMoE-50M"),
                        ("/timemoe-200m", "Maple728/TimeMoE-200M")):
        reply = server.post(route, {"input": list(range(64)), "next_len": 8})
        assert reply.status_code == 503
        assert reply.json()["error"].endswith(f"fetch them with: tsfmd pull {repo} "
                                              f"--state-dir {state}"), reply.text

    started = caplog.get_records("setup")  # the fixture started the daemon
    failures = [r for r in started if "failed to load" in r.getMessage()]
    assert {r.getMessage().split()[1] for r in failures} == {"timemoe-fc", "timemoe-200m"}
    assert {r.levelname for r in failures} == {"WARNING"}
    assert not [r for r in started + caplog.records if r.levelno >= logging.ERROR]

    # The command's --state-dir is where tsfmd looks: weights put in its hub cache (as
    # `tsfmd pull` leaves them; here the tiny test checkpoint) load at the next reload.
    put_in_hub_cache(hub, "Maple728/TimeMoE-50M", FIXTURES / "timemoe" / "tiny")
    assert server.daemon.reload() is True
    assert server.daemon.status()["reloads"]["last_changes"]["retried"] == ["timemoe-fc"]
    reply = server.post("/ds_predict", {"input": list(range(64)), "next_len": 8})
    assert reply.status_code == 200, reply.text
    assert set(server.get("/readyz").json()["optional_not_ready"]) == {"timemoe-200m"}


def test_a_required_model_that_fails_makes_readiness_fail(tsfmd_server, caplog):
    caplog.set_level(logging.INFO, logger="tsfmd")
    server = tsfmd_server(
        "  good:\n    family: fracast\n    source: bundled\n"
        "  needed:\n    family: fracast\n    source: /nonexistent/needed\n"
        "  optional:\n    family: fracast\n    source: /nonexistent/optional\n"
        "    required: false\n"
    )
    ready = server.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert list(body["not_ready"]) == ["needed"]
    assert list(body["optional_not_ready"]) == ["optional"]
    levels = {r.getMessage().split()[1]: r.levelname for r in caplog.records
              if "failed to load" in r.getMessage()}
    assert levels == {"needed": "ERROR", "optional": "WARNING"}
    models = {m["key"]: m for m in server.get("/v1/models").json()["models"]}
    assert (models["needed"]["required"], models["optional"]["required"]) == (True, False)
