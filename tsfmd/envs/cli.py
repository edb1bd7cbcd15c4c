"""`tsfmd env build [NAME]` and `tsfmd env list`: the registry's environments."""
from __future__ import annotations

import sys

from tsfmd.envs.spec import EnvironmentSpec
from tsfmd.envs.state import READY, env_state, python_version, read_stamp

STATE_DIR_HELP = ("the state directory whose envs/ holds environments without a `path:`; "
                  "default: server.state_dir, else $STATE_DIRECTORY, else ~/.cache/tsfmd")


def add_parser(commands) -> None:
    env = commands.add_parser("env", help="build and list the registry's Python environments")
    actions = env.add_subparsers(dest="env_command", metavar="ACTION")
    actions.required = True
    build = actions.add_parser("build", help="build each environment (or NAME) unless it is "
                               "up to date")
    build.add_argument("name", nargs="?", help="only this environment")
    listing = actions.add_parser("list", help="each environment with its state")
    for action in (build, listing):
        action.add_argument("--config", default=None, help="registry file (default: as serve)")
        action.add_argument("--state-dir", default=None, help=STATE_DIR_HELP)
    build.set_defaults(handler=cmd_build)
    listing.set_defaults(handler=cmd_list)


def _registry(args):
    from tsfmd.core.registry import RegistryError, default_config, load_registry

    path = args.config or default_config()
    try:
        registry = load_registry(path)
    except RegistryError as exc:
        print(f"tsfmd env: {exc}", file=sys.stderr)
        return None, None
    return registry, args.state_dir or registry.server.resolved_state_dir()


def _say(text: str) -> None:
    print(f"tsfmd env build: {text}", flush=True)  # flushed: pip writes between these lines


def cmd_build(args) -> int:
    from tsfmd.envs.build import BuildError, build

    registry, state_dir = _registry(args)
    if registry is None:
        return 2
    envs = registry.environments
    if args.name:
        envs = tuple(e for e in envs if e.name == args.name)
        if not envs:
            defined = ", ".join(e.name for e in registry.environments) or "none"
            print(f"tsfmd env build: {registry.path} defines no environment {args.name!r} "
                  f"(defined: {defined})", file=sys.stderr)
            return 2
    if not envs:
        print(f"tsfmd env build: {registry.path} defines no environments")
        return 0
    failed = []
    for env in envs:
        try:
            build(env, state_dir, say=_say)
        except (BuildError, OSError) as exc:
            print(f"tsfmd env build: FAILED: {exc}", file=sys.stderr, flush=True)
            failed.append(env.name)
    if failed:
        print(f"tsfmd env build: {len(failed)} of {len(envs)} environment(s) not built: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_list(args) -> int:
    registry, state_dir = _registry(args)
    if registry is None:
        return 2
    users = _users(registry)
    rows = [("NAME", "STATE", "PYTHON", "REQS", "PATH", "MODELS")]
    for env in registry.environments:
        rows.append((env.name, env_state(env, state_dir), _version(env, state_dir),
                     str(len(env.requirements)), str(env.location(state_dir)),
                     ",".join(users.get(env.name, [])) or "-"))
    if len(rows) == 1:
        print(f"{registry.path} defines no environments")
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0 if all(env_state(e, state_dir) == READY for e in registry.environments) else 1


def _version(env: EnvironmentSpec, state_dir) -> str:
    """The version it was built with, else the one a build would use now."""
    stamp = read_stamp(env.location(state_dir)) or {}
    version = stamp.get("version") or python_version(env.python) or "?"
    return version.split()[0]


def check_lines(registry, state_dir) -> list:
    """`tsfmd check`'s summary lines for the environments (their problems are reported per
    model, by tsfmd.core.preflight)."""
    users = _users(registry)
    return [f"  env      {env.name:<20} {env_state(env, state_dir):<8} "
            f"{env.location(state_dir)} used by: {','.join(users.get(env.name, [])) or '-'}"
            for env in registry.environments]


def _users(registry) -> dict:
    users = {}
    for spec in registry.models:
        if spec.environment is not None:
            users.setdefault(spec.environment.name, []).append(spec.key)
    return users
