"""Shared test helpers: a real tsfmd (waitress on a free loopback port) from a real YAML file.

No test may reach the network: the hub is switched off for the whole session.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
import requests

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("NOTIFY_SOCKET", None)
os.environ.pop("WATCHDOG_USEC", None)

FIXTURES = Path(__file__).parent / "fixtures"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def registry_yaml(models: str, port: int, extra_server: str = "") -> str:
    """A registry text with a `server:` part on `port` and the given `models:` body."""
    return (
        "server:\n"
        "  host: 127.0.0.1\n"
        f"  port: {port}\n"
        "  threads: 16\n"
        f"{extra_server}"
        "models:\n"
        f"{models}"
    )


class RunningTsfmd:
    """A Daemon started in this process on a loopback port; stopped by the fixture."""

    def __init__(self, config_path: Path, port: int):
        from tsfmd.daemon.server import Daemon

        self.config_path = config_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.daemon = Daemon(str(config_path))
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.daemon.start()
        except BaseException as exc:  # surfaced by wait_ready
            self.error = exc

    def start(self, timeout: float = 180.0) -> "RunningTsfmd":
        self._thread.start()
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        if self._thread.is_alive():
            raise TimeoutError("tsfmd did not finish loading its models in time")
        return self

    def post(self, route: str, body, **kwargs) -> requests.Response:
        return requests.post(self.url + route, json=body, timeout=kwargs.pop("timeout", 120),
                             **kwargs)

    def get(self, route: str, **kwargs) -> requests.Response:
        return requests.get(self.url + route, timeout=kwargs.pop("timeout", 30), **kwargs)

    def stop(self):
        self.daemon.stop(drain_seconds=5.0)


def start_tsfmd(directory: Path, models: str, extra_server: str = "") -> RunningTsfmd:
    """Write a registry into `directory` and start a real tsfmd on a free loopback port."""
    port = free_port()
    config = Path(directory) / f"tsfmd-{port}.yaml"
    config.write_text(registry_yaml(models, port, extra_server))
    return RunningTsfmd(config, port).start()


@pytest.fixture
def tsfmd_server(tmp_path):
    """Factory: `tsfmd_server(models_yaml)` starts a real tsfmd serving those models."""
    started = []

    def start(models: str, extra_server: str = "") -> RunningTsfmd:
        server = start_tsfmd(tmp_path, models, extra_server)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")
