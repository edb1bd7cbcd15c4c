"""Optional token auth (server.auth), over real HTTP against a real tsfmd on loopback.

- Protected paths (tsfmd's own APIs, /metrics, admin, any path no rule names) answer 401
  without a token or with a malformed header, 403 with a wrong one, and serve with a right
  one; /healthz, /readyz and TDgpt's model routes stay open unless protect_tdgpt_routes.
- A token never reaches a log line; the access log names the client instead.
- The tokens file is read with the registry: missing or empty is an error at check/start,
  a reload with such a file is refused and the old tokens keep working, a changed file
  applies on reload; `tsfmd reload` (SIGHUP + /v1/status) works with auth on.
- Generated TDgpt adapters send the token of server.auth.adapter_token_file (TDgpt cannot
  be installed here: the anode is the stand-in of tests/anode_standin/).
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from anode_standin.lab import (
    adapters, anode_log, make_anode, run_anode, series, taosd_forecast,
)
from conftest import start_tsfmd
from test_lifecycle import signal_handlers  # noqa: F401 (a fixture)
from tsfmd.api import auth
from tsfmd.core import tokens
from tsfmd.core.registry import RegistryError, parse_registry

REPO = Path(__file__).resolve().parent.parent

ALICE = secrets.token_hex(24)
UNNAMED = secrets.token_urlsafe(32)
WRONG = secrets.token_hex(24)  # well-formed, in no tokens file
MODELS = "  fracast-fc:\n    family: fracast\n    source: bundled\n    device: cpu\n"
BROKEN = MODELS.replace("fracast-fc", "broken-fc").replace("bundled", "/nonexistent/weights")
SERIES = {"input": [10.0 + (i % 12) * 0.5 for i in range(64)], "next_len": 8}

#: paths that must need a token with auth on (served or not: the check comes first)
PROTECTED = ["/v1/models", "/v1/status", "/metrics", "/v1/timeseries/models",
             "/v1/models/fracast-fc/forecast", "/v1", "//v1//status", "/no-such-route"]
#: what the right token gets on a GET, where the answer is known here
SERVED_GET = {"/v1/models": 200, "/v1/status": 200, "/metrics": 200, "/no-such-route": 404}
OPEN = ["/healthz", "/readyz", "/", "/ui/app.js", "/docs", "/openapi.json"]


def tokens_file(directory: Path, *lines: str, name: str = "tokens") -> Path:
    path = directory / name
    path.write_text("# tsfmd tokens\n\n" + "\n".join(lines) + "\n")
    return path


def auth_server(**auth_fields) -> str:
    """The `server:` lines of an `auth:` block; tokens_file defaults to `tokens` beside the
    registry (a relative path outside systemd)."""
    fields = {"tokens_file": "tokens", **auth_fields}
    return "  auth:\n" + "".join(f"    {k}: {v}\n" for k, v in fields.items())


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A tsfmd with auth on and TDgpt's routes open (the default)."""
    directory = tmp_path_factory.mktemp("auth")
    tokens_file(directory, f"alice:{ALICE}", UNNAMED)
    server = start_tsfmd(directory, MODELS, auth_server())
    yield server
    server.stop()


def assert_refused(reply, status: int, challenge: str = ""):
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert body["status"] == "error" and body["error"]
    assert reply.headers["WWW-Authenticate"].startswith('Bearer realm="tsfmd"')
    assert challenge in reply.headers["WWW-Authenticate"]
    return body["error"]


@pytest.mark.parametrize("path", PROTECTED)
def test_protected_paths_need_a_right_token(guarded, path):
    url = guarded.url + path
    message = assert_refused(requests.get(url, timeout=30), 401)
    assert "Authorization: Bearer <token>" in message
    for malformed in ("Basic YWxpY2U6c2VjcmV0", "Bearer", f"Bearer {ALICE}!", ALICE):
        reply = requests.get(url, headers={"Authorization": malformed}, timeout=30)
        assert_refused(reply, 401, 'error="invalid_request"')
    assert_refused(requests.get(url, headers=bearer(WRONG), timeout=30), 403,
                   'error="invalid_token"')
    # the check comes before the body is looked at, whatever the method
    assert requests.post(url, json=SERIES, timeout=30).status_code == 401
    for token in (ALICE, UNNAMED):
        reply = requests.get(url, headers=bearer(token), timeout=30)
        assert reply.status_code not in (401, 403), reply.text
        # past auth, the route's own answer: 200 where a GET is served, else its 404/405
        assert reply.status_code == SERVED_GET.get(path, reply.status_code), reply.text
        assert reply.status_code in (200, 404, 405), reply.text


def test_bearer_scheme_is_case_insensitive(guarded):
    reply = guarded.get("/v1/models", headers={"Authorization": f"bearer  {ALICE}"})
    assert reply.status_code == 200
    assert [m["key"] for m in reply.json()["models"]] == ["fracast-fc"]


@pytest.mark.parametrize("path", OPEN)
def test_probes_and_pages_stay_open(guarded, path):
    reply = guarded.get(path)
    assert reply.status_code not in (401, 403), reply.text
    if path in ("/healthz", "/readyz"):
        assert reply.status_code == 200


def test_tdgpt_routes_stay_open_by_default(guarded):
    reply = guarded.post("/fracast-fc", SERIES)
    assert reply.status_code == 200 and len(reply.json()["output"]) == 8
    assert guarded.get("/fracast-fc").status_code == 405  # TDgpt's status probe
    assert guarded.post("/fracast-fc/", SERIES).status_code == 200
    with_token = guarded.post("/fracast-fc", SERIES, headers=bearer(ALICE))
    assert with_token.json()["output"] == reply.json()["output"]


def test_tdgpt_routes_protected_when_asked(tmp_path):
    tokens_file(tmp_path, f"tdgpt:{ALICE}")
    server = start_tsfmd(tmp_path, MODELS, auth_server(protect_tdgpt_routes="true"))
    try:
        assert_refused(server.post("/fracast-fc", SERIES), 401)
        assert_refused(server.get("/fracast-fc"), 401)
        assert_refused(server.post("/fracast-fc", SERIES, headers=bearer(WRONG)), 403)
        reply = server.post("/fracast-fc", SERIES, headers=bearer(ALICE))
        assert reply.status_code == 200 and len(reply.json()["output"]) == 8
        assert server.get("/healthz").status_code == 200
        assert server.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_tokens_never_reach_the_logs(guarded, caplog):
    caplog.set_level(logging.DEBUG)
    guarded.get("/v1/models", headers=bearer(ALICE))
    guarded.get("/v1/status", headers=bearer(UNNAMED))
    guarded.get("/v1/models", headers=bearer(WRONG))
    guarded.get("/v1/models", headers={"Authorization": f"Basic {ALICE}"})
    guarded.post("/fracast-fc", SERIES, headers=bearer(ALICE))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    access = [r.getMessage() for r in caplog.records if r.name == "tsfmd.access"]
    assert len(access) == 5, logged
    for secret in (ALICE, UNNAMED, WRONG):
        assert secret not in logged
    assert access[0].startswith("GET /v1/models 200") and access[0].endswith(" client=alice")
    assert access[1].endswith(" client=line-4")  # an unnamed token: its line in the file
    assert access[2].startswith("GET /v1/models 403") and "client=" not in access[2]
    assert access[3].startswith("GET /v1/models 401")
    assert "refused an unknown token" in logged


def test_every_token_is_compared(monkeypatch):
    """No early exit: a match on the first token still compares the others (spied on)."""
    accepted = tuple(tokens.Token(f"t{i}", tokens.digest(f"{i:032d}")) for i in range(5))
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert auth._match(tokens.digest(f"{0:032d}"), accepted).name == "t0"
    assert len(calls) == 5
    assert auth._match(tokens.digest(WRONG), accepted) is None and len(calls) == 10


# -- the registry ---------------------------------------------------------------------------


def registry_text(auth_block: str) -> str:
    return f"server:\n  port: 5001\n{auth_block}models:\n{MODELS}"


def problems(text: str, path: Path) -> list:
    with pytest.raises(RegistryError) as raised:
        parse_registry(text, str(path))
    return raised.value.problems


def test_auth_settings_are_validated(tmp_path):
    registry = tmp_path / "tsfmd.yaml"
    assert not parse_registry(registry_text(""), str(registry)).server.auth.enabled
    found = problems(registry_text(auth_server(typo="1")), registry)
    assert any("server.auth: unknown field 'typo'" in p for p in found)
    assert any("cannot read the tokens file" in p for p in found)  # there is none yet
    tokens_file(tmp_path)  # comments only
    (problem,) = problems(registry_text(auth_server()), registry)
    assert "no token in the tokens file" in problem
    short, bad = secrets.token_hex(8), "sp ace" + ALICE
    tokens_file(tmp_path, f"a:{ALICE}", f"b:{ALICE}", f"a:{UNNAMED}", f"c:{short}",
                f"d:{bad}", f"bad name:{WRONG}")
    found = problems(registry_text(auth_server()), registry)
    assert [p.split(": line ")[1][:2] for p in found] == ["4:", "5:", "6:", "7:", "8:"]
    assert "same token as on line 3" in found[0] and "'a' is used on line 3" in found[1]
    assert "fewer than 32" in found[2]
    for secret in (ALICE, UNNAMED, short, bad, WRONG):
        assert all(secret not in p for p in found)
    found = problems(registry_text("  auth:\n    protect_tdgpt_routes: true\n"), registry)
    assert "server.auth.tokens_file: missing" in found[0]
    tokens_file(tmp_path, f"tdgpt:{ALICE}")
    found = problems(registry_text(auth_server(adapter_token_file="rel")), registry)
    assert "must be an absolute path" in found[0]
    other = tokens_file(tmp_path, WRONG, name="adapter-token")
    found = problems(registry_text(auth_server(adapter_token_file=other)), registry)
    assert "its token is not in tokens_file" in found[0] and WRONG not in found[0]
    parsed = parse_registry(registry_text(auth_server(protect_tdgpt_routes="true")),
                            str(registry))
    assert parsed.server.auth.tokens_file == str(tmp_path / "tokens")
    assert "no TDgpt adapter sends a token" in parsed.warnings[0]
    assert ALICE not in repr(parsed)


def test_a_relative_tokens_file_is_a_systemd_credential(tmp_path, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    tokens_file(credentials, f"ops:{ALICE}", name="tsfmd-tokens")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    text = registry_text("  auth:\n    tokens_file: tsfmd-tokens\n")
    auth_settings = parse_registry(text, str(tmp_path / "tsfmd.yaml")).server.auth
    assert auth_settings.tokens_file == str(credentials / "tsfmd-tokens")
    assert [t.name for t in auth_settings.tokens] == ["ops"]


def test_tsfmd_check_refuses_a_missing_tokens_file(tmp_path):
    registry = tmp_path / "tsfmd.yaml"
    registry.write_text(registry_text(auth_server()))
    done = subprocess.run([str(Path(sys.executable).parent / "tsfmd"), "check", "--config",
                           str(registry)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"server.auth.tokens_file: {tmp_path / 'tokens'}: cannot read" in done.stderr


# -- reload -----------------------------------------------------------------------------------


def test_a_changed_tokens_file_applies_on_reload_and_a_broken_one_is_refused(tmp_path):
    tokens_file(tmp_path, f"alice:{ALICE}")
    server = start_tsfmd(tmp_path, MODELS, auth_server())
    try:
        daemon = server.daemon
        tokens_file(tmp_path, f"bob:{UNNAMED}")
        assert daemon.reload() is True
        assert server.get("/v1/models", headers=bearer(ALICE)).status_code == 403
        assert server.get("/v1/models", headers=bearer(UNNAMED)).status_code == 200
        for broken in ("", f"bob:{secrets.token_hex(4)}"):  # empty; a too short token
            tokens_file(tmp_path, broken)
            assert daemon.reload() is False
            assert "server.auth.tokens_file" in daemon.reloads["last_error"]
            assert server.get("/v1/models", headers=bearer(UNNAMED)).status_code == 200
        (tmp_path / "tokens").unlink()
        assert daemon.reload() is False
        assert server.get("/v1/models", headers=bearer(UNNAMED)).status_code == 200
        # auth off through a reload: the registry without server.auth
        server.config_path.write_text(server.config_path.read_text().replace(
            auth_server(), ""))
        assert daemon.reload() is True
        assert server.get("/v1/models").status_code == 200
    finally:
        server.stop()


def run_main_loop(server):
    server.daemon.install_signal_handlers()
    loop = threading.Thread(target=server.daemon.run_until_stopped, daemon=True)
    loop.start()
    return loop


def tsfmd_reload(*argv, env=None):
    command = [str(Path(sys.executable).parent / "tsfmd"), "reload", "--pid", str(os.getpid()),
               "--timeout", "120", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def test_tsfmd_reload_with_the_registrys_tokens(tmp_path, signal_handlers):  # noqa: F811
    tokens_file(tmp_path, f"alice:{ALICE}")
    server = start_tsfmd(tmp_path, MODELS, auth_server())
    loop = run_main_loop(server)
    try:
        # a new token beside the old one: the reload reads the file, tries each token
        tokens_file(tmp_path, f"bob:{UNNAMED}", f"alice:{ALICE}")
        done = tsfmd_reload("--url", server.url, "--config", str(server.config_path))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "tsfmd reload: done (unchanged fracast-fc)"
        assert server.get("/v1/status", headers=bearer(UNNAMED)).status_code == 200
        # without a token it can use, it says so (and prints none)
        done = tsfmd_reload("--url", server.url)
        assert done.returncode == 1
        assert "refused /v1/status (HTTP 401): auth is on" in done.stderr
        assert ALICE not in done.stderr + done.stdout
    finally:
        server.daemon.request_stop()
        loop.join(timeout=30)


def test_tsfmd_reload_as_the_unit_runs_it(tmp_path, monkeypatch, signal_handlers):  # noqa: F811
    """ExecReload=tsfmd reload --pid $MAINPID: the address and the reload token come from
    $RUNTIME_DIRECTORY, so a reload that replaces every token still works."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime))
    tokens_file(tmp_path, f"alice:{ALICE}")
    server = start_tsfmd(tmp_path, MODELS, auth_server())
    loop = run_main_loop(server)
    try:
        reload_token = runtime / auth.RELOAD_TOKEN_FILE
        assert stat.S_IMODE(reload_token.stat().st_mode) == 0o600
        secret = reload_token.read_text().strip()
        # the reload token opens /v1/status only
        assert server.get("/v1/status", headers=bearer(secret)).status_code == 200
        assert server.get("/v1/models", headers=bearer(secret)).status_code == 403
        tokens_file(tmp_path, f"bob:{UNNAMED}")  # no token of the old file is left
        done = tsfmd_reload(env={"RUNTIME_DIRECTORY": str(runtime)})
        assert done.returncode == 0, done.stderr
        assert server.get("/v1/models", headers=bearer(ALICE)).status_code == 403
        assert server.get("/v1/models", headers=bearer(UNNAMED)).status_code == 200
        tokens_file(tmp_path)  # empty: refused, bob's token keeps working
        done = tsfmd_reload(env={"RUNTIME_DIRECTORY": str(runtime)})
        assert done.returncode == 1
        assert "refused, the previous registry keeps serving" in done.stderr
        assert "no token in the tokens file" in done.stderr
        assert server.get("/v1/models", headers=bearer(UNNAMED)).status_code == 200
    finally:
        server.daemon.request_stop()
        loop.join(timeout=30)


# -- generated TDgpt adapters ---------------------------------------------------------------


def test_generated_adapter_sends_the_token(tmp_path):
    adapter_token = tmp_path / "tsfmd-adapter-token"
    adapter_token.write_text(f"tdgpt:{ALICE}\n")
    tokens_file(tmp_path, f"tdgpt:{ALICE}", f"ops:{UNNAMED}")
    server = start_tsfmd(tmp_path, MODELS + BROKEN, auth_server(
        protect_tdgpt_routes="true", adapter_token_file=adapter_token))
    try:
        _, values = series()  # what taosd_forecast sends
        reference = server.post("/fracast-fc", {"input": values, "next_len": 12,
                                                "conf_interval": 0.95}, headers=bearer(ALICE))
        reference = reference.json()
        anode, config = make_anode(tmp_path, "config.py")
        code, _, err = adapters("install", anode, config, server.config_path)
        assert code == 0, err
        generated = (anode / "lib/taosanalytics/algo/custom/fc/tsfmd_fracast_fc.py").read_text()
        assert str(adapter_token) in generated and ALICE not in generated
        job = {
            "forecasts": [
                taosd_forecast("fracast-fc", 1, 12),
                # a host= the query chose gets no token (it could collect it): refused
                taosd_forecast("fracast-fc", 1, 12, f"host=localhost:{server.port}"),
            ],
            "status": ["fracast-fc", "broken-fc"],
        }
        answer = run_anode(anode, "config.py", config, job)
        ours, elsewhere = answer["forecasts"]
        assert "msg" not in ours, ours.get("msg")
        assert ours["res"][1:] == [reference["output"], reference["lower"], reference["upper"]]
        assert elsewhere["rows"] == -1 and "HTTP 401" in elsewhere["msg"]
        # READY/UNAVAIL from tsfmd's /v1/models, which needs the token
        assert answer["status"] == {"fracast-fc": "READY", "broken-fc": "UNAVAIL"}
        assert ALICE not in anode_log(config).read_text()
    finally:
        server.stop()


def test_generated_adapter_without_a_readable_token_file_says_so(tmp_path):
    tokens_file(tmp_path, f"tdgpt:{ALICE}")
    gone = tmp_path / "no-such-token-file"
    server = start_tsfmd(tmp_path, MODELS, auth_server(
        protect_tdgpt_routes="true", adapter_token_file=gone))
    try:
        anode, config = make_anode(tmp_path, "config.py")
        code, _, err = adapters("install", anode, config, server.config_path)
        assert code == 0, err
        answer = run_anode(anode, "config.py", config,
                           {"forecasts": [taosd_forecast("fracast-fc", 1, 12)]})
        (refused,) = answer["forecasts"]
        assert refused["rows"] == -1 and "HTTP 401" in refused["msg"]
        assert "needs a token" in refused["msg"]
        assert f"cannot read the token file {gone}" in anode_log(config).read_text()
    finally:
        server.stop()


# -- the systemd drop-in --------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_credential_dropin_verifies_clean(tmp_path):
    """packaging/systemd/auth.conf on the installed unit passes `systemd-analyze verify`.
    (Not run under the systemd lab of systemd_lab.py: there even a bare oneshot service's
    $CREDENTIALS_DIRECTORY stays empty, so LoadCredential= cannot be exercised in it;
    test_a_relative_tokens_file_is_a_systemd_credential covers tsfmd's side.)"""
    tsfmd = str(Path(sys.executable).parent / "tsfmd")
    subprocess.run([tsfmd, "install-unit", "--root", str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    unit = tmp_path / "etc/systemd/system/tsfmd.service"
    shipped = REPO / "packaging" / "systemd" / "auth.conf"
    assert "\nLoadCredential=tsfmd-tokens:/etc/tsfmd/tsfmd-tokens\n" in shipped.read_text()
    dropins = unit.parent / "tsfmd.service.d"
    dropins.mkdir(exist_ok=True)
    shutil.copy(shipped, dropins / "auth.conf")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
