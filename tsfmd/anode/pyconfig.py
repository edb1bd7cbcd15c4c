"""Config.py-era anodes: one marked block at the end of taosanode.config.py.

Two readers execute that file. The anode's conf.py takes every top-level name as a setting,
and a setting named like an algo is that algo's service URL (`get_tsfm_service(name)`); it
then derives URLs from the `models` dict and lets them overwrite top-level names. TDgpt
3.4's service manager (taosanode_service.py) takes `models` as its table of model services
to start, or its own built-in table when the file has no `models`.

So tsfmd leaves `models` alone (never creates it, never adds to it): its block sets one
top-level name per algo name the anode ships and tsfmd now serves, with
`globals().update({...})` because names like `timemoe-fc` are not Python identifiers.
Generated adapters need no entry: they carry their own URL. The manager's table stays what
it was and holds nothing of tsfmd's to start. A name that `models` already gives a URL, or
that the file already defines, is refused: only changing the anode's own entry could point
it at tsfmd. `strip()` removes the block and the one line end written before it, giving
back the original bytes. Edits are checked by executing the new file in a separate process.
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
_OPEN = "globals().update({"


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


def block(entries: Dict[str, str], registry_path: str, eol: str) -> str:
    """entries: algo name -> tsfmd URL."""
    lines = [
        BEGIN,
        f"# Algo names the anode ships that tsfmd serves (registry {registry_path}). The anode",
        "# reads a top-level name as that algo's service URL; `models` (TDgpt's own model",
        "# services, which taosanode_service.py starts) is left exactly as it was.",
        _OPEN,
    ]
    lines += [f"    {name!r}: {url!r}," for name, url in entries.items()]
    lines += ["})", END]
    return eol.join(lines) + eol


def apply(original: str, entries: Dict[str, str], registry_path: str) -> Tuple[str, List[str]]:
    """`original` (free of tsfmd's block) with tsfmd's block appended; (text, what changed)."""
    if not entries:
        return original, []
    notes = [f"{name} = {url} (a top-level name; `models` untouched)"
             for name, url in entries.items()]
    eol = eol_of(original)
    return original + eol + block(entries, registry_path, eol), notes


# ---------------------------------------------------------------------------------------
# Checking: execute the file as the anode does, in a child process (a config file may do
# anything to the process that runs it), and compare what its readers get from it.

_PROBE = r"""
import json, sys
job = json.load(sys.stdin)
scope = {"__name__": "gunicorn_config", "__file__": job["path"], "__builtins__": __builtins__}
try:
    exec(compile(job["text"], job["path"], "exec"), scope)
except BaseException as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
settings = {k: v for k, v in scope.items() if not k.startswith("__") and not callable(v)}
derived = {}  # algo name -> models key, as conf.py derives URLs after the top-level names
view = dict(settings)
models = settings.get("models")
if isinstance(models, dict):
    for key, cfg in models.items():
        if isinstance(cfg, dict) and cfg.get("port"):
            name = cfg.get("algo_name", key)
            derived[name] = str(key)
            view[name] = "http://%s:%s%s" % (cfg.get("ip", "127.0.0.1"), cfg["port"],
                                               cfg.get("endpoint", "/ds_predict"))
try:
    models_seen = repr(models) if "models" in settings else None
except Exception as exc:
    models_seen = f"unrepresentable: {exc}"
urls = {name: view.get(name) if isinstance(view.get(name), str) else None
        for name in job["want"]}
print(json.dumps({"names": sorted(settings), "urls": urls, "derived": derived,
                  "models": models_seen}))
"""


def run_config(text: str, path: str, want: List[str]) -> dict:
    """What the file gives its readers: {'names': top-level names, 'urls': name -> URL as
    conf.py sees it (for `want`), 'derived': algo name -> `models` key, 'models': repr of
    `models` or None}, or {'error': why it does not execute}."""
    job = json.dumps({"text": text, "path": path, "want": want})
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _PROBE], input=job,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return {"error": "it did not finish executing within 60 s"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"the check failed: {done.stderr.strip()[-300:]}"}


def verify(original: str, edited: str, expected_urls: Dict[str, str], path: str) -> None:
    """The edited file executes, gives each name its tsfmd URL, adds only those names and
    leaves `models` (the service manager's table) as it was."""
    names = list(expected_urls)
    before = run_config(original, path, names)
    if "error" in before:
        raise AdapterError(
            f"{path} does not execute as it is ({before['error']}), so an edit cannot be "
            "checked; fix the file first"
        )
    for name in names:
        if name in before["derived"]:
            raise AdapterError(
                f"{path}: models[{before['derived'][name]!r}] gives {name} its URL, and the "
                f"anode applies `models` after top-level names; tsfmd does not change TDgpt's "
                f"own entries (the service manager starts them): point that entry at tsfmd "
                f"by hand, or serve the model under a key the anode does not ship"
            )
        if name in before["names"]:
            raise AdapterError(
                f"{path} already defines {name!r} itself; tsfmd does not change the anode's "
                "own settings: remove or change it by hand"
            )
    after = run_config(edited, path, names)
    if "error" in after:
        raise AdapterError(f"{path} would no longer execute after tsfmd's edit: {after['error']}")
    added, kept = set(after["names"]), set(before["names"])
    unexpected = sorted((added - kept - set(names)) | (kept - added))
    if unexpected or after["models"] != before["models"]:
        raise AdapterError(f"editing {path} went wrong: it would change "
                           f"{unexpected or 'models'} beyond tsfmd's names")
    for name, url in expected_urls.items():
        if after["urls"].get(name) != url:
            raise AdapterError(
                f"{path} after tsfmd's edit gives {name} the URL {after['urls'].get(name)}, "
                f"not {url}"
            )


def managed(text: str) -> Dict[str, str]:
    """algo name -> URL of the entries in tsfmd's block (read from its literal lines)."""
    inside = False
    found: Dict[str, str] = {}
    for line in text.splitlines():
        if line == BEGIN:
            inside = True
        elif line == END:
            break
        elif inside and line.startswith("    '") and line.endswith(","):
            try:
                entry = ast.literal_eval("{" + line.strip() + "}")
            except (ValueError, SyntaxError):
                continue
            found.update({k: v for k, v in entry.items() if isinstance(v, str)})
    return found
