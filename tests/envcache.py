"""Heavy test environments (moirai's, moment's), built once with tsfmd's own builder and
reused while their spec is unchanged.

They live in $TSFMD_TEST_ENVS (default ~/.cache/tsfmd/test-envs): CI keeps that directory
between runs (.ci/run), so a 6 GB uni2ts environment is built once per spec change, not once
per run. A test that needs one calls `test_env(...)` and gets the EnvironmentSpec to put in
its registry; a build failure fails the test (never a skip).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from tsfmd.envs import EnvironmentSpec, env_state
from tsfmd.envs.build import build


def test_envs_dir() -> Path:
    return Path(os.environ.get("TSFMD_TEST_ENVS")
                or Path.home() / ".cache" / "tsfmd" / "test-envs")


def test_env(name: str, requirements: Sequence[str], pip_options: Sequence[str] = (),
             python: str = sys.executable) -> EnvironmentSpec:
    """The environment `name` under test_envs_dir(), built now unless it is up to date."""
    env = EnvironmentSpec(name=name, python=python, requirements=tuple(requirements),
                          pip_options=tuple(pip_options), path=str(test_envs_dir() / name))
    build(env, None, say=lambda text: print(f"test env: {text}", flush=True))
    assert env_state(env, None) == "ready"
    return env


def requirements_of(name: str) -> list:
    """The pip requirements in tests/envs/<name>.txt, comments and blank lines left out."""
    text = (Path(__file__).parent / "envs" / f"{name}.txt").read_text()
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def spec_env(name: str) -> EnvironmentSpec:
    """The environment tests/envs/<name>.txt describes, built now unless up to date."""
    return test_env(name, requirements_of(name))


def tsfmd_only_path(directory: Path) -> Path:
    """A directory holding only a `tsfmd` link, as a worker's PYTHONPATH does: a script run
    in an environment imports tsfmd's family code and nothing of the daemon's."""
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "tsfmd"
    if not link.exists():
        link.symlink_to(Path(__file__).resolve().parent.parent / "tsfmd",
                        target_is_directory=True)
    return directory


def environments_yaml(*envs: EnvironmentSpec) -> str:
    """The registry's `environments:` section naming these (already built) environments."""
    lines = ["environments:"]
    for env in envs:
        lines += [f"  {env.name}:", f"    python: {env.python}",
                  f"    requirements: {list(env.requirements)!r}",
                  f"    pip_options: {list(env.pip_options)!r}", f"    path: {env.path}"]
    return "\n".join(lines) + "\n"


test_env.__test__ = False  # not a test: pytest collects names starting with test_
test_envs_dir.__test__ = False
spec_env.__test__ = False
