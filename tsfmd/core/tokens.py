"""Bearer tokens from a file: one per line, `# comments` and blank lines allowed, each line
either `token` or `name:token` (the name is what logs say instead of the secret).

A token is RFC 6750's b64token (letters, digits, `-._~+/`, then `=` padding), so it never
holds a ':' and `name:token` is unambiguous. Only SHA-256 digests of the tokens are kept
for checking, so the secrets themselves are never held by the daemon's settings (nor in any
repr or log); `read_secrets` is for the clients on this machine (`tsfmd reload`).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]*$")
#: 128 bits as `openssl rand -hex 16` prints them; shorter secrets are guessable
MIN_TOKEN_CHARS = 32


def digest(secret: str) -> bytes:
    """What tokens are compared by: equal-length values, so comparing leaks no length."""
    return hashlib.sha256(secret.encode("ascii", "replace")).digest()


@dataclass(frozen=True)
class Token:
    name: str  # from `name:token`, else "line-N"
    digest: bytes = field(repr=False)


def resolve(path: str, registry_path: str) -> str:
    """A relative tokens file is a systemd credential name when $CREDENTIALS_DIRECTORY is
    set (LoadCredential=), else a path next to the registry file."""
    if os.path.isabs(path):
        return path
    credentials = os.environ.get("CREDENTIALS_DIRECTORY", "")
    base = credentials or str(Path(registry_path).resolve().parent)
    return os.path.join(base, path)


def parse(text: str, where: str) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(name, secret) pairs and the problems found; a problem never quotes a secret."""
    pairs, problems = [], []
    names, secrets = {}, {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.rpartition(":")
        name = name.strip() if sep else f"line-{number}"
        secret = secret.strip()
        if sep and not NAME.match(name):
            problems.append(f"{where}: line {number}: the name before ':' must be letters, "
                            "digits, '_', '.', '@' or '-'")
            continue
        if not TOKEN.match(secret):
            problems.append(f"{where}: line {number}: a token is letters, digits and "
                            "'-._~+/' (then '=' padding), nothing else")
            continue
        if len(secret) < MIN_TOKEN_CHARS:
            problems.append(f"{where}: line {number}: token {name!r} has {len(secret)} "
                            f"characters, fewer than {MIN_TOKEN_CHARS} (make one with "
                            "`openssl rand -hex 32`)")
            continue
        if secret in secrets:
            problems.append(f"{where}: line {number}: the same token as on line "
                            f"{secrets[secret]}")
            continue
        if name in names:
            problems.append(f"{where}: line {number}: the name {name!r} is used on line "
                            f"{names[name]} too")
            continue
        names[name], secrets[secret] = number, number
        pairs.append((name, secret))
    return pairs, problems


def read_secrets(path: str) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(name, secret) pairs of the file at `path`, or the problems; empty is a problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        return [], [f"{path}: cannot read the tokens file: {why}"]
    pairs, problems = parse(text, path)
    if not pairs and not problems:
        problems.append(f"{path}: no token in the tokens file (one per line, `name:token` "
                        "or `token`); remove server.auth.tokens_file to turn auth off")
    return pairs, problems


def read_tokens(path: str) -> Tuple[Tuple[Token, ...], List[str]]:
    """The tokens of the file at `path` as digests, or the problems."""
    pairs, problems = read_secrets(path)
    return tuple(Token(name, digest(secret)) for name, secret in pairs), problems


def first_secret(path: str) -> Optional[str]:
    """The first token of a one-client token file (an adapter's), or None."""
    pairs, problems = read_secrets(path)
    return pairs[0][1] if pairs and not problems else None
