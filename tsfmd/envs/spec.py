"""An `environments:` entry: how to build one Python environment for worker processes.

Stdlib only: the registry imports this, and so may a worker that has none of tsfmd's
dependencies.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

#: the file a finished build writes last; its presence and content make an env `ready`
STAMP = "tsfmd-env.json"


@dataclass(frozen=True)
class EnvironmentSpec:
    """One environment, as the registry resolved it; equal specs build equal environments."""

    name: str
    python: str  # the base interpreter (absolute); the registry's default is the daemon's
    requirements: Tuple[str, ...] = ()
    pip_options: Tuple[str, ...] = ()
    path: Optional[str] = None  # None: <state_dir>/envs/<name>

    def location(self, state_dir: Optional[str]) -> Path:
        """Where the environment lives: its own `path:`, else <state_dir>/envs/<name>. The
        path is a link to the current build (see tsfmd/envs/build.py) or a venv of its own."""
        if self.path:
            return Path(self.path)
        if not state_dir:
            raise ValueError(f"environment {self.name}: no path and no state directory")
        return Path(state_dir) / "envs" / self.name


def python_for(env: EnvironmentSpec, state_dir: Optional[str]) -> Path:
    """The environment's interpreter. The link to the current build is resolved, so a worker
    started with this path keeps its own build even after `tsfmd env build` swaps in a new
    one (the old build stays while a process runs from it)."""
    where = env.location(state_dir)
    if os.path.lexists(where):
        where = Path(os.path.realpath(where))
    return where / "bin" / "python"
