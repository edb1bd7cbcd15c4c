"""`tsfmd adapters install` and TDgpt 3.4's service manager, which reads the same config.py.

The manager (script/taosanode_service.py) takes `models` of taosanode.config.py as its table
of model services to start, or its built-in table of six when the file has none. TDgpt
cannot be installed from the package registries here, so the manager is the stand-in in
tests/anode_standin/service_manager.py (modelled on the manager's public code), run as a
subprocess on a copy of TDgpt's shipped config inside a temp install dir.
No tsfmd needs to run: install only writes files.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anode_standin.lab import (
    FIXTURES, HERE, adapters, configured_urls, fracast_entry, make_anode, without_models,
    write_registry,
)
from anode_standin.service_manager import DEFAULT_MODEL_ORDER, builtin_models

PORT = 5078
MODELS = fracast_entry("fracast-fc") + fracast_entry("timemoe-fc")  # timemoe-fc is built in
TSFMD_KEYS = ["tsfmd:timemoe-fc", "tsfmd:fracast-fc", "timemoe-fc", "fracast-fc"]
#: the block tsfmd appended before this fix (it created `models` when the file had none)
OLD_BLOCK = """
# >>> tsfmd adapters (begin): appended by `tsfmd adapters install`; `tsfmd adapters uninstall` removes this block
if "models" not in globals():
    models = {}
models.update({
    'tsfmd:fracast-fc': {'port': 5078, 'endpoint': '/fracast-fc', 'algo_name': 'fracast-fc', 'ip': '127.0.0.1', 'required': False},
    'tsfmd:timemoe-fc': {'port': 5078, 'endpoint': '/timemoe-fc', 'algo_name': 'timemoe-fc', 'ip': '127.0.0.1', 'required': False},
})
# <<< tsfmd adapters (end)
"""  # noqa: E501 - verbatim


def install_dir(root: Path, with_models: bool) -> Path:
    """An anode install dir the manager can act on: cfg/, model dirs, venvs and scripts.

    Every model directory exists, tsfmd's keys included, so nothing is skipped for lack of
    one: a tsfmd key the manager took for its own would be started (or crash)."""
    top = root / "taosanode"
    config = top / "cfg" / "taosanode.config.py"
    config.parent.mkdir(parents=True)
    text = (FIXTURES / "taosanode.config.py").read_text()
    config.write_text(text if with_models else without_models(text))
    for name in DEFAULT_MODEL_ORDER + TSFMD_KEYS:
        (top / "model" / name).mkdir(parents=True)
    for venv in ("venv", "chronos_venv", "timesfm_venv", "moirai_venv", "momentfm_venv"):
        python = top / "venvs" / venv / "bin" / "python3"
        python.parent.mkdir(parents=True)
        python.write_text("")
    scripts = top / "lib" / "taosanalytics" / "tsfmservice"
    scripts.mkdir(parents=True)
    for entry in builtin_models().values():
        (scripts / entry["script"]).write_text("")
    return top


def manager(top: Path, *argv: str):
    """Run the stand-in manager on `top`'s config; (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    # the shipped config derives its paths from where it lives only on Windows or in CI;
    # elsewhere they are /usr/local/taos/...: CI mode keeps them inside the temp dir
    env["GITHUB_ACTIONS"] = "1"
    done = subprocess.run(
        [sys.executable, str(HERE / "service_manager.py"),
         "-c", str(top / "cfg" / "taosanode.config.py"), *argv],
        capture_output=True, text=True, timeout=120, env=env,
    )
    return done.returncode, done.stdout, done.stderr


def manager_view(top: Path) -> dict:
    """Everything the manager shows or would start, byte for byte."""
    return {
        "status": manager(top, "model-status"),
        "start all": manager(top, "model-start", "all"),
        "start timemoe": manager(top, "model-start", "timemoe"),
    }


def rows(status_out: str):
    return [line.split()[0] for line in status_out.splitlines()[3:-1]]


@pytest.mark.parametrize("with_models", [False, True], ids=["no-models", "shipped-models"])
def test_install_leaves_the_manager_table_as_it_was(tmp_path, with_models):
    top = install_dir(tmp_path, with_models)
    config = top / "cfg" / "taosanode.config.py"
    original = config.read_bytes()
    before = manager_view(top)
    expected = ["tdtsfm", "timemoe", "chronos"] if with_models else DEFAULT_MODEL_ORDER
    assert rows(before["status"][1]) == expected
    assert before["start all"][0] == 0 and "Started: " + ", ".join(expected) in before[
        "start all"][1]

    anode, _ = make_anode(tmp_path, "config.py")
    reg = write_registry(tmp_path / "tsfmd.yaml", PORT, MODELS)
    code, out, err = adapters("install", anode, config, reg)
    assert code == 0, err
    assert config.read_bytes() != original  # timemoe-fc (built in) now points at tsfmd
    assert manager_view(top) == before
    if not with_models:
        assert "models" not in config.read_text().replace("`models`", "")
    urls = configured_urls(anode, "config.py", config, ["timemoe-fc", "timemoe_fc", "tdtsfm_1"])
    assert urls["timemoe-fc"] == f"http://127.0.0.1:{PORT}/timemoe-fc"
    if with_models:  # TDgpt's own entries keep their URLs
        assert urls["timemoe_fc"] == "http://127.0.0.1:6062/ds_predict"
        assert urls["tdtsfm_1"] == "http://127.0.0.1:6061/tdtsfm"

    for key in TSFMD_KEYS:  # each has a model directory, none is a service of the manager
        code, out, err = manager(top, "model-start", key)
        assert code == 1 and f"Unknown model: {key}" in out, (out, err)
        assert "Traceback" not in err

    assert adapters("uninstall", anode, config)[0] == 0
    assert config.read_bytes() == original


def test_the_old_block_broke_the_manager_and_install_replaces_it(tmp_path):
    """The stand-in reproduces what was reported, and an upgrade's install repairs it."""
    top = install_dir(tmp_path, with_models=False)
    config = top / "cfg" / "taosanode.config.py"
    pristine = manager_view(top)
    original = config.read_text()
    config.write_text(original + OLD_BLOCK)
    code, out, _ = manager(top, "model-status")
    assert code == 0 and rows(out) == []  # the six built-in services are gone
    code, out, _ = manager(top, "model-start", "all")
    assert "Started: none" in out
    code, _, err = manager(top, "model-start", "tsfmd:timemoe-fc")
    assert code == 1 and "KeyError: 'script'" in err

    anode, _ = make_anode(tmp_path, "config.py")
    reg = write_registry(tmp_path / "tsfmd.yaml", PORT, MODELS)
    code, _, err = adapters("install", anode, config, reg)
    assert code == 0, err
    assert "tsfmd:" not in config.read_text()
    assert manager_view(top) == pristine
    assert adapters("uninstall", anode, config)[0] == 0
    assert config.read_text() == original
