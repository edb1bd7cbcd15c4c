"""Helpers for the adapter tests: a copy of a stand-in anode, the CLI, taosd-like requests.

TDgpt cannot be installed from the package registries reachable here, so the anode is a
stand-in written for these tests (see README.md next to this file).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

HERE = Path(__file__).parent
FIXTURES = HERE.parent / "fixtures" / "anode"
ERAS = {"ini": "ini_era", "config.py": "config_era"}


def make_anode(root: Path, era: str) -> Tuple[Path, Path]:
    """A fresh anode install dir for `era` ('ini' or 'config.py') and a copy of its config.

    Returns (anode_dir, config_path). The config copy lives in root/etc/.
    """
    anode = root / f"anode-{ERAS[era]}"
    shutil.copytree(HERE / ERAS[era] / "taosanalytics", anode / "lib" / "taosanalytics",
                    ignore=shutil.ignore_patterns("__pycache__"))
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    name = "taosanode.ini" if era == "ini" else "taosanode.config.py"
    config = etc / name
    shutil.copyfile(FIXTURES / name, config)
    return anode, config


def without_models(text: str) -> str:
    """A taosanode.config.py text without its `models = {...}` assignment."""
    start = text.index("models = {")
    end = text.index("\n}\n", start) + 3
    return text[:start] + text[end:]


def anode_log(config: Path) -> Path:
    """The stand-in anode's log file (the real one writes /var/log/taos/taosanode/)."""
    return config.parent / "taosanode.app.log"


def anode_env(era: str, config: Path) -> dict:
    """The environment that makes the stand-in read `config` (the real one reads /etc/taos)."""
    env = dict(os.environ)
    env.pop("TDGPT_CONF", None)
    env.pop("TSFMD_STANDIN_ANODE_CONF", None)
    env["TDGPT_CONF" if era == "config.py" else "TSFMD_STANDIN_ANODE_CONF"] = str(config)
    env["TSFMD_STANDIN_ANODE_LOG"] = str(anode_log(config))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_anode(anode: Path, era: str, config: Path, job: Optional[dict] = None) -> dict:
    """Start the stand-in anode in a fresh process and run `job` (see run_anode.py)."""
    done = subprocess.run(
        [sys.executable, str(HERE / "run_anode.py"), str(anode / "lib")],
        input=json.dumps(job or {}), capture_output=True, text=True, timeout=300,
        env=anode_env(era, config),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines, f"the stand-in anode printed nothing; stderr: {done.stderr[-3000:]}"
    return json.loads(lines[-1])


def tsfmd_cli(*argv: str) -> Tuple[int, str, str]:
    """Run `tsfmd ARGS` in this process; (exit code, stdout, stderr)."""
    from tsfmd.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def adapters(action: str, anode: Path, config: Path, registry: Optional[Path] = None,
             *extra: str) -> Tuple[int, str, str]:
    argv = ["adapters", action, "--anode-dir", str(anode), "--anode-config", str(config)]
    if registry is not None:
        argv += ["--config", str(registry)]
    return tsfmd_cli(*argv, *extra)


def write_registry(path: Path, port: int, models: str, host: str = "127.0.0.1") -> Path:
    path.write_text(f"server:\n  host: {host}\n  port: {port}\nmodels:\n{models}")
    return path


def fracast_entry(key: str, extra: str = "") -> str:
    return f"  {key}:\n    family: fracast\n    source: bundled\n    device: cpu\n{extra}"


def series(n: int = 64) -> Tuple[List[int], List[float]]:
    """A seasonal series with a trend (not white noise), as taosd would send it."""
    ts = [1_700_000_000_000 + i * 1000 for i in range(n)]
    values = [10.0 + 0.05 * i + 3.0 * ((i % 12) / 12.0) for i in range(n)]
    return ts, values


def taosd_forecast(algo: str, return_conf: int, rows: int = 12, option_extra: str = "",
                   conf: float = 0.95, n: int = 64, covariate: bool = False) -> dict:
    """The body taosd POSTs to the anode's /forecast for SELECT FORECAST(val, '<option>')."""
    ts, values = series(n)
    option = f"algo={algo},rows={rows}" + (f",{option_extra}" if option_extra else "")
    schema = [["ts", "TIMESTAMP", 8], ["val", "DOUBLE", 8]]
    data = [ts, values]
    body = {
        "schema": schema, "data": data, "option": option, "algo": algo, "prec": "ms",
        "wncheck": 0, "return_conf": return_conf, "forecast_rows": rows, "conf": conf,
        "start": ts[-1] + 1000, "every": 1000, "rows": n, "protocol": 1.0,
    }
    if covariate:
        schema.append(["past_dynamic_real_1", "DOUBLE", 8])
        data.append([float(i % 5) for i in range(n)])
        body["type"] = "covariate"
    return body


def direct(algo: str, rows: int = 12, return_conf: int = 1, n: int = 64, extra=None) -> dict:
    """execute() with the fields the anode sets, bypassing the REST layer."""
    ts, values = series(n)
    params = {"rows": rows, "start_ts": ts[-1] + 1000, "time_step": 1000, "conf": 0.9,
              "return_conf": return_conf, "precision": "ms"}
    params.update(extra or {})
    return {"algo": algo, "fields": [values, ts, None, None], "params": params}


_URLS = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from taosanalytics import conf
names = json.loads(sys.argv[2])
if hasattr(conf.Configure, "get_instance"):
    get = conf.Configure.get_instance().get_tsfm_service
else:
    get = conf.conf.get_tsfm_service
print(json.dumps({name: get(name) for name in names}))
"""


def configured_urls(anode: Path, era: str, config: Path, names: List[str]) -> dict:
    """name -> URL as the stand-in's own config reader gives it (get_tsfm_service)."""
    done = subprocess.run(
        [sys.executable, "-c", _URLS, str(anode / "lib"), json.dumps(names)],
        capture_output=True, text=True, timeout=120, env=anode_env(era, config),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
