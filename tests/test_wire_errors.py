"""Errors waitress answers itself (before Flask sees the request) are tsfmd's JSON errors.

Malformed requests cannot be sent with an HTTP library, so these tests write raw bytes to
a real tsfmd on a loopback port and parse the answer by hand. The registry's
max_request_bytes is small (2000) so that both caps are reached with small bodies: Flask's
(exactly the configured limit) and waitress's (a margin above it, for chunk framing).
"""
from __future__ import annotations

import gzip
import json
import socket

import numpy as np
import pytest
import requests

LIMIT = 2000
MODEL = "  fracast:\n    family: fracast\n    source: bundled\n    device: cpu\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import start_tsfmd

    running = start_tsfmd(tmp_path_factory.mktemp("wire"), MODEL,
                          f"  max_request_bytes: {LIMIT}\n")
    yield running
    running.stop()


def exchange(server, raw: bytes, timeout: float = 30.0):
    """Send `raw`, read the one answer; (status, headers, parsed JSON body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed without an answer: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "the answer's body was cut short"
            body += chunk
    status = int(lines[0].split()[1])
    return status, headers, json.loads(body[:length])


def request(method: str, headers: dict, body: bytes = b"", path: str = "/fracast") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def assert_json_error(answer, status: int, *phrases: str):
    got_status, headers, body = answer
    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    assert set(body) == {"status", "error"} and body["status"] == "error"
    for phrase in phrases:
        assert phrase in body["error"], body["error"]


LIMIT_PHRASES = (f"server's limit of {LIMIT} bytes", "server.max_request_bytes")


def test_content_length_over_waitress_cap_is_json_413_with_configured_limit(server):
    # far above waitress's cap: it refuses on the headers alone, before any body
    answer = exchange(server, request("POST", {"Content-Type": "application/json",
                                               "Content-Length": str(10 * 1024 * 1024)}))
    assert_json_error(answer, 413, *LIMIT_PHRASES)
    assert answer[1]["connection"] == "close"


def test_body_between_the_limit_and_waitress_cap_gets_the_same_answer(server):
    body = b"[" + b"1," * (LIMIT // 2) + b"1]"
    answer = exchange(server, request("POST", {"Content-Type": "application/json",
                                               "Content-Length": str(len(body))}, body))
    assert_json_error(answer, 413, *LIMIT_PHRASES)


def test_chunked_body_over_waitress_cap_is_json_413(server):
    chunk = b"x" * (LIMIT + 70000)
    raw = request("POST", {"Transfer-Encoding": "chunked"},
                  b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
    assert_json_error(exchange(server, raw), 413, *LIMIT_PHRASES)


@pytest.mark.parametrize("headers, body, phrase", [
    ({"Transfer-Encoding": "chunked"}, b"zz\r\nab\r\n0\r\n\r\n", "Invalid chunk size"),
    ({"Transfer-Encoding": "chunked"}, b"2\r\nabcd\r\n0\r\n\r\n", "Chunk not properly terminated"),
    ({"Content-Length": "12abc"}, b"", "Content-Length is invalid"),
    ({"Content-Length": "-5"}, b"", "Content-Length is invalid"),
    ({"Bad Header": "x"}, b"", "Invalid header"),
])
def test_malformed_requests_are_json_400(server, headers, body, phrase):
    answer = exchange(server, request("POST", headers, body))
    assert_json_error(answer, 400, "malformed HTTP request: ", phrase)


def test_malformed_request_line_is_json_400(server):
    assert_json_error(exchange(server, b"GARBAGE\r\n\r\n"), 400, "malformed HTTP request")


def test_unsupported_transfer_encoding_is_json_501(server):
    raw = request("POST", {"Transfer-Encoding": "gzip", "Content-Length": "2"}, b"{}")
    assert_json_error(exchange(server, raw), 501, "not implemented")


def test_headers_over_waitress_cap_are_json_431(server):
    raw = request("GET", {"X-Big": "a" * 300_000}, path="/healthz")
    assert_json_error(exchange(server, raw), 431, "request headers are larger", "262144 bytes")


def forecast_body() -> bytes:
    values = np.round(10 + np.sin(np.arange(40) / 4), 3).tolist()
    return json.dumps({"input": values, "next_len": 4}).encode()


def test_compressed_body_is_415_naming_the_encoding(server):
    r = requests.post(server.url + "/fracast", data=gzip.compress(forecast_body()),
                      headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                      timeout=30)
    assert r.status_code == 415, r.text
    assert r.headers["Accept-Encoding"] == "identity"
    body = r.json()
    assert body["status"] == "error" and "Content-Encoding 'gzip' is not supported" in body["error"]


def test_identity_encoding_is_served(server):
    for encoding in ("identity", None):
        headers = {"Content-Type": "application/json"}
        if encoding:
            headers["Content-Encoding"] = encoding
        r = requests.post(server.url + "/fracast", data=forecast_body(), headers=headers,
                          timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["output"]) == 4


def test_the_server_keeps_serving_after_malformed_requests(server):
    for raw in (b"GARBAGE\r\n\r\n", request("POST", {"Content-Length": "x"})):
        exchange(server, raw)
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200


def test_a_client_library_sending_a_big_body_reads_the_json_413(server):
    """waitress refuses on the headers while the client still sends: the answer is read."""
    r = requests.post(server.url + "/fracast", data=b"1" * 1_000_000,
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"].startswith(
        f"the body is larger than the server's limit of {LIMIT} bytes")
