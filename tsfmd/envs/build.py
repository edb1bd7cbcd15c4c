"""`tsfmd env build`: make an environment ready, idempotently.

Layout for an environment at L (its `path:`, else <state_dir>/envs/<name>): each build goes
into its own directory beside L, `.<name>-<digest12>`, and L is a symlink to the current one.
The stamp is written last (atomically) and the link is swapped only after it, so L never
points at a half-built environment: an interrupted build leaves L `missing` or `stale`,
never `ready`. A changed spec builds a new directory and then swaps the link, so a worker
running from the old build keeps its files; an old build is removed once no process runs
from it (a later build removes it otherwise). A plain directory at L (a venv made by hand)
is updated in place instead.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, List, Optional

from tsfmd.envs.spec import STAMP, EnvironmentSpec
from tsfmd.envs.state import (READY, env_state, interpreter, python_version, read_stamp,
                              spec_digest)

Say = Callable[[str], None]


class BuildError(RuntimeError):
    """An environment could not be built; the message says why and what ran."""


def build(env: EnvironmentSpec, state_dir: Optional[str], say: Say = print) -> str:
    """Make `env` ready; returns "up to date" or "built". pip's own output streams to this
    process's stdout/stderr (its progress included)."""
    version = python_version(env.python)
    if version is None:
        raise BuildError(f"environment {env.name}: its interpreter {env.python} does not run")
    link = env.location(state_dir)
    link.parent.mkdir(parents=True, exist_ok=True)
    with _locked(link.parent / f".{link.name}.lock"):
        if env_state(env, state_dir) == READY:
            say(f"environment {env.name}: up to date ({link})")
            if link.is_symlink():
                _remove_old_builds(link, keep=Path(os.path.realpath(link)), say=say)
            return "up to date"
        digest = spec_digest(env, version)
        if link.is_dir() and not link.is_symlink() and _in_place(link):
            _install(env, link, digest, version, say)
            return "built"
        target = link.parent / f".{link.name}-{digest[:12]}"
        if (read_stamp(target) or {}).get("digest") != digest:
            _fresh(env, target, digest, version, say)
        _point(link, target)
        say(f"environment {env.name}: ready at {link} -> {target.name}")
        _remove_old_builds(link, keep=target, say=say)
        return "built"


def _in_place(link: Path) -> bool:
    """A directory that is not our link: a venv made by hand (updated in place), an empty
    directory (replaced by the link), anything else refused."""
    if (link / "pyvenv.cfg").exists():
        return True
    if not any(link.iterdir()):
        link.rmdir()
        return False
    raise BuildError(f"{link} exists and is not a virtual environment: remove it or set the "
                     "environment's `path:` elsewhere")


def _fresh(env: EnvironmentSpec, target: Path, digest: str, version: str, say: Say) -> None:
    if target.exists():  # a build of this spec that did not finish
        say(f"environment {env.name}: removing the unfinished build {target}")
        shutil.rmtree(target)
    say(f"environment {env.name}: creating a virtual environment with {env.python} "
        f"({version}) in {target}")
    _run([env.python, "-m", "venv", str(target)], env.name)
    try:
        _install(env, target, digest, version, say)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # may be gigabytes; pip keeps its cache
        raise


def _install(env: EnvironmentSpec, where: Path, digest: str, version: str, say: Say) -> None:
    if env.requirements:
        say(f"environment {env.name}: pip install {' '.join(env.pip_options)} "
            f"{' '.join(env.requirements)}".replace("  ", " "))
        started = time.monotonic()
        _run([str(where / "bin" / "python"), "-m", "pip", "install",
              "--disable-pip-version-check", *env.pip_options, *env.requirements], env.name)
        say(f"environment {env.name}: pip finished in {time.monotonic() - started:.0f} s")
    _write_stamp(where, {
        "name": env.name, "digest": digest, "python": interpreter(env), "version": version,
        "requirements": list(env.requirements), "pip_options": list(env.pip_options),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


def _run(command: List[str], name: str) -> None:
    # not captured: pip's progress reaches the user as it happens
    code = subprocess.call(command)
    if code != 0:
        raise BuildError(f"environment {name}: `{' '.join(command)}` exited with {code}")


def _write_stamp(where: Path, stamp: dict) -> None:
    temporary = where / f".{STAMP}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(stamp, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, where / STAMP)


def _point(link: Path, target: Path) -> None:
    """Swap the link atomically (rename over it); relative, so the state dir can move."""
    temporary = link.parent / f".{link.name}.link-tmp"
    if os.path.lexists(temporary):
        temporary.unlink()
    os.symlink(target.name, temporary)
    os.replace(temporary, link)


def _remove_old_builds(link: Path, keep: Path, say: Say) -> None:
    pattern = re.compile(rf"^\.{re.escape(link.name)}-[0-9a-f]{{12}}$")
    busy = _interpreters_in_use()
    for old in link.parent.iterdir():
        if old.resolve() == keep.resolve() or not pattern.match(old.name):
            continue
        inside = (f"{old}/", f"{os.path.realpath(old)}/")
        users = [pid for pid, program in busy if program.startswith(inside)]
        if users:
            say(f"kept the previous build {old}: process(es) {', '.join(users)} run from it; "
                "the next build removes it once they end")
        else:
            shutil.rmtree(old, ignore_errors=True)


def _interpreters_in_use():
    """(pid, program) of every process this user can see: a worker is started as
    `<build>/bin/python -m tsfmd.runners.worker`, so its argv[0] names its build."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        found.append((entry.name, os.fsdecode(argv0)))
    return found


@contextmanager
def _locked(path: Path):
    """Two builds of one environment at once would share a directory: the second waits."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
