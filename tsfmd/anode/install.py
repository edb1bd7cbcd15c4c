"""`tsfmd adapters install|uninstall|list`: bring an anode in line with the registry.

install   one adapter module per enabled key (none for a name the anode already ships:
          that name's URL is pointed at tsfmd through the anode's config instead), plus the
          config entries; everything is computed and checked before anything is written, and
          a second run changes nothing.
uninstall removes tsfmd's files and config edits, giving the config back byte for byte.
list      what is installed and whether it matches the current registry.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from tsfmd.anode import ini_config, pyconfig
from tsfmd.anode.generate import Adapter, AdapterError, check_keys, render_all, tsfmd_url
from tsfmd.anode.layout import DEFAULT_ANODE_DIR, AnodeLayout
from tsfmd.core.registry import Registry, RegistryError, load_registry

PY_CONFIG = "/etc/taos/taosanode.config.py"
INI_CONFIG = "/etc/taos/taosanode.ini"
NEXT_STEPS = (
    "Next steps:",
    "  1. restart the anode so it loads the adapters: systemctl restart taosanoded",
    "  2. in the TDengine CLI (taos), make taosd re-read the algorithm list: update all anodes;",
    "  3. check the names are listed: show anodes full;",
)


def default_anode_config() -> str:
    return PY_CONFIG if Path(PY_CONFIG).exists() else INI_CONFIG


# ---------------------------------------------------------------------------------------
# Files and config, read and written exactly (no newline translation)


def read_exact(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` in one step, keeping its permission bits (0644 for a new file)."""
    tmp = path.with_name(f".{path.name}.tsfmd-{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(text.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    try:
        if path.exists():
            info = path.stat()
            os.chmod(tmp, info.st_mode & 0o7777)
            try:
                os.chown(tmp, info.st_uid, info.st_gid)
            except OSError:
                pass  # not root: the file stays ours, which is what we could write anyway
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def config_kind(path: Path) -> str:
    return "config.py" if path.suffix == ".py" else "ini"


@dataclass
class ConfigEdit:
    path: Path
    before: str
    after: str
    notes: List[str]

    @property
    def changes(self) -> bool:
        return self.before != self.after


def forecasts(spec) -> bool:
    """Whether the entry's family forecasts: an imputation model gets no forecast adapter."""
    from tsfmd.families import get_family

    try:
        return "forecast" in get_family(spec.family).tasks
    except (KeyError, ImportError):
        return True  # an unknown family is the registry check's to report


def plan_config(path: Path, registry: Registry, names: List[str],
                builtins: List[str]) -> ConfigEdit:
    """The anode config with tsfmd's entries (the edit is verified here).

    ini era: a [tsfm-service] URL for every name in `names`. config.py era: a top-level URL
    for the `builtins` only (names the anode ships); generated adapters carry their own.
    """
    if not path.is_file():
        raise AdapterError(f"anode config {path} not found: pass --anode-config FILE")
    text = read_exact(path)
    server = registry.server
    routes = {spec.key: spec.route for spec in registry.enabled}
    if config_kind(path) == "ini":
        original = ini_config.strip(text)
        entries = {name: tsfmd_url(server, routes[name]) for name in names}
        edited, notes = ini_config.apply(original, entries, str(path))
        ini_config.verify(original, edited, entries, str(path))
    else:
        original = pyconfig.strip(text, str(path))
        entries = {name: tsfmd_url(server, routes[name]) for name in builtins}
        edited, notes = pyconfig.apply(original, entries, registry.path)
        if entries:
            pyconfig.verify(original, edited, entries, str(path))
    return ConfigEdit(path, text, edited, notes)


def unplan_config(path: Path) -> Optional[ConfigEdit]:
    """The anode config without tsfmd's edits, or None when there is no config file."""
    if not path.is_file():
        return None
    text = read_exact(path)
    if config_kind(path) == "ini":
        restored = ini_config.strip(text)
        if restored != text:
            ini_config.load(restored, str(path))
    else:
        restored = pyconfig.strip(text, str(path))
    return ConfigEdit(path, text, restored, [])


# ---------------------------------------------------------------------------------------
# install


@dataclass
class InstallPlan:
    layout: AnodeLayout
    writes: List[Tuple[Adapter, Path, str]] = field(default_factory=list)  # state new/update/same
    removes: List[Path] = field(default_factory=list)
    redirected: List[Tuple[str, Path]] = field(default_factory=list)
    config: Optional[ConfigEdit] = None
    blocked: List[str] = field(default_factory=list)
    unreached: List[str] = field(default_factory=list)  # imputation keys no adapter names
    imputation_names: List[str] = field(default_factory=list)  # the anode's own ones

    @property
    def changes(self) -> bool:
        return (any(state != "unchanged" for _, _, state in self.writes) or bool(self.removes)
                or bool(self.config and self.config.changes))


def plan_install(registry: Registry, anode_dir: str, config_path: str) -> InstallPlan:
    layout = AnodeLayout(anode_dir)
    layout.check()
    specs = list(registry.enabled)
    check_keys(specs)
    plan = InstallPlan(layout)
    shipped = layout.shipped_names()
    ours = [spec for spec in specs if spec.key not in shipped and forecasts(spec)]
    plan.redirected = [(spec.key, shipped[spec.key]) for spec in specs if spec.key in shipped]
    # an imputation model is reached only through an adapter the anode ships (`moment`)
    plan.unreached = [spec.key for spec in specs if spec.key not in shipped
                      and not forecasts(spec)]
    plan.imputation_names = layout.imputation_names()
    adapters = render_all(ours, registry.server, registry.path)
    generated = {g.path: g.header for g in layout.generated_files()}
    targets = set()
    for adapter in adapters:
        path = layout.target_dir / adapter.filename
        targets.add(path)
        if path in generated:
            if not generated[path].intact:
                plan.blocked.append(f"{path} was edited since tsfmd wrote it; move it away first")
                continue
            state = "unchanged" if read_exact(path) == adapter.text else "update"
        elif path.exists():
            plan.blocked.append(f"{path} exists and was not written by tsfmd; move it away first")
            continue
        else:
            state = "new"
        plan.writes.append((adapter, path, state))
    for path, header in generated.items():
        if path in targets:
            continue
        if header.intact:
            plan.removes.append(path)
        else:
            plan.blocked.append(
                f"{path} (tsfmd adapter for {header.key}, no longer wanted) was edited since "
                "tsfmd wrote it; remove it by hand"
            )
    names = [spec.key for spec in specs if spec.key not in plan.unreached]
    builtins = [key for key, _ in plan.redirected]
    plan.config = plan_config(Path(config_path), registry, names, builtins)
    return plan


def served_at(registry: Registry, url: Optional[str]) -> Registry:
    """`registry` as the anode reaches it at `url` (`--url`: e.g. the Ray Serve proxy in
    front of tsfmd.ray, tsfmd/ray/): adapters and config entries point there."""
    if not url:
        return registry
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise ValueError(f"--url must be http://HOST[:PORT] (no path), got {url!r}")
    server = replace(registry.server, host=parts.hostname, port=parts.port or 80)
    return replace(registry, server=server)


def cmd_install(args) -> int:
    try:
        registry = load_registry(args.config or _default_registry())
        registry = served_at(registry, args.url)
    except RegistryError as exc:
        return _fail(f"the registry is not valid:\n{exc}")
    except ValueError as exc:
        return _fail(str(exc))
    config_path = args.anode_config or default_anode_config()
    try:
        plan = plan_install(registry, args.anode_dir, config_path)
    except AdapterError as exc:
        return _fail(str(exc))
    layout = plan.layout
    print(f"tsfmd adapters install: registry {registry.path}, anode {layout.anode_dir}, "
          f"config {config_path}")
    kind = config_kind(Path(config_path))
    if kind != layout.era:
        print(f"warning: {config_path} is a {kind} config but this anode looks like a "
              f"{layout.era}-era release; check --anode-config")
    if plan.blocked:
        print("refusing to change anything:", file=sys.stderr)
        for problem in plan.blocked:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for adapter, path, state in plan.writes:
        print(f"  {state:<9} {path}  (algo={adapter.key} -> {adapter.url})")
    for path in plan.removes:
        print(f"  remove    {path}  (no longer an enabled registry key)")
    for key, path in plan.redirected:
        print(f"  built-in  {key}: the anode ships it ({path}); no adapter written, its URL is "
              f"pointed at tsfmd through {config_path} instead")
    for key in plan.unreached:
        shipped_ones = ", ".join(plan.imputation_names) or "none in this anode"
        print(f"  skipped   {key}: it imputes, and TDgpt reaches imputation only through the "
              f"anode's own adapters ({shipped_ones}): name the registry entry after one")
    for note in plan.config.notes:
        print(f"  config    {note}")
    if args.dry_run:
        print("dry run: nothing was changed" if plan.changes else
              "dry run: already installed, nothing would change")
        _print_next_steps()
        return 0
    if not plan.changes:
        print("already installed: nothing changed")
        _print_next_steps()
        return 0
    try:
        for adapter, path, state in plan.writes:
            if state != "unchanged":
                atomic_write(path, adapter.text)
        for path in plan.removes:
            path.unlink()
        if plan.config.changes:
            atomic_write(plan.config.path, plan.config.after)
    except OSError as exc:
        return _fail(f"cannot write: {exc} (run as the anode's owner, e.g. with sudo)")
    print(f"installed {len(plan.writes)} adapter(s) in {layout.target_dir}"
          + (f", redirected {len(plan.redirected)} built-in name(s)" if plan.redirected else ""))
    _print_next_steps()
    return 0


# ---------------------------------------------------------------------------------------
# uninstall and list


def cmd_uninstall(args) -> int:
    layout = AnodeLayout(args.anode_dir)
    config_path = Path(args.anode_config or default_anode_config())
    try:
        layout.check()
        files = layout.generated_files()
        edited = [g for g in files if not g.header.intact]
        if edited:
            print("refusing to change anything: edited since tsfmd wrote them:", file=sys.stderr)
            for g in edited:
                print(f"  {g.path} (adapter for {g.header.key}); restore or remove it by hand",
                      file=sys.stderr)
            return 1
        config = unplan_config(config_path)
    except AdapterError as exc:
        return _fail(str(exc))
    for g in files:
        print(f"  remove    {g.path}  (algo={g.header.key})")
    if config and config.changes:
        print(f"  config    {config_path}: remove tsfmd's entries, restore replaced values")
    if not files and not (config and config.changes):
        print("nothing of tsfmd's is installed in this anode")
        return 0
    if args.dry_run:
        print("dry run: nothing was changed")
        return 0
    try:
        for g in files:
            g.path.unlink()
        if config and config.changes:
            atomic_write(config.path, config.after)
    except OSError as exc:
        return _fail(f"cannot write: {exc} (run as the anode's owner, e.g. with sudo)")
    print("Next steps: restart the anode (systemctl restart taosanoded), then run "
          "`update all anodes;` in the TDengine CLI")
    return 0


def cmd_list(args) -> int:
    layout = AnodeLayout(args.anode_dir)
    config_path = Path(args.anode_config or default_anode_config())
    registry_path = args.config or _default_registry()
    try:
        layout.check()
    except AdapterError as exc:
        return _fail(str(exc))
    try:
        registry: Optional[Registry] = served_at(load_registry(registry_path), args.url)
    except RegistryError as exc:
        registry = None
        print(f"warning: registry {registry_path} is not valid, cannot compare: "
              f"{exc.problems[0]}")
    except ValueError as exc:
        return _fail(str(exc))
    wanted: Dict[str, Adapter] = {}
    shipped = layout.shipped_names()
    if registry is not None:
        try:
            specs = [s for s in registry.enabled if s.key not in shipped and forecasts(s)]
            wanted = {a.key: a for a in render_all(specs, registry.server, registry.path)}
        except AdapterError as exc:
            print(f"warning: {exc}")
    print(f"anode {layout.anode_dir} ({layout.era} era), adapters in {layout.target_dir}")
    in_sync = True
    seen = set()
    for g in layout.generated_files():
        key = g.header.key
        seen.add(key)
        adapter = wanted.get(key)
        if not g.header.intact:
            state = "EDITED since install (digest mismatch)"
        elif adapter is None:
            state = "not an enabled key of the registry: install removes it"
        elif g.path.parent != layout.target_dir or read_exact(g.path) != adapter.text:
            state = "outdated: install rewrites it"
        else:
            state = "matches the registry"
        in_sync &= state == "matches the registry"
        print(f"  {key:<24} {g.path}  {state}")
    for key in wanted:
        if key not in seen:
            in_sync = False
            print(f"  {key:<24} not installed")
    configured = _configured(config_path)
    if registry is not None:
        for spec in registry.enabled:
            url = tsfmd_url(registry.server, spec.route)
            if spec.key in shipped:
                state = "ok" if configured.get(spec.key) == url else "NOT pointed at tsfmd"
                in_sync &= state == "ok"
                print(f"  {spec.key:<24} built into the anode ({shipped[spec.key].name}); "
                      f"config URL {configured.get(spec.key, '-')}: {state}")
            elif spec.key in configured and configured[spec.key] != url:
                in_sync = False
                print(f"  {spec.key:<24} config URL {configured[spec.key]} differs from {url}")
    print("all in line with the registry" if in_sync else
          "not in line: run `tsfmd adapters install` to bring the anode in line")
    return 0


def _configured(path: Path) -> Dict[str, str]:
    """algo name -> URL that tsfmd's config entries set (empty without a config)."""
    if not path.is_file():
        return {}
    text = read_exact(path)
    return ini_config.managed(text) if config_kind(path) == "ini" else pyconfig.managed(text)


# ---------------------------------------------------------------------------------------
# argparse wiring: `add_parser(commands)` is the one line in tsfmd/cli.py


def _default_registry() -> str:
    from tsfmd.core.registry import default_config

    return default_config()


def _fail(message: str) -> int:
    print(f"tsfmd adapters: {message}", file=sys.stderr)
    return 1


def _print_next_steps() -> None:
    for line in NEXT_STEPS:
        print(line)


def add_parser(commands) -> None:
    adapters = commands.add_parser(
        "adapters", help="generate TDgpt adapters and anode config from the registry"
    )
    verbs = adapters.add_subparsers(dest="adapters_command", metavar="ACTION")
    verbs.required = True

    def common(parser: argparse.ArgumentParser, registry: bool) -> None:
        parser.add_argument("--anode-dir", default=DEFAULT_ANODE_DIR,
                            help=f"the anode's install directory (default {DEFAULT_ANODE_DIR})")
        parser.add_argument("--anode-config", default=None,
                            help=f"the anode's config (default {PY_CONFIG} if it exists, "
                                 f"else {INI_CONFIG})")
        if registry:
            parser.add_argument("--config", default=None,
                                help="tsfmd registry (default: as for `tsfmd serve`)")
            parser.add_argument("--url", default=None,
                                help="where the anode reaches tsfmd, http://HOST:PORT (default: "
                                     "the registry's server.host and port), e.g. a Ray Serve "
                                     "proxy")

    install = verbs.add_parser("install", help="write adapters and config entries")
    common(install, True)
    install.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    install.set_defaults(handler=cmd_install)

    uninstall = verbs.add_parser("uninstall", help="remove tsfmd's adapters and config edits")
    common(uninstall, False)
    uninstall.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    uninstall.set_defaults(handler=cmd_uninstall)

    listing = verbs.add_parser("list", help="what is installed, and whether it matches")
    common(listing, True)
    listing.set_defaults(handler=cmd_list)
