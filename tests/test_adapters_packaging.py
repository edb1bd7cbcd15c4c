"""`tsfmd adapters` from a built wheel installed where data files are not under sys.prefix.

The adapter template is package data of tsfmd.anode: this builds the wheel from a copy of
the sources (offline: no build isolation, no index), installs it with `--target` and with
`--prefix` into temp dirs, and runs `tsfmd adapters install --dry-run` from that copy
against a stand-in anode (tests/anode_standin/: TDgpt cannot be installed here). The
interpreter runs without site (-S), so the checkout's editable install cannot answer
instead; the wheel's dependencies come from this venv's site-packages on PYTHONPATH.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from anode_standin.lab import fracast_entry, make_anode, write_registry

ROOT = Path(__file__).resolve().parents[1]
RUN = r"""
import sys
import tsfmd
from tsfmd.cli import main
print("tsfmd from", tsfmd.__file__)
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "tsfmd", src / "tsfmd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(work / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = (work / "dist").glob("tsfmd-*.whl")
    return built


def pip_install(wheel_file: Path, *where: str) -> None:
    # --ignore-installed: otherwise a --prefix install first uninstalls this venv's tsfmd
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
         "-q", *where, str(wheel_file)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("layout", ["target", "prefix"])
def test_installed_wheel_finds_the_template(tmp_path, wheel, layout):
    venv_tsfmd = Path(sys.executable).parent / "tsfmd"
    had_script = venv_tsfmd.exists()
    if layout == "target":
        pip_install(wheel, "--target", str(tmp_path / "target"))
        site = tmp_path / "target"
    else:  # like --user: a tree of its own, nothing under sys.prefix/share
        pip_install(wheel, "--prefix", str(tmp_path / "prefix"))
        purelib = sysconfig.get_path("purelib", vars={"base": str(tmp_path / "prefix")})
        site = Path(purelib)
    assert (site / "tsfmd" / "anode" / "template" / "tdgpt_adapter.py").is_file()
    assert venv_tsfmd.exists() == had_script  # this venv's own tsfmd was left alone
    assert not (tmp_path / layout / "share").exists()  # no data_files any more

    anode, config = make_anode(tmp_path, "config.py")
    reg = write_registry(tmp_path / "tsfmd.yaml", 5079, fracast_entry("fracast-fc"))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(site), sysconfig.get_path("purelib")]))
    done = subprocess.run(
        [sys.executable, "-S", "-c", RUN, "adapters", "install", "--dry-run",
         "--anode-dir", str(anode), "--anode-config", str(config), "--config", str(reg)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"tsfmd from {site / 'tsfmd' / '__init__.py'}" in done.stdout
    assert "tsfmd_fracast_fc.py" in done.stdout and "algo=fracast-fc" in done.stdout
    assert "dry run: nothing was changed" in done.stdout
