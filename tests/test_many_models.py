"""Many models of many families load together, reliably, at start and on reload.

Models load in parallel threads. Two families importing their libraries at once used to
get half-initialised modules: a registry with a Chronos-Bolt and a Chronos-2 entry failed
both ("needs the chronos-forecasting package" / "unknown pipeline class"), two TimesFM
entries failed one ("cannot import name TimesFm2_5ModelForPrediction"). A library is
imported once per process, so only a fresh process shows the race: every start here is a
real `tsfmd serve` in its own process, with two tiny checkpoints' entries per family
(tests/tinymodels.py), ten starts in a row, and one reload that brings all eight in.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import tinymodels
from conftest import free_port, registry_yaml, wait_until

STARTS = 10
TIMEMOE_TINY = Path(__file__).parent / "fixtures" / "timemoe" / "tiny"


@pytest.fixture(scope="module")
def eight_models(tmp_path_factory) -> str:
    """The `models:` body: two entries each of Chronos-Bolt, Chronos-2, TimesFM, Time-MoE."""
    root = tmp_path_factory.mktemp("many-ckpt")
    sources = {
        "chronos-bolt": tinymodels.chronos_bolt(root / "bolt"),
        "chronos-2": tinymodels.chronos2(root / "c2"),
        "timesfm-2.5": tinymodels.timesfm25(root / "tfm", context_length=256),
        "time-moe": TIMEMOE_TINY,
    }
    return "".join(
        f"  {family.replace('.', '')}-{n}:\n    family: {family}\n"
        f"    source: {source}\n    device: cpu\n"
        for family, source in sources.items() for n in (1, 2)
    )


class Serve:
    """`tsfmd serve` in a child process on a free loopback port."""

    def __init__(self, directory: Path, models: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / f"tsfmd-{self.port}.yaml"
        self.write(models)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.log = open(directory / f"tsfmd-{self.port}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tsfmd", "serve", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )

    def write(self, models: str) -> None:
        extra = f"  state_dir: {self.config.parent / 'state'}\n"
        self.config.write_text(registry_yaml(models, self.port, extra))

    def get(self, route: str):
        try:
            return requests.get(self.url + route, timeout=10)
        except requests.ConnectionError:
            assert self.process.poll() is None, f"tsfmd exited: {self.output()}"
            return None

    def settled(self):
        """The model table once no model is loading any more, else None."""
        reply = self.get("/v1/models")
        if reply is None:
            return None
        models = {m["key"]: m for m in reply.json()["models"]}
        if any(m["status"] == "loading" for m in models.values()):
            return None
        return models

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def assert_all_ready(models: dict, expected: set, serve: Serve) -> None:
    assert set(models) == expected, serve.output()
    failed = {k: m.get("reason") for k, m in models.items() if m["status"] != "ready"}
    assert not failed, f"models that did not load: {failed}"


def test_eight_models_of_four_families_start_ready_ten_times(tmp_path, eight_models):
    expected = {line.strip().rstrip(":") for line in eight_models.splitlines()
                if line.startswith("  ") and not line.startswith("    ")}
    assert len(expected) == 8
    for start in range(STARTS):
        serve = Serve(tmp_path, eight_models)
        try:
            began = time.monotonic()
            models = wait_until(serve.settled, timeout=240, interval=0.5)
            assert_all_ready(models, expected, serve)
            assert serve.get("/readyz").status_code == 200, f"start {start}"
            print(f"start {start}: eight ready in {time.monotonic() - began:.1f}s")
        finally:
            serve.stop()


def test_a_reload_bringing_in_eight_models_loads_them_all(tmp_path, eight_models):
    """The families' first imports happen during the reload here, not at start."""
    serve = Serve(tmp_path, "  fc:\n    family: fracast\n    source: bundled\n")
    try:
        wait_until(serve.settled, timeout=120, interval=0.5)
        serve.write(eight_models)
        serve.process.send_signal(signal.SIGHUP)

        def reloaded():
            reply = serve.get("/v1/status")
            return reply is not None and reply.json()["reloads"]["finished"] >= 1

        wait_until(reloaded, timeout=240, interval=0.5)
        models = serve.settled()
        expected = {line.strip().rstrip(":") for line in eight_models.splitlines()
                    if line.startswith("  ") and not line.startswith("    ")}
        assert_all_ready(models, expected, serve)
    finally:
        serve.stop()
