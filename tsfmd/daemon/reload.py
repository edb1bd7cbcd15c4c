"""`tsfmd reload`: SIGHUP the daemon and wait until that reload is done.

systemd's `ExecReload=kill -HUP $MAINPID` returns at once, so `systemctl reload` would
return while the old registry still serves. This command is the unit's ExecReload instead:
it reads the daemon's reload counters (GET /v1/status), sends SIGHUP, and waits until a
reload that started after it looked has finished. Exit 0: the new registry serves (a model
marked `required: false` that failed to load is printed as a warning); exit 1: the daemon
refused an invalid registry (the old one keeps serving), or a required model failed to
load (its previous version, if any, keeps serving; the rest applies). The reason is printed.

With auth on (server.auth in the registry) /v1/status needs a token. It sends the reload
token the daemon leaves beside its address ($RUNTIME_DIRECTORY/reload-token, made at each
start, so a reload that changes the tokens file still works), else each token of the
registry's tokens file until one is accepted. A token is never printed.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

#: where the daemon leaves its address under systemd (RuntimeDirectory=tsfmd)
RUNTIME_ADDRESS = "/run/tsfmd/address"


def add_parser(commands) -> None:
    reload = commands.add_parser(
        "reload", help="make the running daemon re-read its registry and wait for the outcome"
    )
    reload.add_argument("--pid", type=int, default=None,
                        help="the daemon's pid (systemd: $MAINPID); default: what it reports")
    reload.add_argument("--url", default=None,
                        help="the daemon's base URL; default: host and port of --config, "
                        f"else $RUNTIME_DIRECTORY/address or {RUNTIME_ADDRESS}, else the "
                        "default registry's")
    reload.add_argument("--config", default=None, help="registry file to find host and port in")
    reload.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for the reload (loads can be long)")
    reload.set_defaults(handler=cmd_reload)


class ReloadError(RuntimeError):
    pass


def _runtime_files(name: str) -> List[str]:
    """`name` in the daemon's runtime directory: $RUNTIME_DIRECTORY's, else /run/tsfmd."""
    found = [os.path.join(d, name) for d in os.environ.get("RUNTIME_DIRECTORY", "").split(":")
             if d]
    return found + [os.path.join(os.path.dirname(RUNTIME_ADDRESS), name)]


def _first_line(paths: List[str]) -> Optional[str]:
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if text:
            return text
    return None


def daemon_url(url: Optional[str], config: Optional[str]) -> str:
    """--url, else the address of the daemon serving --config, else the runtime address
    file a systemd tsfmd leaves, else the default registry's address."""
    if url:
        return url.rstrip("/")
    if config:
        return _registry_url(config)
    found = _first_line(_runtime_files("address"))
    if found:
        return found.rstrip("/")
    from tsfmd.core.registry import default_config

    return _registry_url(default_config())


def _registry_url(path: str) -> str:
    from tsfmd.core.registry import RegistryError, client_host, load_registry

    try:
        server = load_registry(path).server
    except RegistryError as exc:
        raise ReloadError(f"cannot find the daemon: no --url, no {RUNTIME_ADDRESS}, and {exc}")
    return f"http://{client_host(server.host)}:{server.port}"


def credentials(config: Optional[str]) -> List[str]:
    """Tokens to try on /v1/status, best first; empty when auth is off (or nothing found)."""
    found = []
    reload_token = _first_line(_runtime_files("reload-token"))
    if reload_token:
        found.append(reload_token)
    from tsfmd.core import tokens
    from tsfmd.core.registry import RegistryError, default_config, load_registry

    try:
        auth = load_registry(config or default_config()).server.auth
    except RegistryError:
        return found  # the daemon's answer (or the reload itself) will say what is wrong
    if auth.enabled:
        pairs, _ = tokens.read_secrets(auth.tokens_file)
        found += [secret for _, secret in pairs]
    return found


#: the daemon is local: never send its status request through an http_proxy
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StatusReader:
    """GET /v1/status with the first of `tokens` the daemon accepts (none: no header)."""

    def __init__(self, url: str, tokens: List[str]):
        self.url, self.tokens = url, list(tokens)

    def read(self) -> dict:
        refused = None
        for token in self.tokens or [None]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            request = urllib.request.Request(self.url + "/v1/status", headers=headers)
            try:
                with _OPENER.open(request, timeout=10) as response:
                    answer = json.load(response)
            except urllib.error.HTTPError as exc:
                if exc.code not in (401, 403):
                    raise self._error(exc) from exc
                refused = exc
                continue
            except (OSError, ValueError) as exc:  # URLError is an OSError
                raise self._error(exc) from exc
            if token:  # keep trying the accepted one first
                self.tokens.remove(token)
                self.tokens.insert(0, token)
            return answer
        raise ReloadError(
            f"the daemon at {self.url} refused /v1/status (HTTP {refused.code}): auth is on "
            f"and {len(self.tokens)} token(s) were tried (the reload token in "
            f"{_runtime_files('reload-token')[0]} and the registry's server.auth.tokens_file)")

    def _error(self, exc: Exception) -> ReloadError:
        return ReloadError(f"the daemon at {self.url} does not answer /v1/status: {exc}")


def reload_and_wait(url: str, pid: Optional[int], timeout: float, poll: float = 0.1,
                    tokens: Optional[List[str]] = None) -> dict:
    """SIGHUP the daemon; return its `reloads` counters once that reload has finished."""
    status = StatusReader(url, tokens or [])
    before = status.read()
    target = before["reloads"]["started"] + 1  # the first reload starting after this read
    pid = pid or before["pid"]
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise ReloadError(f"cannot signal tsfmd (pid {pid}): {exc.strerror}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(poll)
        try:
            reloads = status.read()["reloads"]
        except ReloadError:
            continue  # busy for a moment; the deadline still bounds the wait
        if reloads["finished"] >= target:
            return reloads
    raise ReloadError(f"the reload did not finish within {timeout:.0f}s")


def cmd_reload(args) -> int:
    try:
        url = daemon_url(args.url, args.config)
        reloads = reload_and_wait(url, args.pid, args.timeout, tokens=credentials(args.config))
    except ReloadError as exc:
        print(f"tsfmd reload: {exc}", file=sys.stderr)
        return 1
    changes = reloads.get("last_changes") or {}
    done = "; ".join(f"{k} {', '.join(v)}" for k, v in changes.items() if v) or "no models"
    if not reloads["last_successful"]:
        if changes:  # valid registry, but a required model did not load
            print(f"tsfmd reload: failed: {reloads['last_error']}; the rest of the registry "
                  f"applies ({done})", file=sys.stderr)
        else:
            print(f"tsfmd reload: refused, the previous registry keeps serving: "
                  f"{reloads['last_error']}", file=sys.stderr)
        return 1
    for warning in reloads.get("last_warnings") or []:
        print(f"tsfmd reload: warning: {warning}", file=sys.stderr)
    print(f"tsfmd reload: done ({done})")
    return 0
