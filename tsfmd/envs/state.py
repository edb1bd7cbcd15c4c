"""Is an environment ready? Compares the build stamp with what the spec asks for now.

`ready`: the build finished for exactly this spec. `missing`: nothing is built there yet (or
its base interpreter is gone). `stale`: something is there, built for another spec (or not by
tsfmd). A build writes the stamp last, so a half-built environment is never `ready`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Optional

from tsfmd.envs.spec import STAMP, EnvironmentSpec

READY, MISSING, STALE = "ready", "missing", "stale"
_VERSION = ("import sys; print('%d.%d.%d' % sys.version_info[:3], "
            "sys.implementation.cache_tag)")


def python_version(python: str) -> Optional[str]:
    """`python`'s version ("3.11.7 cpython-311"), or None when it does not run."""
    try:
        info = os.stat(python)
    except OSError:
        return None
    return _version_of(os.path.realpath(python), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=64)
def _version_of(python: str, _mtime_ns: int, _size: int) -> Optional[str]:
    try:
        done = subprocess.run([python, "-c", _VERSION], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def interpreter(env: EnvironmentSpec) -> str:
    """The base interpreter as a file: `.venv/bin/python` and `.venv/bin/python3` (the same
    program, as `python -m tsfmd` and the `tsfmd` script see it) are one interpreter."""
    return os.path.realpath(env.python)


def spec_digest(env: EnvironmentSpec, version: str) -> str:
    """What a build stamps: the base interpreter (file and version) and what pip installs.
    Neither the name nor the path is in it: a moved or renamed environment stays ready."""
    what = {"python": interpreter(env), "version": version,
            "requirements": list(env.requirements), "pip_options": list(env.pip_options)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def read_stamp(where: Path) -> Optional[dict]:
    try:
        stamp = json.loads((where / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def env_state(env: EnvironmentSpec, state_dir: Optional[str]) -> str:
    """"ready", "missing" or "stale" (see the module docstring)."""
    return _state_and_reason(env, state_dir)[0]


def _state_and_reason(env: EnvironmentSpec, state_dir: Optional[str]):
    version = python_version(env.python)
    if version is None:
        return MISSING, f"its interpreter {env.python} does not run here"
    where = env.location(state_dir)
    if not (where / "bin" / "python").exists():
        return MISSING, f"nothing is built at {where}"
    stamp = read_stamp(where)
    if stamp is None:
        return STALE, f"{where} has no finished tsfmd build (no {STAMP})"
    if stamp.get("digest") != spec_digest(env, version):
        return STALE, f"{where} was built for another spec ({_difference(env, version, stamp)})"
    return READY, ""


def _difference(env: EnvironmentSpec, version: str, stamp: dict) -> str:
    changed = [name for name, now in (
        ("python", interpreter(env)), ("version", version),
        ("requirements", list(env.requirements)), ("pip_options", list(env.pip_options)),
    ) if stamp.get(name) != now]
    return "changed: " + ", ".join(changed) if changed else "its stamp differs"


def build_command(env: EnvironmentSpec, state_dir: Optional[str],
                  config: Optional[str] = None) -> str:
    """The command that makes `env` ready, as a user types it."""
    words = ["tsfmd", "env", "build", env.name]
    if config:
        words += ["--config", config]
    if state_dir and not env.path:
        words += ["--state-dir", state_dir]
    return " ".join(shlex.quote(w) for w in words)


def env_problem(env: EnvironmentSpec, state_dir: Optional[str],
                config: Optional[str] = None) -> Optional[str]:
    """None when `env` is ready; else one line saying what is wrong and the command that
    fixes it. `tsfmd check` prints it, and a model in this environment fails to load with it."""
    state, reason = _state_and_reason(env, state_dir)
    if state == READY:
        return None
    return (f"environment {env.name} is {state}: {reason}; build it with: "
            f"{build_command(env, state_dir, config)}")
