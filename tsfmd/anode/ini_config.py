"""Ini-era anodes: point `[tsfm-service]` keys of taosanode.ini at tsfmd, reversibly.

Only lines inside `[tsfm-service]` are added or replaced (or the section is appended when the
file has none); every other byte stays as it was. Each edit is preceded by a marker comment,
and a replaced line is kept verbatim (JSON-quoted, line end included) in a `# tsfmd-was:`
comment, so `strip()` gives back the original file byte for byte without any state file.
"""
from __future__ import annotations

import configparser
import json
import re
from typing import Dict, List, Optional, Tuple

from tsfmd.anode.generate import AdapterError

SECTION = "tsfm-service"
ADDED = "# tsfmd adapters install: added the next line; `tsfmd adapters uninstall` removes it"
CHANGED = ("# tsfmd adapters install: changed the next line; `tsfmd adapters uninstall` "
           "restores the tsfmd-was lines")
WAS = "# tsfmd-was: "
NEW_SECTION = ("# tsfmd adapters install: added this section; `tsfmd adapters uninstall` "
               "removes it")
#: on a marker when tsfmd had to end the (last) line above it, which had no line end
ENDED_ABOVE = " (ended the line above)"
_HEADER = re.compile(r"^\[(.+)\]")
_OPTION = re.compile(r"^(.*?)\s*[=:]\s*(.*)$")


def eol_of(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _body(line: str) -> str:
    return line.rstrip("\r\n")


def _ending(line: str) -> str:
    return line[len(_body(line)):]


def load(text: str, path: str) -> configparser.ConfigParser:
    """Parse like the anode does (ConfigParser() with defaults), or say why it cannot."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise AdapterError(f"{path} does not load as an ini file: {exc}") from exc
    return parser


def strip(text: str) -> str:
    """`text` without tsfmd's edits: replaced lines restored, added lines and section gone."""
    lines = text.splitlines(keepends=True)
    out: List[str] = []
    i = 0
    while i < len(lines):
        body = _body(lines[i])
        if body.startswith(ADDED):
            if body.endswith(ENDED_ABOVE) and out:
                out[-1] = _body(out[-1])
            i += 2  # the marker and the line it marks
        elif body.startswith(CHANGED):
            i += 1
            while i < len(lines) and lines[i].startswith(WAS):
                out.append(json.loads(_body(lines[i])[len(WAS):]))
                i += 1
            i += 1  # tsfmd's value line
        elif body.startswith(NEW_SECTION):
            end = _section_end(lines, i + 2)
            if _only_tsfmd_lines(lines[i + 2:end]):
                # the section goes, and so does the one line end written before it
                eol = eol_of(text)
                if out and out[-1].endswith(eol):
                    out[-1] = out[-1][: -len(eol)]
                i = end
            else:  # someone added their own keys to the section: keep it, drop the marker
                i += 1
        else:
            out.append(lines[i])
            i += 1
    return "".join(out)


def _section_end(lines: List[str], start: int) -> int:
    for j in range(start, len(lines)):
        if _HEADER.match(lines[j].strip()) and not lines[j][:1].isspace():
            return j
    return len(lines)


def _only_tsfmd_lines(lines: List[str]) -> bool:
    j = 0
    while j < len(lines):
        body = _body(lines[j])
        if body.startswith(ADDED):
            j += 2
        elif not body.strip():
            j += 1
        else:
            return False
    return True


def managed(text: str) -> Dict[str, str]:
    """key -> value of every line tsfmd added or changed."""
    lines = text.splitlines(keepends=True)
    found = {}
    for i, line in enumerate(lines):
        body = _body(line)
        if body.startswith(ADDED) or body.startswith(CHANGED):
            j = i + 1
            while j < len(lines) and lines[j].startswith(WAS):
                j += 1
            if j < len(lines):
                match = _OPTION.match(lines[j].strip())
                if match:
                    found[match.group(1).strip().lower()] = match.group(2).strip()
    return found


def apply(original: str, entries: Dict[str, str], path: str) -> Tuple[str, List[str]]:
    """Point each key of `entries` at its URL in [tsfm-service]; returns (text, what changed).

    `original` must be free of tsfmd edits (see `strip`). Keys already holding the URL stay
    untouched and unmarked: they were like that before tsfmd.
    """
    parser = load(original, path)
    if not entries:
        return original, []
    eol = eol_of(original)
    lines = original.splitlines(keepends=True)
    notes: List[str] = []
    span = _find_section(lines)
    if span is None:
        block = [NEW_SECTION + eol, f"[{SECTION}]" + eol]
        for key, url in entries.items():
            block += [ADDED + eol, f"{key} = {url}" + eol]
            notes.append(f"add [{SECTION}] {key} = {url} (new section)")
        return original + eol + "".join(block), notes
    start, end = span
    options = _options(lines, start + 1, end)
    replacements: Dict[int, Tuple[int, List[str]]] = {}
    added: List[str] = []
    for key, url in entries.items():
        if (key in options) != parser.has_option(SECTION, key):
            raise AdapterError(
                f"{path}: cannot tell which lines hold [{SECTION}] {key}; set it by hand"
            )
        if key in options:
            first, last = options[key]
            if parser.get(SECTION, key, raw=True) == url:
                notes.append(f"keep [{SECTION}] {key} = {url} (already set)")
                continue
            was = [WAS + json.dumps(line) + eol for line in lines[first:last + 1]]
            new = [CHANGED + eol] + was + [f"{key} = {url}" + _ending(lines[last])]
            replacements[first] = (last, new)
            old_value = parser.get(SECTION, key, raw=True)
            notes.append(f"change [{SECTION}] {key} = {url} (was {old_value})")
        else:
            added.append(key)
            notes.append(f"add [{SECTION}] {key} = {url}")
    insert_after = _last_content_line(lines, start, end)
    out: List[str] = []
    i = 0
    while i < len(lines):
        if i in replacements:
            last, new = replacements[i]
            out.extend(new)
            i = last + 1
        else:
            out.append(lines[i])
            i += 1
        if i - 1 == insert_after and added:
            out.extend(_added_lines(out, added, entries, eol))
            added = []
    return "".join(out), notes


def _added_lines(out: List[str], keys: List[str], entries: Dict[str, str], eol: str) -> List[str]:
    block = []
    for n, key in enumerate(keys):
        marker = ADDED
        if n == 0 and out and not _ending(out[-1]):
            out[-1] += eol
            marker += ENDED_ABOVE
        block += [marker + eol, f"{key} = {entries[key]}" + eol]
    return block


def _find_section(lines: List[str]) -> Optional[Tuple[int, int]]:
    for i, line in enumerate(lines):
        match = _HEADER.match(line.strip())
        if match and match.group(1) == SECTION and not line[:1].isspace():
            return i, _section_end(lines, i + 1)
    return None


def _options(lines: List[str], start: int, end: int) -> Dict[str, Tuple[int, int]]:
    """key (lower-case, as configparser sees it) -> (first line, last line) of its entry."""
    options: Dict[str, Tuple[int, int]] = {}
    current: Optional[str] = None
    indent = 0
    for i in range(start, end):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            continue
        line_indent = len(line) - len(line.lstrip())
        if current is not None and line_indent > indent:
            options[current] = (options[current][0], i)  # a continuation line of the value
            continue
        if stripped[0] in "#;":
            continue
        match = _OPTION.match(stripped)
        if match:
            current = match.group(1).strip().lower()
            indent = line_indent
            options.setdefault(current, (i, i))
    return options


def _last_content_line(lines: List[str], start: int, end: int) -> int:
    for i in range(end - 1, start, -1):
        if lines[i].strip():
            return i
    return start


def verify(original: str, edited: str, entries: Dict[str, str], path: str) -> None:
    """The edited file loads like the anode loads it, with tsfmd's URLs and nothing else new."""
    before, after = load(original, path), load(edited, path)
    for key, url in entries.items():
        if not after.has_option(SECTION, key) or after.get(SECTION, key) != url:
            raise AdapterError(f"editing {path} went wrong: [{SECTION}] {key} is not {url}")
    for section in before.sections():
        theirs = dict(before.items(section, raw=True))
        ours = dict(after.items(section, raw=True))
        if section == SECTION:
            theirs = {k: v for k, v in theirs.items() if k not in entries}
            ours = {k: v for k, v in ours.items() if k not in entries}
        if theirs != ours:
            raise AdapterError(f"editing {path} went wrong: section [{section}] changed")
