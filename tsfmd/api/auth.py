"""Optional bearer-token auth: which paths need a token, and the check that runs before
every other piece of a request (Flask's first before_request function).

Off unless the registry sets `server.auth.tokens_file`; then a protected path needs
`Authorization: Bearer <token>` with a token of that file: 401 without one (or with a
malformed header), 403 with one the file does not hold. RULES below is the one place that
says which path is which; any path it does not name is protected, unless it is a model
route of the registry (TDgpt's), which is open unless `protect_tdgpt_routes` is set.
Tokens are compared by SHA-256 digest in constant time against every accepted token, and
never logged: the access log names the client (`name:` in the tokens file) instead.
"""
from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from flask import Flask, g, request

from tsfmd.api.app import error_response
from tsfmd.core import tokens
from tsfmd.core.models import Models
from tsfmd.core.registry import AuthSettings

log = logging.getLogger("tsfmd.auth")

OPEN, PROTECTED = "open", "protected"
#: /v1/status also takes the daemon's own reload token (see RELOAD_TOKEN_FILE)
STATUS = "protected, or the reload token"


@dataclass(frozen=True)
class Rule:
    path: str
    access: str
    subtree: bool  # the rule covers every path below `path` too
    why: str


#: first match wins; a path matching none is PROTECTED (a new endpoint is closed until it
#: is named here), except a model route of the registry (see AuthPolicy.access_of)
RULES = (
    Rule("/healthz", OPEN, False, "systemd and Kubernetes liveness probes send no token"),
    Rule("/readyz", OPEN, False, "readiness probes send no token"),
    Rule("/", OPEN, False, "the web page's HTML: its API calls send the token pasted in it"),
    Rule("/ui", OPEN, True, "the web page's static assets"),
    Rule("/docs", OPEN, True, "the offline API docs page and its assets"),
    Rule("/openapi.json", OPEN, False, "the API's description, read by the docs page; no data"),
    Rule("/metrics", PROTECTED, True, "Prometheus: `authorization: {credentials_file: ...}`"),
    Rule("/v1/status", STATUS, False, "admin: `tsfmd reload` reads it"),
    Rule("/v1", PROTECTED, True, "the native and KServe APIs, /v1/models, /v1/status"),
)

#: beside the daemon's address under systemd's RuntimeDirectory: a token made at each start,
#: accepted for /v1/status only, so `tsfmd reload` works while the tokens file changes
RELOAD_TOKEN_FILE = "reload-token"
RELOAD_CLIENT = "tsfmd-reload"


def rule_for(path: str) -> Optional[Rule]:
    for rule in RULES:
        if path == rule.path or (rule.subtree and path.startswith(rule.path.rstrip("/") + "/")):
            return rule
    return None


def normal_path(path: str) -> str:
    """'//v1//status/' -> '/v1/status': the path as the routes see it."""
    path = re.sub("/{2,}", "/", path or "/")
    return path.rstrip("/") or "/"


class AuthPolicy:
    """The auth settings now in force (a reload swaps them whole) and the check itself."""

    def __init__(self, models: Models, settings: AuthSettings):
        self.models = models
        self.settings = settings
        self.reload_token = secrets.token_urlsafe(32)
        self._reload_entry = tokens.Token(RELOAD_CLIENT, tokens.digest(self.reload_token))

    def update(self, settings: AuthSettings) -> None:
        """Apply a reloaded registry's auth (already validated: its tokens file was read)."""
        if settings.enabled != self.settings.enabled:
            log.warning("auth is now %s", "on" if settings.enabled else "OFF: every path is open")
        self.settings = settings
        if settings.enabled:
            log.info("auth: %d token(s) accepted from %s (%s)", len(settings.tokens),
                     settings.tokens_file, ", ".join(t.name for t in settings.tokens))

    def access_of(self, path: str, settings: AuthSettings) -> str:
        path = normal_path(path)
        if self.models.route(path) is not None:  # a TDgpt model route of the registry
            return PROTECTED if settings.protect_tdgpt_routes else OPEN
        rule = rule_for(path)
        return rule.access if rule is not None else PROTECTED

    def check(self):
        """None to go on, or the 401/403 answer; the first thing every request runs."""
        g.started = time.monotonic()  # the access log's clock: this runs before app.py's
        settings = self.settings  # read once: a reload may swap it meanwhile
        if not settings.enabled:
            return None
        access = self.access_of(request.path, settings)
        if access == OPEN:
            return None
        header = request.headers.get("Authorization")
        if header is None:
            log.info("auth: %s %s from %s: no token", request.method, request.path,
                     request.remote_addr or "-")
            return _unauthorized(f"{request.path} needs a token: send the header "
                                 "`Authorization: Bearer <token>` (server.auth.tokens_file "
                                 "in tsfmd's registry lists the tokens)")
        scheme, _, secret = header.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not tokens.TOKEN.match(secret):
            log.info("auth: %s %s from %s: malformed Authorization header", request.method,
                     request.path, request.remote_addr or "-")
            return _unauthorized("the Authorization header must be `Bearer <token>`, the token "
                                 "made of letters, digits and '-._~+/'", "invalid_request")
        accepted = settings.tokens + ((self._reload_entry,) if access == STATUS else ())
        client = _match(tokens.digest(secret), accepted)
        if client is None:
            log.warning("auth: %s %s from %s: refused an unknown token", request.method,
                        request.path, request.remote_addr or "-")
            return error_response(
                403, "this token is not accepted: it is not in server.auth.tokens_file of "
                "tsfmd's registry (a changed file applies on `tsfmd reload`)",
                {"WWW-Authenticate": 'Bearer realm="tsfmd", error="invalid_token"'})
        g.client = client.name  # the access log names the client, never the token
        return None

    def write_reload_token(self, runtime_dir: str) -> None:
        """Leave the reload token for `tsfmd reload` (mode 0600: root and tsfmd's user)."""
        path = os.path.join(runtime_dir, RELOAD_TOKEN_FILE)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(self.reload_token + "\n")
        except OSError as exc:  # only `tsfmd reload` with auth on needs it
            log.warning("cannot write %s: %s", path, exc.strerror or exc)


def _match(presented: bytes, accepted: Iterable[tokens.Token]) -> Optional[tokens.Token]:
    """The token whose digest equals `presented`; every one is compared (no early exit),
    each in constant time, so timing tells neither whether nor which one matched."""
    found = None
    for token in accepted:
        if hmac.compare_digest(token.digest, presented):
            found = token
    return found


def _unauthorized(message: str, error: str = ""):
    challenge = 'Bearer realm="tsfmd"' + (f', error="{error}"' if error else "")
    return error_response(401, message, {"WWW-Authenticate": challenge})


def install(app: Flask, models: Models, settings: AuthSettings) -> AuthPolicy:
    """Run the auth check before anything else the app does for a request."""
    policy = AuthPolicy(models, settings)
    app.before_request_funcs.setdefault(None, []).insert(0, policy.check)
    if settings.enabled:
        policy.update(settings)  # logs what is accepted (names only)
    return policy
