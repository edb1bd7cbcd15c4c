"""Python environments of a family's own (its pins clash with tsfmd's), built once for tests.

`env_python(name)` is the interpreter of the environment `tests/envs/<name>.txt` lists, kept
in ${TSFMD_TEST_ENVS:-~/.cache/tsfmd/test-envs}/<name> and rebuilt only when that file
changes (its text is stamped into the environment). Under CI=true a missing or stale
environment is built (minutes; a test never skips there); elsewhere the test is skipped
with the command that builds it. TSFMD_TEST_PYTHON picks the base interpreter (default
python3.11), TSFMD_TEST_PIP_OPTIONS adds pip options (e.g. a CPU wheel index for torch).

`family_path(directory)` is a PYTHONPATH that holds only a `tsfmd` link to this checkout's
package, the way a worker finds tsfmd: never the daemon's site-packages.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ENVS = Path(__file__).parent / "envs"
PACKAGE = Path(__file__).resolve().parent.parent / "tsfmd"
STAMP = ".tsfmd-test-requirements"


def envs_root() -> Path:
    return Path(os.environ.get("TSFMD_TEST_ENVS") or "~/.cache/tsfmd/test-envs").expanduser()


def env_python(name: str) -> Path:
    requirements = ENVS / f"{name}.txt"
    env = envs_root() / name
    python = env / "bin" / "python"
    wanted = requirements.read_text()
    stamp = env / STAMP
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if os.environ.get("CI", "").lower() != "true":
        pytest.skip(f"the {name} environment is not built at {env}: run the tests with "
                    f"CI=true once to build it (pip install -r {requirements})")
    _build(env, requirements)
    stamp.write_text(wanted)
    return python


def _build(env: Path, requirements: Path) -> None:
    shutil.rmtree(env, ignore_errors=True)
    env.parent.mkdir(parents=True, exist_ok=True)
    base = os.environ.get("TSFMD_TEST_PYTHON", "python3.11")
    subprocess.run([base, "-m", "venv", str(env)], check=True)
    options = shlex.split(os.environ.get("TSFMD_TEST_PIP_OPTIONS", ""))
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install",
                    "--disable-pip-version-check", *options, "-r", str(requirements)],
                   check=True)


def family_path(directory: Path) -> str:
    """A directory holding only a link named tsfmd to this checkout's package."""
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "tsfmd"
    if not link.exists():
        link.symlink_to(PACKAGE, target_is_directory=True)
    return str(directory)
