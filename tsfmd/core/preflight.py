"""What would keep a registry entry from loading, found offline and without loading weights.

`tsfmd check` reports it for each enabled model, as `nginx -t` opens the files a config
names; the daemon checks the options before every load. Only the family's module is
imported: no weights are read and nothing is downloaded.
"""
from __future__ import annotations

from typing import List, Optional

from tsfmd.families import get_family
from tsfmd.families.base import LoadSpec, ModelLoadError
from tsfmd.core.registry import ModelSpec
from tsfmd.envs import env_problem


def load_spec(spec: ModelSpec, state_dir: Optional[str], device: str) -> LoadSpec:
    """What a family's `load` gets for a registry entry. `horizon_limit` stays out: tsfmd
    enforces it around the loaded model, so changing it reloads no weights."""
    return LoadSpec(
        key=spec.key, source=spec.source, device=device, dtype=spec.dtype,
        context_limit=spec.context_limit, horizon_limit=None, cache_dir=state_dir,
        options=dict(spec.options),
    )


def load_problems(spec: ModelSpec, state_dir: Optional[str],
                  config: Optional[str] = None) -> List[str]:
    """Why `spec` would fail to load on this machine, one line each; [] when it would not.
    `config`: the registry file, named in the command that builds a missing environment."""
    problems = []
    if spec.environment is not None:
        missing_env = env_problem(spec.environment, state_dir, config)
        if missing_env:
            problems.append(missing_env)
    try:
        family = get_family(spec.family)
    except Exception as exc:  # a family module that cannot be imported here
        return problems + [f"family {spec.family} cannot be imported: {type(exc).__name__}: "
                           f"{exc}"]
    problems += family.check_options(spec.options)
    try:
        family.check_source(load_spec(spec, state_dir, spec.device))
    except ModelLoadError as exc:
        problems.append(str(exc))
    return problems
