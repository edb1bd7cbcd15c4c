"""`tsfmd pull KEY|HUB_ID`: put a model's files where the daemon looks, and prove they load.

KEY is a registry entry (its `source:` is the hub id, its `family:` says which files and
which loader); a hub id that no entry names is fetched with the files every checkpoint
family needs, and its family is told from its config.json. The files go into the state
dir's hub cache (`<state dir>/hub`, the one `tsfmd check` and the daemon read), resumably
and checked against the hub (tsfmd/families/hub_fetch.py), then the family's own load runs
on CPU, offline, exactly as the daemon will, and the model is closed again.

Exit status: 0 pulled and loads (or nothing to pull), 1 the download or the load failed,
2 the registry or the argument is wrong.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

#: pulled beside the family's files: the model card, where the weights' licence is
CARD = "README.md"
#: what a hub id with no registry entry is fetched with: any checkpoint family's files
ANY_CHECKPOINT = ("*.json", "*.safetensors")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(commands) -> None:
    from tsfmd.cli import STATE_DIR_HELP  # the same words as `tsfmd check --help`

    pull = commands.add_parser(
        "pull", help="download a model's weights into the hub cache and check they load")
    pull.add_argument("model", metavar="KEY|HUB_ID",
                      help="a registry key (its source is the hub id) or a hub id, org/name")
    pull.add_argument("--revision", default=None,
                      help="branch, tag or commit to serve (default main). The daemon reads "
                      "refs/main of its cache, so a pulled revision becomes what it serves")
    pull.add_argument("--config", default=None, help="registry file (default: as tsfmd serve)")
    pull.add_argument("--state-dir", default=None, help=STATE_DIR_HELP)
    pull.set_defaults(handler=cmd_pull)


def cmd_pull(args) -> int:
    from tsfmd.core.registry import RegistryError, default_config, load_registry
    from tsfmd.families.hub import hub_offline, is_hub_id

    path = args.config or default_config()
    try:
        registry = load_registry(path)
    except RegistryError as exc:
        return _fail(f"{path} is not valid: {'; '.join(exc.problems)}", EXIT_USAGE)
    spec = _entry(registry, args.model)
    source = spec.source if spec is not None else args.model
    if spec is None and not is_hub_id(source):
        keys = ", ".join(s.key for s in registry.models) or "none"
        return _fail(f"{args.model} is neither a key of {path} ({keys}) nor a hub id "
                     "(org/name)", EXIT_USAGE)
    if not is_hub_id(source):
        print(f"models.{spec.key} has source {source}: a local directory or the family's "
              "own weights, nothing to pull")
        return EXIT_OK
    if hub_offline():
        return _fail("HF_HUB_OFFLINE is set: a pull needs the hub (or the mirror HF_ENDPOINT "
                     "names); unset it for this command", EXIT_FAILED)
    state_dir = args.state_dir or registry.server.resolved_state_dir()
    retry = "run `tsfmd pull " + " ".join(_argv(args)) + "` again"
    try:
        snapshot, family = _download(source, args.revision, spec, state_dir, retry)
        summary = _load(family, source, spec, state_dir)
    except KeyboardInterrupt:
        return _fail(f"stopped; what was downloaded is kept: {retry} to resume", EXIT_FAILED)
    except Exception as exc:  # every failure ends as one sentence and exit 1
        return _fail(str(exc) or type(exc).__name__, EXIT_FAILED)
    print(f"{source}: {summary}")
    print(f"files in {snapshot}")
    print("next: `systemctl reload tsfmd` (or `tsfmd reload --config ...` for a daemon "
          "you started yourself) to serve them" + _next_entry(spec, source, family))
    return EXIT_OK


def _download(source: str, revision, spec, state_dir: str, retry: str) -> Tuple[Path, str]:
    """Fetch, link and check the files; return the snapshot directory and the family."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    from tsfmd.families import get_family, hub_fetch
    from tsfmd.families.hub import hub_cache_dir

    family = spec.family if spec is not None else None
    patterns = get_family(family).hub_patterns if family else ANY_CHECKPOINT
    if patterns is not None:
        patterns = list(patterns) + [CARD]
    hub_cache = hub_cache_dir(state_dir)
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    print(f"pulling {source} from {endpoint} into {hub_cache}", file=sys.stderr, flush=True)
    try:
        planned = hub_fetch.plan(source, revision, patterns)
    except Exception as exc:
        raise hub_fetch.PullError(f"cannot list {source} on {endpoint}: "
                                  f"{type(exc).__name__}: {_first_line(exc)}") from exc
    progress = hub_fetch.progress_factory()
    checked = hub_fetch.fetch_large_files(planned, hub_cache, progress, retry)
    if not sys.stderr.isatty():
        disable_progress_bars()  # tsfmd's own lines say what the large files did
    # The planned commit, not the branch: the files checked are the files listed
    snapshot = Path(snapshot_download(repo_id=source, revision=planned.commit,
                                      cache_dir=hub_cache, allow_patterns=patterns))
    hub_fetch.verify(snapshot, planned, checked, retry)
    hub_fetch.point_refs(planned, hub_cache, revision)
    return snapshot, family or _family_of(snapshot)


def _load(family: Optional[str], source: str, spec, state_dir: str) -> str:
    """Load with the family's loader on CPU, offline (as the daemon will), then close."""
    from tsfmd.families import get_family, hub_fetch
    from tsfmd.families.base import LoadSpec, ModelLoadError
    from tsfmd.families.metadata import weights_info

    if family is None:
        return "downloaded; no family recognised in its config.json, so not test-loaded"
    os.environ["HF_HUB_OFFLINE"] = "1"  # the load reads the cache, as the daemon does
    cls = get_family(family)
    load_spec = LoadSpec(
        key=spec.key if spec is not None else source, source=source, device="cpu",
        dtype=spec.dtype if spec is not None else "auto",
        cache_dir=state_dir, options=dict(spec.options) if spec is not None else {},
    )
    try:
        model = cls.load(load_spec)
    except ModelLoadError as exc:
        raise hub_fetch.PullError(
            f"the files match the hub but do not load with family {family}: {exc}; the "
            "daemon would fail the same way (is it the right family or revision?)") from exc
    try:
        caps = model.capabilities()
    finally:
        model.close()
    info = weights_info(cls.weights_location(load_spec), cls.license)
    params = "unknown" if info.parameters is None else f"{info.parameters:,}"
    return (f"loads with family {family} (context {caps.context_limit}, horizon "
            f"{caps.horizon_limit}); {params} parameters, {info.weights_bytes} bytes of "
            f"weights, licence {info.license}")


#: what a checkpoint's config.json says -> the family that serves it
_PIPELINES = {"ChronosBoltPipeline": "chronos-bolt", "Chronos2Pipeline": "chronos-2"}
_MODEL_TYPES = {"timesfm2_5": "timesfm-2.5", "time_moe": "time-moe"}


def _family_of(snapshot: Path) -> Optional[str]:
    try:
        config = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    return _PIPELINES.get(config.get("chronos_pipeline_class")) or \
        _MODEL_TYPES.get(config.get("model_type"))


def _entry(registry, name: str):
    """The registry entry `name` is the key of, else the first whose source it is."""
    for spec in registry.models:
        if spec.key == name:
            return spec
    return next((s for s in registry.models if s.source == name), None)


def _next_entry(spec, source: str, family: Optional[str]) -> str:
    if spec is not None:
        return ""
    return (f"; no registry entry names {source} yet: add one with `source: {source}`"
            + (f" and `family: {family}`" if family else ""))


def _argv(args) -> list:
    parts = [args.model]
    for flag, value in (("--revision", args.revision), ("--config", args.config),
                        ("--state-dir", args.state_dir)):
        if value:
            parts += [flag, str(value)]
    return parts


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _fail(message: str, status: int) -> int:
    print(f"tsfmd pull: {message}", file=sys.stderr)
    return status
