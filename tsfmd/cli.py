"""The `tsfmd` command: serve, check, and the sub-commands later parts add."""
from __future__ import annotations

import argparse
import os
import logging
import sys
from typing import List, Optional

from tsfmd.core.registry import DEFAULT_CONFIG, RegistryError, default_config, load_registry
from tsfmd.version import __version__

log = logging.getLogger("tsfmd")

STATE_DIR_HELP = ("where the daemon keeps hub downloads (<dir>/hub); default: server.state_dir, "
                  "else $STATE_DIRECTORY, else ~/.cache/tsfmd. The systemd unit's is "
                  "/var/lib/tsfmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsfmd", description="Serve time-series foundation models to TDengine TDgpt."
    )
    parser.add_argument("--version", action="version", version=f"tsfmd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", default=None, help=f"registry file (default {DEFAULT_CONFIG} "
                       "if it exists, else the embedded default)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    serve.add_argument("--host", default=None,
                       help="listen on this address instead of the registry's server.host")
    serve.add_argument("--port", type=_port, default=None,
                       help="listen on this port instead of the registry's server.port")
    serve.set_defaults(handler=cmd_serve)

    check = commands.add_parser("check", help="validate a registry offline (like nginx -t)")
    check.add_argument("--config", default=None, help="registry file to check")
    check.add_argument("--state-dir", default=None, help=STATE_DIR_HELP)
    check.set_defaults(handler=cmd_check)

    # Sub-commands owned by other modules register themselves here, one line each.
    from tsfmd.daemon import exit_report, install_unit, pull, reload  # light: no torch, no Flask

    reload.add_parser(commands)
    pull.add_parser(commands)
    install_unit.add_parser(commands)
    exit_report.add_parser(commands)
    from tsfmd.anode import install as anode_adapters  # light: no torch, no Flask
    anode_adapters.add_parser(commands)
    from tsfmd.envs import cli as env_cli  # light: stdlib only
    env_cli.add_parser(commands)
    from tsfmd.ray import config as ray_config  # light: writes YAML, never imports ray
    ray_config.add_parser(commands)
    return parser


def cmd_check(args) -> int:
    """Like `nginx -t`: the schema, then offline what each enabled model's load needs (its
    source's files, its options). Exit 1 when the registry is invalid or a required model
    would fail to load; a model marked `required: false` that would fail is a warning."""
    path = args.config or default_config()
    try:
        registry = load_registry(path)
    except RegistryError as exc:
        print(f"tsfmd check: {path} is NOT valid ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for warning in registry.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    from tsfmd.core.preflight import load_problems  # imports the families the registry names

    server = registry.server
    state_dir = args.state_dir or server.resolved_state_dir()
    problems = {spec.key: load_problems(spec, state_dir, args.config)
                for spec in registry.enabled}
    failing = [spec for spec in registry.enabled if problems[spec.key] and spec.required]
    verdict = "OK" if not failing else "valid, but models would not load"
    print(f"{path}: {verdict}: listen {server.host}:{server.port}, {len(registry.models)} "
          f"model(s), {len(registry.enabled)} enabled; weights looked up offline in {state_dir}")
    for spec in registry.models:
        state = "enabled " if spec.enabled else "disabled"
        print(f"  {state} {spec.key:<20} family={spec.family:<12} routes={','.join(spec.routes)} "
              f"source={spec.source}")
    from tsfmd.envs.cli import check_lines  # light: stdlib only

    for line in check_lines(registry, state_dir):
        print(line)
    for spec in registry.enabled:
        for problem in problems[spec.key]:
            what = "error" if spec.required else "warning"
            note = "" if spec.required else " (required: false)"
            print(f"{what}: {path}: models.{spec.key}{note} would fail to load: {problem}",
                  file=sys.stderr)
    if failing:
        print(f"tsfmd check: {path}: {len(failing)} required model(s) would fail to load: "
              f"{', '.join(spec.key for spec in failing)}", file=sys.stderr)
        return 1
    return 0


#: `tsfmd serve` exit statuses; the unit restarts on 1 and 3 (bounded), never on 2
EXIT_STOPPED, EXIT_FAILED, EXIT_BAD_REGISTRY, EXIT_CANNOT_LISTEN = 0, 1, 2, 3


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {port}")
    return port


def cmd_serve(args) -> int:
    from tsfmd.daemon.logs import setup_logging
    from tsfmd.daemon.server import Daemon, ListenError

    setup_logging(args.log_level)
    path = args.config or default_config()
    daemon = Daemon(path, host=args.host, port=args.port)
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except RegistryError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_BAD_REGISTRY
    except ListenError as exc:  # e.g. the port is taken
        log.error("cannot start: %s", exc)
        return EXIT_CANNOT_LISTEN
    except OSError as exc:  # e.g. an unreadable state directory
        log.error("cannot start: %s", exc)
        return EXIT_FAILED
    daemon.run_until_stopped()
    if daemon.abandoned_work:
        # A native forward pass still runs on a worker thread, and tearing the interpreter
        # down under it aborts the process (SIGABRT, exit 134): end it here, logs flushed.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STOPPED)
    return EXIT_STOPPED


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
