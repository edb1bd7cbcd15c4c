"""Model files where tsfmd looks for them, made from local files (no network).

`put_in_hub_cache` lays a repository out as `hf download REPO --cache-dir DIR` leaves it
(refs/main naming a snapshot directory), so huggingface_hub finds it with
local_files_only, exactly as it finds a real download. `fracast_checkpoint` copies the
weights the fracast wheel ships into a directory: a real checkpoint on disk.
"""
from __future__ import annotations

import shutil
from pathlib import Path

FRACAST_FILES = ("config.json", "model.safetensors")


def fracast_checkpoint(directory: Path) -> Path:
    import fracast

    bundled = Path(fracast.__file__).parent / "weights"
    directory.mkdir(parents=True, exist_ok=True)
    for name in FRACAST_FILES:
        shutil.copy(bundled / name, directory / name)
    return directory


def put_in_hub_cache(hub_dir: Path, repo_id: str, files_from: Path,
                     commit: str = "0" * 40) -> Path:
    """Copy the files of `files_from` into `hub_dir` as the cached snapshot of `repo_id`."""
    repo = hub_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files_from, snapshot, dirs_exist_ok=True)
    return snapshot
