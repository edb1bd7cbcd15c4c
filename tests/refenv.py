"""Reference environments for parity tests: a virtualenv built from tests/envs/<name>.txt.

A parity test runs a model's original code (or a reference written from it) with the
library versions that code needs, which clash with tsfmd's own, so it runs in a venv of its
own, driven by subprocess. The venv lives in ${TSFMD_TEST_ENVS:-~/.cache/tsfmd/test-envs}
/<name> and is rebuilt only when its requirements file changes (a stamp holds the text it
was built from). A test never skips for a missing env: it builds it (CI does the same), and
a build that fails fails the test with pip's last lines.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ENVS_SPEC = Path(__file__).parent / "envs"
STAMP = ".tsfmd-requirements"


def envs_root() -> Path:
    return Path(os.environ.get("TSFMD_TEST_ENVS", "~/.cache/tsfmd/test-envs")).expanduser()


def reference_python(name: str, python: str = "python3.11") -> Path:
    """The interpreter of env `name`, built (or rebuilt) from tests/envs/<name>.txt first."""
    spec = (ENVS_SPEC / f"{name}.txt").read_text()
    root = envs_root() / name
    interpreter = root / "bin" / "python"
    stamp = root / STAMP
    if interpreter.exists() and stamp.is_file() and stamp.read_text() == spec:
        return interpreter
    base = shutil.which(python) or sys.executable
    if root.is_symlink():
        root.unlink()
    elif root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [base, "-m", "venv", str(root)],
        [str(interpreter), "-m", "pip", "install", "--quiet", "-r",
         str(ENVS_SPEC / f"{name}.txt")],
    ]
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(
                f"building test env {name} failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    stamp.write_text(spec)
    return interpreter
