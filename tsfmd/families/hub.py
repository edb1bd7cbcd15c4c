"""Find a model's files: a local directory, the Hugging Face cache, or the hub when online.

Families call `resolve_model_dir` and get a local directory or a ModelLoadError whose text
says where tsfmd looked and, for a hub id, the one command that puts the weights there.
The hub is asked only when the source looks like a hub id, `offline` is false and
HF_HUB_OFFLINE is not set; HF_ENDPOINT is honoured by huggingface_hub itself. `tsfmd pull`
(tsfmd/daemon/pull.py, with hub_fetch.py) is how an operator fills the cache.
`source_fingerprint` tells, without any network, whether a source's files are on this
machine and whether they changed (a reload retries a failed model only then).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence, Tuple

from tsfmd.families.base import ModelLoadError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model_dir(
    source: str,
    cache_dir: Optional[str] = None,
    required: Sequence[str] = ("config.json",),
    allow_patterns: Optional[Sequence[str]] = None,
    offline: bool = False,
) -> Path:
    """Return a local directory holding `required` files for `source`; `offline` never
    downloads (what `tsfmd check` uses)."""
    local = Path(source).expanduser()
    if local.is_dir():
        _require(local, required, source)
        return local.resolve()
    if not is_hub_id(source):
        raise ModelLoadError(f"weights not found at {local}: no such directory")
    return _from_hub(source, cache_dir, required, allow_patterns, offline or hub_offline())


def is_hub_id(source: str) -> bool:
    """`org/name`, and not a path that merely does not exist."""
    local = Path(source).expanduser()
    return not (local.is_absolute() or source.startswith(".")) and bool(_HUB_ID.match(source))


def hub_cache_dir(cache_dir: Optional[str]) -> Optional[str]:
    """Where tsfmd keeps hub downloads: `<state dir>/hub` (None: huggingface_hub's default)."""
    return str(Path(cache_dir) / "hub") if cache_dir else None


def fetch_command(source: str, cache_dir: Optional[str]) -> str:
    """The one command that puts hub id `source` where tsfmd looks for it (`tsfmd pull`
    takes a registry key or the hub id, and finds the family's files and loader itself)."""
    return f"tsfmd pull {source}" + (f" --state-dir {cache_dir}" if cache_dir else "")


def _from_hub(source, cache_dir, required, allow_patterns, offline: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a base requirement
        raise ModelLoadError(f"weights not found for {source}: huggingface_hub missing") from exc
    hub_cache = hub_cache_dir(cache_dir)
    where = hub_cache or "the default Hugging Face cache"
    fetch = f"fetch them with: {fetch_command(source, cache_dir)}"
    try:
        # The cache first, always: a machine that downloaded once needs no network again.
        path = snapshot_download(
            repo_id=source, cache_dir=hub_cache, allow_patterns=allow_patterns,
            local_files_only=True,
        )
    except Exception as cached_miss:  # huggingface_hub raises several error types here
        if offline:
            why = " and HF_HUB_OFFLINE is set" if hub_offline() else ""
            raise ModelLoadError(
                f"weights not found for {source}: not in {where}{why}; {fetch}"
            ) from cached_miss
        try:
            path = snapshot_download(
                repo_id=source, cache_dir=hub_cache, allow_patterns=allow_patterns,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"weights not found for {source}: not in {where}, and the download failed "
                f"({type(exc).__name__}: {_first_line(exc)}); {fetch}"
            ) from exc
    directory = Path(path)
    _require(directory, required, source, fetch)
    return directory


def source_fingerprint(source: str, cache_dir: Optional[str]) -> Optional[Tuple]:
    """(path, size, mtime) of every file the source has on this machine, found without any
    network; None when it has none here (a missing directory, a hub id not in the cache, or
    a family word such as "bundled")."""
    local = Path(source).expanduser()
    if local.is_dir():
        return _files_of(local)
    if not is_hub_id(source):
        return None
    snapshot = cached_snapshot(source, cache_dir)
    return None if snapshot is None else _files_of(snapshot)


def cached_snapshot(source: str, cache_dir: Optional[str]) -> Optional[Path]:
    """The cache's snapshot directory that refs/main names, read straight from the cache
    layout: huggingface_hub's own lookup refuses a snapshot that lacks any file of the
    repository (its tree listing names them all), though a family needs only a few."""
    hub_cache = hub_cache_dir(cache_dir)
    if hub_cache is None:
        from huggingface_hub import constants

        hub_cache = constants.HF_HUB_CACHE
    repo = Path(hub_cache) / ("models--" + source.replace("/", "--"))
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


def _files_of(directory: Path) -> Optional[Tuple]:
    try:
        stats = [(str(p.relative_to(directory)), p.stat()) for p in sorted(directory.rglob("*"))
                 if p.is_file()]
    except OSError:
        return None
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats) or None


def _require(directory: Path, required: Sequence[str], source: str, fetch: str = "") -> None:
    missing = [name for name in required if not (directory / name).exists()]
    if missing:
        raise ModelLoadError(
            f"weights not found at {directory} (source {source}): missing {', '.join(missing)}"
            + (f"; {fetch}" if fetch else "")
        )
    unreadable = [name for name in required if not os.access(directory / name, os.R_OK)]
    if unreadable:
        raise ModelLoadError(
            f"cannot read {', '.join(unreadable)} in {directory} (source {source}): "
            "check the files' owner and mode"
        )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
