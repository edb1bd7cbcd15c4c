"""`tsfmd adapters install` with an imputation model: TDgpt reaches MOMENT only through the
anode's own imputation adapter (`algo/imputat/moment.py`, algo name `moment`), so tsfmd
writes no adapter for it and points that one at tsfmd through the anode's config instead.

The anode is the stand-in of tests/anode_standin/ plus a stand-in of TDgpt's imputation
adapter (below): it asks the anode's config for its URL by its algo name, as TDgpt's does.
"""
from __future__ import annotations

import configparser

import pytest

from anode_standin.lab import adapters, configured_urls, fracast_entry, make_anode, \
    write_registry

PORT = 5078
URL = f"http://127.0.0.1:{PORT}"
MOMENT_ADAPTER = '''\
from taosanalytics.conf import conf


class _MomentImputationService:
    name = 'moment'

    def __init__(self):
        self.service_host = conf.get_tsfm_service(self.name)
'''
MODELS = fracast_entry("fracast-fc") + (
    "  moment:\n    family: moment\n    source: /srv/models/moment-1-small\n"
    "    route: /imputation\n"
    "  gapfill:\n    family: moment\n    source: /srv/models/moment-1-small\n")


@pytest.mark.parametrize("era", ["ini", "config.py"])
def test_the_anodes_moment_adapter_is_pointed_at_tsfmd(tmp_path, era):
    anode, config = make_anode(tmp_path, era)
    imputat = anode / "lib" / "taosanalytics" / "algo" / "imputat"
    imputat.mkdir(parents=True)
    (imputat / "__init__.py").write_text("")
    (imputat / "moment.py").write_text(MOMENT_ADAPTER)
    registry = write_registry(tmp_path / "tsfmd.yaml", PORT, MODELS)
    original = config.read_bytes()

    code, out, err = adapters("install", anode, config, registry)
    assert code == 0, err
    written = sorted(p.name for p in (anode / "lib").rglob("tsfmd_*.py"))
    assert written == ["tsfmd_fracast_fc.py"]  # no forecast adapter for an imputation model
    assert "moment: the anode ships it" in out
    assert "skipped   gapfill: it imputes" in out and "(moment)" in out
    urls = configured_urls(anode, era, config, ["moment", "gapfill"])
    assert urls["moment"] == f"{URL}/imputation"  # what the anode's moment adapter posts to
    assert urls["gapfill"] is None
    if era == "ini":
        parsed = configparser.ConfigParser()
        parsed.read_string(config.read_text())
        assert not parsed.has_option("tsfm-service", "gapfill")

    code, out, _ = adapters("list", anode, config, registry)
    assert code == 0 and "all in line with the registry" in out, out
    code, _, err = adapters("uninstall", anode, config)
    assert code == 0, err
    assert config.read_bytes() == original


def test_a_models_entry_for_moment_is_left_to_the_operator(tmp_path):
    # TDgpt 3.4's taosanode.config.py lists moment in `models` (port 6066): that entry gives
    # the URL, so install refuses and says to point the entry at tsfmd by hand
    anode, config = make_anode(tmp_path, "config.py")
    imputat = anode / "lib" / "taosanalytics" / "algo" / "imputat"
    imputat.mkdir(parents=True)
    (imputat / "moment.py").write_text(MOMENT_ADAPTER)
    text = config.read_text().replace('models = {\n', 'models = {\n    "moment": {"script": '
                                      '"moment-server.py", "port": 6066, "endpoint": '
                                      '"/imputation", "required": False},\n', 1)
    config.write_text(text)
    registry = write_registry(tmp_path / "tsfmd.yaml", PORT, MODELS)
    code, _, err = adapters("install", anode, config, registry)
    assert code != 0
    assert "models['moment'] gives moment its URL" in err and "point that entry" in err
    assert config.read_text() == text
