"""The table of model families: registry `family:` name -> the class that serves it.

Entries are "module:Class" strings so that a family's heavy imports (chronos, transformers
model code) happen only when a registry actually uses it. Add a family by adding a line.
"""
from __future__ import annotations

import importlib
from typing import Dict, Type

from tsfmd.families.base import Family
from tsfmd.families.checkpoint import LIBRARY_LOCK

_FAMILIES: Dict[str, str] = {
    "fracast": "tsfmd.families.fracast:FracastFamily",
    "chronos-bolt": "tsfmd.families.chronos:ChronosBoltFamily",
    "chronos-2": "tsfmd.families.chronos:Chronos2Family",
    "timesfm-2.5": "tsfmd.families.timesfm:TimesFm25Family",
    "time-moe": "tsfmd.families.timemoe.family:TimeMoeFamily",
    "moment": "tsfmd.families.moment:MomentFamily",
    "moirai": "tsfmd.families.moirai:MoiraiFamily",
    "tdtsfm": "tsfmd.families.tdtsfm:TdtsfmFamily",
    "timesfm-2.0": "tsfmd.families.timesfm2:TimesFm20Family",
}


def register_family(name: str, target: str) -> None:
    """Make `family: name` available; `target` is "package.module:ClassName"."""
    _FAMILIES[name] = target


def family_names() -> list:
    return sorted(_FAMILIES)


def get_family(name: str) -> Type[Family]:
    """Import and return the class for `name` (KeyError for an unknown family).

    Models load in parallel threads; the import holds LIBRARY_LOCK so that a second
    thread never sees a half-imported family module or library."""
    module_name, _, class_name = _FAMILIES[name].partition(":")
    with LIBRARY_LOCK:
        return getattr(importlib.import_module(module_name), class_name)
