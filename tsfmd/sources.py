"""Find a model's files: a local directory, the Hugging Face cache, or the hub when online.

Families call `resolve_model_dir` and get a local directory or a ModelLoadError whose text
says where tsfmd looked. The hub is asked only when the source looks like a hub id and
HF_HUB_OFFLINE is not set; HF_ENDPOINT is honoured by huggingface_hub itself.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence

from tsfmd.families.base import ModelLoadError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model_dir(
    source: str,
    cache_dir: Optional[str] = None,
    required: Sequence[str] = ("config.json",),
    allow_patterns: Optional[Sequence[str]] = None,
) -> Path:
    """Return a local directory holding `required` files for `source`."""
    local = Path(source).expanduser()
    if local.is_dir():
        _require(local, required, source)
        return local.resolve()
    if local.is_absolute() or source.startswith(".") or not _HUB_ID.match(source):
        raise ModelLoadError(f"weights not found at {local}: no such directory")
    return _from_hub(source, cache_dir, required, allow_patterns)


def _from_hub(source, cache_dir, required, allow_patterns) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a base requirement
        raise ModelLoadError(f"weights not found for {source}: huggingface_hub missing") from exc
    hub_cache = str(Path(cache_dir) / "hub") if cache_dir else None
    offline = hub_offline()
    where = hub_cache or "the default Hugging Face cache"
    try:
        # The cache first, always: a machine that downloaded once needs no network again.
        path = snapshot_download(
            repo_id=source, cache_dir=hub_cache, allow_patterns=allow_patterns,
            local_files_only=True,
        )
    except Exception as cached_miss:  # huggingface_hub raises several error types here
        if offline:
            raise ModelLoadError(
                f"weights not found for {source}: not in {where} and HF_HUB_OFFLINE is set"
            ) from cached_miss
        try:
            path = snapshot_download(
                repo_id=source, cache_dir=hub_cache, allow_patterns=allow_patterns,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"weights not found for {source}: not in {where}, and the download failed "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
    directory = Path(path)
    _require(directory, required, source)
    return directory


def _require(directory: Path, required: Sequence[str], source: str) -> None:
    missing = [name for name in required if not (directory / name).exists()]
    if missing:
        raise ModelLoadError(
            f"weights not found at {directory} (source {source}): missing {', '.join(missing)}"
        )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
