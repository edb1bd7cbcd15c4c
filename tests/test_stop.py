"""Stopping with keep-alive clients, and starting on a port that is taken.

A stop must answer every request the server accepted, in full, and reset nothing: clients
in loops on keep-alive connections (http.client, so each outcome is seen exactly) run
against a real `tsfmd serve` process that gets SIGTERM in the middle. A client may be
refused a *new* connection once the listener is closed; a reset or a hang-up on a request
it already sent is a failure.
"""
from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import waitress
from waitress import wasyncore

from conftest import free_port, registry_yaml, start_tsfmd, wait_until
from tsfmd.daemon import wire
from tsfmd.daemon.server import DRAIN_SECONDS

TSFMD = str(Path(sys.executable).parent / "tsfmd")
MODEL = "  fracast:\n    family: fracast\n    source: bundled\n    device: cpu\n"


def forecast_body(seed: int) -> bytes:
    values = 10 + np.sin(np.arange(64) / 5.0) + seed * 1e-3
    return json.dumps({"input": values.round(4).tolist(), "next_len": 8}).encode()


class KeepAliveClient:
    """Forecasts in a loop on one keep-alive connection, reconnecting when the server says
    `Connection: close`; stops at the first refused connection or failure."""

    def __init__(self, port: int, worker: int):
        self.port, self.worker = port, worker
        self.answered = 0  # full 200 answers
        self.closes = 0  # answers that said Connection: close
        self.refused = False
        self.failure = None  # what went wrong on a request already sent
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        seed = self.worker * 100000
        while not self.stop.is_set():
            if conn.sock is None:
                try:
                    conn.connect()
                except OSError:  # refused (or reset while connecting): no request was sent
                    self.refused = True
                    return
            seed += 1
            try:
                conn.request("POST", "/fracast", body=forecast_body(seed),
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failure = f"request {seed}: {exc!r}"
                return
            if response.status != 200 or len(json.loads(body)["output"]) != 8:
                self.failure = f"request {seed}: {response.status} {body[:200]!r}"
                return
            self.answered += 1
            if response.getheader("Connection", "").lower() == "close":
                self.closes += 1
                conn.close()  # http.client already did; the next turn reconnects


def serve(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen:
    config = tmp_path / "tsfmd.yaml"
    config.write_text(registry_yaml(MODEL, port))
    return subprocess.Popen([TSFMD, "serve", "--config", str(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180):
    def ready():
        assert process.poll() is None, process.stdout.read()
        try:
            return requests.get(url + "/readyz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(ready, timeout=timeout, interval=0.3)


def through_stop(port: int, clients: int, stop):
    """Start `clients` keep-alive loops, call `stop()` once each has had a few answers;
    return (the clients, stop()'s result, the seconds it took)."""
    loops = [KeepAliveClient(port, worker) for worker in range(clients)]
    for client in loops:
        client.thread.start()
    try:
        wait_until(lambda: all(c.answered >= 3 for c in loops), timeout=120)
        assert all(c.closes == 0 for c in loops)  # keep-alive until the stop
        began = time.monotonic()
        result = stop()
        took = time.monotonic() - began
        for client in loops:
            client.thread.join(timeout=30)
    finally:
        for client in loops:
            client.stop.set()
    return loops, result, took


def assert_nothing_lost(clients, log: str = ""):
    failures = [c.failure for c in clients if c.failure]
    assert failures == [], f"{failures}\n{log[-3000:]}"
    # each connection ended with an answer saying Connection: close, then was refused anew
    assert all(c.refused and c.closes >= 1 for c in clients), [vars(c) for c in clients]


def sigterm_and_wait(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=DRAIN_SECONDS + 30)


def test_sigterm_with_keep_alive_clients_answers_everything_and_resets_nothing(tmp_path):
    port = free_port()
    process = serve(tmp_path, port)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        clients, returncode, took = through_stop(port, 6, lambda: sigterm_and_wait(process))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = process.stdout.read()
    assert_nothing_lost(clients, log)
    assert returncode == 0, log[-3000:]
    assert took < DRAIN_SECONDS, f"the stop took {took:.1f}s"
    assert "INFO tsfmd.server: stopped" in log
    assert "still in flight" not in log


# -- the parts of the stop, in-process ----------------------------------------------------


def one_request(conn: http.client.HTTPConnection, seed: int = 0):
    conn.request("POST", "/fracast", body=forecast_body(seed),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response, response.read()


def refused(port: int) -> bool:
    """No new connection is taken. A connect racing the listener's close may be reset
    instead of refused (the kernel had completed it): equally not taken, nothing sent."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


def test_idle_connection_may_carry_one_more_request_after_the_stop(tmp_path):
    """A client that sends on its idle keep-alive connection after the stop began (within
    the grace) gets its answer, with Connection: close; the stop ends once it is closed."""
    server = start_tsfmd(tmp_path, MODEL)
    server.daemon.wire.idle_grace = 120.0  # longer than the test: the stop ends by the close
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    response, _ = one_request(conn)
    assert response.status == 200 and response.getheader("Connection") is None
    stopper = threading.Thread(target=server.daemon.stop, kwargs={"drain_seconds": 60})
    began = time.monotonic()
    stopper.start()
    wait_until(lambda: refused(server.port), timeout=10)  # the listener is closed
    assert stopper.is_alive(), "the stop did not wait for the idle keep-alive connection"

    response, body = one_request(conn, seed=1)

    assert response.status == 200 and len(json.loads(body)["output"]) == 8
    assert response.getheader("Connection") == "close"
    stopper.join(timeout=30)
    assert not stopper.is_alive() and time.monotonic() - began < 60


def test_http10_keep_alive_client_is_told_to_close_once(tmp_path):
    server = start_tsfmd(tmp_path, MODEL)
    server.daemon.wire.idle_grace = 120.0
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    ask = b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"

    def answer() -> bytes:
        data = b""
        while not data.endswith(b'{"status": "ok"}'):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        return data

    sock.sendall(ask)
    assert b"\r\nConnection: Keep-Alive\r\n" in answer()
    stopper = threading.Thread(target=server.daemon.stop, kwargs={"drain_seconds": 60})
    stopper.start()
    wait_until(lambda: refused(server.port), timeout=10)
    sock.sendall(ask)
    head = answer().split(b"\r\n\r\n")[0].decode()
    assert [h for h in head.split("\r\n") if h.lower().startswith("connection:")] == [
        "Connection: close"], head
    assert sock.recv(4096) == b""  # and it closes, so the stop can end
    stopper.join(timeout=30)
    assert not stopper.is_alive()
    sock.close()


def test_connection_idle_past_the_grace_is_closed_cleanly(tmp_path):
    """An idle keep-alive connection that never sends again is closed after the grace:
    the client reads an orderly end of stream (no reset), and the stop returns."""
    server = start_tsfmd(tmp_path, MODEL)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status": "ok"}'):
        answer += sock.recv(4096)
    began = time.monotonic()
    server.daemon.stop(drain_seconds=20)
    took = time.monotonic() - began
    assert wire.IDLE_GRACE_SECONDS <= took < 20
    assert sock.recv(4096) == b""  # FIN, not ECONNRESET
    sock.close()


def test_stop_without_connections_is_quick(tmp_path):
    server = start_tsfmd(tmp_path, MODEL)
    began = time.monotonic()
    server.daemon.stop(drain_seconds=20)
    assert time.monotonic() - began < wire.IDLE_GRACE_SECONDS
    assert refused(server.port)


# -- a port that is taken -----------------------------------------------------------------


def test_port_in_use_exits_3_naming_the_address(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        process = serve(tmp_path, port)
        out, _ = process.communicate(timeout=180)
    finally:
        holder.close()
    assert process.returncode == 3, out
    assert f"cannot listen on 127.0.0.1:{port}: " in out
    assert "already listens there" in out and "--port" in out
    assert "Traceback" not in out


def test_host_and_port_options_override_the_registry(tmp_path):
    registry_port, port = free_port(), free_port()
    process = serve(tmp_path, registry_port, "--host", "127.0.0.1", "--port", str(port))
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        assert refused(registry_port)
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    assert f"listening on http://127.0.0.1:{port} " in out


def test_bad_port_option_is_a_usage_error(tmp_path):
    done = subprocess.run([TSFMD, "serve", "--port", "70000"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "a port is 0..65535, got 70000" in done.stderr


def test_listen_advice_per_errno():
    from tsfmd.daemon.server import listen_advice

    def advice(code, host="10.9.9.9"):
        return listen_advice(host, 5001, OSError(code, os.strerror(code)), "/etc/r.yaml")

    assert advice(errno.EADDRNOTAVAIL).startswith(
        "cannot listen on 10.9.9.9:5001: Cannot assign requested address: 10.9.9.9 is not "
        "an address of this machine; choose another server.host/server.port in /etc/r.yaml")
    assert "ports below 1024" in advice(errno.EACCES)
    assert advice(errno.EADDRINUSE, "::1").startswith("cannot listen on [::1]:5001: ")


# -- the listener's backlog -----------------------------------------------------------------


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


@pytest.mark.parametrize("take_backlog", [True, False], ids=["taken", "not-taken"])
def test_closing_the_listener_serves_the_backlog_instead_of_resetting_it(take_backlog):
    """A connection the kernel completed (with its request sent) before the listener closes:
    taken and answered. The not-taken case shows what closing alone does to it."""
    server = waitress.create_server(hello, host="127.0.0.1", port=0, threads=1)
    wire.install([server], wire.Wire(1024))
    client = socket.create_connection(("127.0.0.1", server.effective_port), timeout=30)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # in the backlog: no loop runs yet
    taken = wire.accept_backlog(server, 10) if take_backlog else 0
    server.del_channel()
    server.socket.close()
    loop = threading.Thread(target=server.run, daemon=True)
    loop.start()
    try:
        if take_backlog:
            assert taken == 1
            answer = b""
            while not answer.endswith(b"hello"):
                chunk = client.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 OK")
        else:
            with pytest.raises(ConnectionResetError):
                client.recv(4096)
    finally:
        client.close()
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))  # ends the loop
        loop.join(timeout=10)
        server.task_dispatcher.shutdown(timeout=5)
