"""Where an installed anode keeps its adapters, and which algo names it already ships.

Every anode release imports `lib/taosanalytics/algo/fc/*.py`; config.py-era releases also
import `lib/taosanalytics/algo/custom/fc/*.py`, a folder for third-party adapters that cannot
clash with built-in file names, so tsfmd writes there when it exists. Imputation adapters
live in `lib/taosanalytics/algo/imputat/`; tsfmd writes none, it points the anode's own
(`moment`) at tsfmd through the config.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tsfmd.anode.generate import AdapterError, Header, read_header

DEFAULT_ANODE_DIR = "/usr/local/taos/taosanode"
_NAME_LINE = re.compile(r"""^\s+name\s*=\s*['"]([^'"]+)['"]""", re.MULTILINE)


@dataclass(frozen=True)
class GeneratedFile:
    path: Path
    header: Header


class AnodeLayout:
    def __init__(self, anode_dir: str):
        self.anode_dir = Path(anode_dir)
        self.package = self.anode_dir / "lib" / "taosanalytics"
        self.fc_dir = self.package / "algo" / "fc"
        self.custom_fc_dir = self.package / "algo" / "custom" / "fc"
        #: the anode's own imputation adapters (MOMENT's `moment`); tsfmd writes none there
        self.imputation_dir = self.package / "algo" / "imputat"

    def check(self) -> None:
        if not self.fc_dir.is_dir():
            raise AdapterError(
                f"no TDgpt anode at {self.anode_dir}: {self.fc_dir} does not exist; "
                "pass --anode-dir with the anode's install directory"
            )

    @property
    def target_dir(self) -> Path:
        """custom/fc when this anode scans it, else fc."""
        return self.custom_fc_dir if self.custom_fc_dir.is_dir() else self.fc_dir

    @property
    def era(self) -> str:
        """'config.py' or 'ini', from the base-class module this release has."""
        if (self.package / "base.py").is_file():
            return "config.py"
        return "ini"

    def adapter_dirs(self) -> List[Path]:
        return [d for d in (self.fc_dir, self.custom_fc_dir) if d.is_dir()]

    def imputation_dirs(self) -> List[Path]:
        return [self.imputation_dir] if self.imputation_dir.is_dir() else []

    def imputation_names(self) -> List[str]:
        """The algo names of the anode's own imputation adapters."""
        return sorted(name for name, path in self.shipped_names().items()
                      if path.parent == self.imputation_dir)

    def generated_files(self) -> List[GeneratedFile]:
        """Every adapter file carrying tsfmd's header, in both adapter folders."""
        found = []
        for directory in self.adapter_dirs():
            for path in sorted(directory.glob("*.py")):
                header = read_header(_read(path))
                if header is not None:
                    found.append(GeneratedFile(path, header))
        return found

    def shipped_names(self) -> Dict[str, Path]:
        """algo name -> file, for every adapter the anode has that tsfmd did not write
        (forecast adapters and its imputation ones)."""
        names: Dict[str, Path] = {}
        for directory in self.adapter_dirs() + self.imputation_dirs():
            for path in sorted(directory.glob("*.py")):
                if path.name == "__init__.py":
                    continue
                text = _read(path)
                if read_header(text) is not None:
                    continue
                for name in _algo_names(text):
                    names.setdefault(name, path)
        return names


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _algo_names(text: str) -> List[str]:
    """`name = "..."` of every `_` class; a regex scan when the file does not parse here."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return _NAME_LINE.findall(text)
    names = []
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name.startswith("_")):
            continue
        for statement in node.body:
            value = _assigned_name(statement)
            if value is not None:
                names.append(value)
    return names


def _assigned_name(statement) -> Optional[str]:
    if isinstance(statement, ast.Assign):
        targets: Tuple = tuple(statement.targets)
    elif isinstance(statement, ast.AnnAssign):
        targets = (statement.target,)
    else:
        return None
    if any(isinstance(t, ast.Name) and t.id == "name" for t in targets):
        value = statement.value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
    return None
