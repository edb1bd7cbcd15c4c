"""Config.py-era anodes: one marked block at the end of taosanode.config.py.

The anode executes the file as Python and derives `http://<ip>:<port><endpoint>` for every
`models` entry with a `port`, keyed by its `algo_name`. tsfmd appends a block that adds its
entries to that dict (creating it if the file has none) and touches nothing above it;
`strip()` removes the block and the one line end written before it, giving back the
original bytes. Edits are checked by executing the new file in a separate process first.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from typing import Dict, List, Tuple

from tsfmd.anode.generate import AdapterError

BEGIN = ("# >>> tsfmd adapters (begin): appended by `tsfmd adapters install`; "
         "`tsfmd adapters uninstall` removes this block")
END = "# <<< tsfmd adapters (end)"
#: models-dict keys of tsfmd's entries; TDgpt's own keys (tdtsfm, timemoe, ...) never clash
KEY_PREFIX = "tsfmd:"
DEFAULT_IP = "127.0.0.1"


def eol_of(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def strip(text: str, path: str = "taosanode.config.py") -> str:
    """`text` without tsfmd's block (and the line end written before it)."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BEGIN]
    if not begins:
        return text
    begin = begins[0]
    ends = [i for i in range(begin, len(lines)) if lines[i].rstrip("\r\n") == END]
    if not ends:
        raise AdapterError(
            f"{path}: tsfmd's block starting at line {begin + 1} has no end marker ({END!r}); "
            "repair or remove the block by hand"
        )
    before = "".join(lines[:begin])
    eol = eol_of(text)
    if before.endswith(eol):
        before = before[: -len(eol)]
    return before + "".join(lines[ends[0] + 1:])


def block(entries: Dict[str, Tuple[str, int, str]], registry_path: str, eol: str) -> str:
    """entries: algo name -> (ip, port, endpoint)."""
    lines = [
        BEGIN,
        f"# TDgpt algo names served by tsfmd (registry {registry_path}); the anode calls "
        "http://<ip>:<port><endpoint>.",
        'if "models" not in globals():',
        "    models = {}",
        "models.update({",
    ]
    for name, (ip, port, endpoint) in entries.items():
        entry = {"port": port, "endpoint": endpoint, "algo_name": name, "ip": ip,
                 "required": False}
        lines.append(f"    {KEY_PREFIX + name!r}: {_literal(entry)},")
    lines += ["})", END]
    return eol.join(lines) + eol


def _literal(entry: dict) -> str:
    return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in entry.items()) + "}"


def apply(original: str, entries: Dict[str, Tuple[str, int, str]],
          registry_path: str) -> Tuple[str, List[str]]:
    """`original` (free of tsfmd's block) with tsfmd's block appended; (text, what changed)."""
    eol = eol_of(original)
    notes = [f"models[{KEY_PREFIX + name!r}] -> http://{ip}:{port}{endpoint} (algo_name {name})"
             for name, (ip, port, endpoint) in entries.items()]
    if not entries:
        return original, []
    return original + eol + block(entries, registry_path, eol), notes


# ---------------------------------------------------------------------------------------
# Checking: execute the file as the anode does, in a child process (a config file may do
# anything to the process that runs it), and compare what it defines.

_PROBE = r"""
import json, sys
job = json.load(sys.stdin)
scope = {"__name__": "gunicorn_config", "__file__": job["path"], "__builtins__": __builtins__}
try:
    exec(compile(job["text"], job["path"], "exec"), scope)
except BaseException as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
names = sorted(k for k, v in scope.items() if not k.startswith("__") and not callable(v))
urls = {}
models = scope.get("models")
if isinstance(models, dict):
    for key, cfg in models.items():
        if isinstance(cfg, dict) and cfg.get("port"):
            name = cfg.get("algo_name", key)
            urls[name] = "http://%s:%s%s" % (cfg.get("ip", "127.0.0.1"), cfg["port"],
                                               cfg.get("endpoint", "/ds_predict"))
print(json.dumps({"names": names, "urls": urls}))
"""


def run_config(text: str, path: str) -> dict:
    """{'names': top-level names, 'urls': algo name -> URL} or {'error': why it fails}."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE], input=json.dumps({"text": text, "path": path}),
            capture_output=True, text=True, timeout=60,
        )
    except subprocess.TimeoutExpired:
        return {"error": "it did not finish executing within 60 s"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"the check failed: {done.stderr.strip()[-300:]}"}


def verify(original: str, edited: str, expected_urls: Dict[str, str], path: str) -> None:
    """The edited file executes, yields tsfmd's URLs, and defines nothing else new."""
    before = run_config(original, path)
    if "error" in before:
        raise AdapterError(
            f"{path} does not execute as it is ({before['error']}), so an edit cannot be "
            "checked; fix the file first"
        )
    after = run_config(edited, path)
    if "error" in after:
        raise AdapterError(f"{path} would no longer execute after tsfmd's edit: {after['error']}")
    new_names = set(after["names"]) - set(before["names"]) - {"models"}
    lost = set(before["names"]) - set(after["names"])
    if new_names or lost:
        raise AdapterError(f"editing {path} went wrong: names changed: {sorted(new_names | lost)}")
    for name, url in expected_urls.items():
        if after["urls"].get(name) != url:
            raise AdapterError(
                f"{path} after tsfmd's edit gives {name} the URL {after['urls'].get(name)}, "
                f"not {url}; is `models` something other than a dict?"
            )


def managed(text: str) -> Dict[str, str]:
    """algo name -> URL of the entries in tsfmd's block (read from the literal lines)."""
    lines = text.splitlines()
    inside = False
    found = {}
    for line in lines:
        if line == BEGIN:
            inside = True
        elif line == END:
            break
        elif inside and line.strip().startswith(repr(KEY_PREFIX)[:-1]):
            key, _, value = line.strip().rstrip(",").partition(": ")
            try:
                cfg = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                continue
            found[cfg.get("algo_name", "?")] = (
                f"http://{cfg.get('ip', DEFAULT_IP)}:{cfg.get('port')}{cfg.get('endpoint', '')}"
            )
    return found
