"""What /v1/models says about a model's weights: licence, parameter count, bytes on disk.

Read from the files, never from the hub: the licence from the checkpoint's model card
(README.md front matter `license:`) or its config.json, else the family's declared
licence (`Family.license`), else "unknown"; the parameter count and bytes from the
safetensors headers (an 8-byte length, then JSON naming each tensor's dtype, shape and
byte range), so nothing is loaded and any family's checkpoint is counted the same way.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Iterable, List, Optional

UNKNOWN = "unknown"
#: safetensors headers are small; a bigger one is not a safetensors file
_MAX_HEADER = 100 * 1024 * 1024
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


@dataclass(frozen=True)
class WeightsInfo:
    license: str = UNKNOWN
    parameters: Optional[int] = None
    weights_bytes: Optional[int] = None

    def as_dict(self) -> dict:
        return {"license": self.license, "parameters": self.parameters,
                "weights_bytes": self.weights_bytes}


def weights_info(location: Optional[Path], family_license: Optional[str] = None) -> WeightsInfo:
    """`location`: the checkpoint directory, or the one weights file the model loads;
    None when tsfmd cannot tell where the files are (then only the family's licence)."""
    if location is None:
        return WeightsInfo(license=family_license or UNKNOWN)
    location = Path(location)
    directory = location if location.is_dir() else location.parent
    licence = card_license(directory) or family_license or UNKNOWN
    try:
        files = weight_files(location)
        counted = [safetensors_parameters(f) for f in files]
        size = sum(f.stat().st_size for f in files) if files else None
    except OSError:  # a file gone or unreadable: say so, never fail the model for it
        return WeightsInfo(license=licence)
    return WeightsInfo(license=licence, weights_bytes=size,
                       parameters=sum(counted) if files and None not in counted else None)


def card_license(directory: Path) -> Optional[str]:
    """`license:` from README.md's YAML front matter, else config.json's "license"."""
    card = directory / "README.md"
    try:
        match = _FRONT_MATTER.match(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        match = None
    if match:
        import yaml

        try:
            front = yaml.safe_load(match.group(1))
        except yaml.YAMLError:
            front = None
        if isinstance(front, dict) and front.get("license"):
            return str(front["license"])
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = config.get("license") if isinstance(config, dict) else None
    return str(found) if found else None


def weight_files(location: Path) -> List[Path]:
    """The safetensors files the model loads: the file itself, the shards a
    model.safetensors.index.json names, model.safetensors, else every *.safetensors."""
    if location.is_file():
        return [location]
    index = location / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [location / name for name in shards if (location / name).is_file()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []
    single = location / "model.safetensors"
    return [single] if single.is_file() else sorted(location.glob("*.safetensors"))


def safetensors_parameters(path: Path) -> Optional[int]:
    """The number of values in every tensor of a safetensors file; None when its header
    does not parse (a truncated or corrupt file)."""
    header = safetensors_header(path)
    if header is None:
        return None
    return sum(_elements(entry) for name, entry in header.items() if name != "__metadata__")


def safetensors_header(path: Path) -> Optional[dict]:
    """The JSON header of a safetensors file, checked against the file's size."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                return None
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER:
                return None
            header = json.loads(f.read(length))
        size = Path(path).stat().st_size
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    ends = [entry.get("data_offsets", [0, 0])[1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict)]
    if 8 + length + max(ends, default=0) > size:
        return None  # the header names bytes the file does not have
    return header


def _elements(entry) -> int:
    shape: Iterable[int] = entry.get("shape", []) if isinstance(entry, dict) else []
    return int(prod(int(n) for n in shape))
