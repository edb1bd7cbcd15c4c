"""`tsfmd reload`: SIGHUP the daemon and wait until that reload is done.

systemd's `ExecReload=kill -HUP $MAINPID` returns at once, so `systemctl reload` would
return while the old registry still serves. This command is the unit's ExecReload instead:
it reads the daemon's reload counters (GET /v1/status), sends SIGHUP, and waits until a
reload that started after it looked has finished. Exit 0: the new registry serves (a model
marked `required: false` that failed to load is printed as a warning); exit 1: the daemon
refused an invalid registry (the old one keeps serving), or a required model failed to
load (its previous version, if any, keeps serving; the rest applies). The reason is printed.
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
from typing import Optional

#: where the daemon leaves its address under systemd (RuntimeDirectory=tsfmd)
RUNTIME_ADDRESS = "/run/tsfmd/address"


def add_parser(commands) -> None:
    reload = commands.add_parser(
        "reload", help="make the running daemon re-read its registry and wait for the outcome"
    )
    reload.add_argument("--pid", type=int, default=None,
                        help="the daemon's pid (systemd: $MAINPID); default: what it reports")
    reload.add_argument("--url", default=None,
                        help="the daemon's base URL; default: $RUNTIME_DIRECTORY/address, "
                        f"{RUNTIME_ADDRESS}, else host and port of --config")
    reload.add_argument("--config", default=None, help="registry file to find host and port in")
    reload.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for the reload (loads can be long)")
    reload.set_defaults(handler=cmd_reload)


class ReloadError(RuntimeError):
    pass


def daemon_url(url: Optional[str], config: Optional[str]) -> str:
    """--url, else the address of the daemon serving --config, else the runtime address
    file a systemd tsfmd leaves, else the default registry's address."""
    if url:
        return url.rstrip("/")
    if config:
        return _registry_url(config)
    candidates = [os.path.join(d, "address")
                  for d in os.environ.get("RUNTIME_DIRECTORY", "").split(":") if d]
    candidates.append(RUNTIME_ADDRESS)
    for path in candidates:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if text:
            return text.rstrip("/")
    from tsfmd.core.registry import default_config

    return _registry_url(default_config())


def _registry_url(path: str) -> str:
    from tsfmd.core.registry import RegistryError, client_host, load_registry

    try:
        server = load_registry(path).server
    except RegistryError as exc:
        raise ReloadError(f"cannot find the daemon: no --url, no {RUNTIME_ADDRESS}, and {exc}")
    return f"http://{client_host(server.host)}:{server.port}"


#: the daemon is local: never send its status request through an http_proxy
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def daemon_status(url: str) -> dict:
    try:
        with _OPENER.open(url + "/v1/status", timeout=10) as response:
            return json.load(response)
    except (OSError, ValueError) as exc:  # URLError is an OSError
        raise ReloadError(f"the daemon at {url} does not answer /v1/status: {exc}") from exc


def reload_and_wait(url: str, pid: Optional[int], timeout: float, poll: float = 0.1) -> dict:
    """SIGHUP the daemon; return its `reloads` counters once that reload has finished."""
    before = daemon_status(url)
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
            reloads = daemon_status(url)["reloads"]
        except ReloadError:
            continue  # busy for a moment; the deadline still bounds the wait
        if reloads["finished"] >= target:
            return reloads
    raise ReloadError(f"the reload did not finish within {timeout:.0f}s")


def cmd_reload(args) -> int:
    try:
        url = daemon_url(args.url, args.config)
        reloads = reload_and_wait(url, args.pid, args.timeout)
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
