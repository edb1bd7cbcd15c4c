"""Python environments for worker processes: the registry's `environments:` section.

spec.py: what an entry says; state.py: is it built (ready, missing, stale);
build.py: `tsfmd env build`; cli.py: the `tsfmd env` commands.
"""
from tsfmd.envs.spec import EnvironmentSpec, python_for
from tsfmd.envs.state import MISSING, READY, STALE, build_command, env_problem, env_state

__all__ = ["EnvironmentSpec", "python_for", "env_state", "env_problem", "build_command",
           "READY", "MISSING", "STALE"]
