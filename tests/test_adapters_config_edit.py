"""`tsfmd adapters install|uninstall|list` on copies of TDgpt's shipped config layouts.

The configs in tests/fixtures/anode/ recreate TDgpt's shipped taosanode.ini (ini era) and
taosanode.config.py (config.py era), comments included. The anode itself is a stand-in
(tests/anode_standin/): TDgpt cannot be installed from the package registries here.
No tsfmd needs to run for these tests: install only writes files.
"""
from __future__ import annotations

import configparser

import pytest

from anode_standin.lab import (
    adapters, configured_urls, fracast_entry, make_anode, without_models, write_registry,
)
from tsfmd.anode import pyconfig

PORT = 5077
MODELS = fracast_entry("fracast-fc") + fracast_entry("timemoe-fc")  # timemoe-fc is built in
URL = f"http://127.0.0.1:{PORT}"


def install(tmp_path, era, models=MODELS, host="127.0.0.1", port=PORT, *extra):
    anode, config = make_anode(tmp_path, era)
    reg = write_registry(tmp_path / "tsfmd.yaml", port, models, host)
    original = config.read_bytes()
    code, out, err = adapters("install", anode, config, reg, *extra)
    assert code == 0, err
    return anode, config, reg, original, out


def adapter_files(anode):
    return sorted(p.relative_to(anode) for p in (anode / "lib").rglob("tsfmd_*.py"))


# ---------------------------------------------------------------------------------------
# ini era


def test_ini_only_tsfm_service_changes_and_uninstall_restores_every_byte(tmp_path):
    anode, config, reg, original, out = install(tmp_path, "ini")
    edited = config.read_bytes()
    # everything before [tsfm-service] is byte for byte the same
    head = original[: original.index(b"[tsfm-service]")]
    assert edited.startswith(head)
    before, after = configparser.ConfigParser(), configparser.ConfigParser()
    before.read_string(original.decode())
    after.read_string(edited.decode())
    for section in ("uwsgi", "taosanode"):
        assert dict(before.items(section, raw=True)) == dict(after.items(section, raw=True))
    assert after.get("tsfm-service", "fracast-fc") == f"{URL}/fracast-fc"
    assert after.get("tsfm-service", "timemoe-fc") == f"{URL}/timemoe-fc"
    assert after.get("tsfm-service", "tdtsfm_1") == "http://127.0.0.1:5000/tdtsfm"
    assert "timemoe-fc: the anode ships it" in out and "pointed at tsfmd" in out
    assert "was http://127.0.0.1:5001/timemoe" in out
    # the built-in name gets no second class: only fracast-fc has a generated module
    assert adapter_files(anode) == [
        anode.relative_to(anode) / "lib/taosanalytics/algo/fc/tsfmd_fracast_fc.py"
    ]
    # the anode's own config reader sees tsfmd's URLs
    urls = configured_urls(anode, "ini", config, ["fracast-fc", "timemoe-fc", "tdtsfm_1"])
    assert urls == {"fracast-fc": f"{URL}/fracast-fc", "timemoe-fc": f"{URL}/timemoe-fc",
                    "tdtsfm_1": "http://127.0.0.1:5000/tdtsfm"}

    code, out, err = adapters("uninstall", anode, config)
    assert code == 0, err
    assert config.read_bytes() == original
    assert adapter_files(anode) == []


def test_ini_second_install_changes_nothing(tmp_path):
    anode, config, reg, _, _ = install(tmp_path, "ini")
    edited = config.read_bytes()
    module = anode / "lib/taosanalytics/algo/fc/tsfmd_fracast_fc.py"
    stamp = module.stat().st_mtime_ns
    code, out, _ = adapters("install", anode, config, reg)
    assert code == 0 and "already installed: nothing changed" in out
    assert config.read_bytes() == edited and module.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("variant", ["no-section", "no-final-newline", "crlf", "empty-section"])
def test_ini_variants_survive_install_and_uninstall(tmp_path, variant):
    anode, config = make_anode(tmp_path, "ini")
    text = config.read_bytes().decode()
    if variant == "no-section":
        text = text[: text.index("[tsfm-service]")]
    elif variant == "no-final-newline":
        text = text.rstrip("\n")
    elif variant == "crlf":
        text = text.replace("\n", "\r\n")
    elif variant == "empty-section":
        text = text[: text.index("[tsfm-service]")] + "[tsfm-service]"
    config.write_bytes(text.encode())
    reg = write_registry(tmp_path / "tsfmd.yaml", PORT, MODELS)
    code, _, err = adapters("install", anode, config, reg)
    assert code == 0, err
    parsed = configparser.ConfigParser()
    parsed.read_string(config.read_bytes().decode())
    assert parsed.get("tsfm-service", "fracast-fc") == f"{URL}/fracast-fc"
    assert parsed.get("tsfm-service", "timemoe-fc") == f"{URL}/timemoe-fc"
    assert adapters("install", anode, config, reg)[0] == 0  # idempotent here too
    code, _, err = adapters("uninstall", anode, config)
    assert code == 0, err
    assert config.read_bytes() == text.encode()


def test_ini_key_already_pointing_at_tsfmd_is_left_alone(tmp_path):
    anode, config = make_anode(tmp_path, "ini")
    text = config.read_text().replace("http://127.0.0.1:5001/timemoe", f"{URL}/timemoe-fc")
    config.write_text(text)
    reg = write_registry(tmp_path / "tsfmd.yaml", PORT, MODELS)
    code, out, _ = adapters("install", anode, config, reg)
    assert code == 0 and "keep [tsfm-service] timemoe-fc" in out
    assert adapters("uninstall", anode, config)[0] == 0
    assert config.read_text() == text


# ---------------------------------------------------------------------------------------
# config.py era


def test_config_py_block_appended_executes_and_restores(tmp_path):
    anode, config, reg, original, out = install(tmp_path, "config.py")
    edited = config.read_bytes()
    assert edited.startswith(original)  # nothing above the block changed
    block = edited[len(original):].decode()
    assert block.count("# >>> tsfmd adapters (begin)") == 1 and block.rstrip().endswith("(end)")
    # only the built-in name needs an entry, and it is a top-level name: `models` untouched
    assert f"    'timemoe-fc': '{URL}/timemoe-fc',\n" in block
    assert "fracast-fc" not in block
    code = [line for line in block.splitlines() if not line.startswith("#")]
    assert not any("models" in line for line in code)
    # config.py-era anodes use custom/fc for third-party adapters
    assert adapter_files(anode) == [
        anode.relative_to(anode) / "lib/taosanalytics/algo/custom/fc/tsfmd_fracast_fc.py"
    ]
    urls = configured_urls(anode, "config.py", config,
                           ["fracast-fc", "timemoe-fc", "tdtsfm_1", "timemoe_fc", "bind"])
    assert urls == {
        "fracast-fc": None,  # a generated adapter carries its own URL
        "timemoe-fc": f"{URL}/timemoe-fc",  # the built-in name now reaches tsfmd
        "tdtsfm_1": "http://127.0.0.1:6061/tdtsfm",  # TDgpt's own entries untouched
        "timemoe_fc": "http://127.0.0.1:6062/ds_predict",
        "bind": "0.0.0.0:6035",
    }
    code, out, _ = adapters("install", anode, config, reg)
    assert code == 0 and "nothing changed" in out and config.read_bytes() == edited
    assert adapters("uninstall", anode, config)[0] == 0
    assert config.read_bytes() == original and adapter_files(anode) == []


def test_config_py_without_models_gets_no_models(tmp_path):
    anode, config = make_anode(tmp_path, "config.py")
    text = without_models(config.read_text())
    config.write_text(text)
    reg = write_registry(tmp_path / "tsfmd.yaml", PORT, MODELS, host="0.0.0.0")
    code, _, err = adapters("install", anode, config, reg)
    assert code == 0, err
    seen = pyconfig.run_config(config.read_text(), str(config), ["timemoe-fc"])
    assert "models" not in seen["names"] and seen["models"] is None
    assert seen["urls"] == {"timemoe-fc": f"{URL}/timemoe-fc"}  # 0.0.0.0 is reached locally
    assert configured_urls(anode, "config.py", config, ["timemoe-fc"]) == seen["urls"]
    assert adapters("uninstall", anode, config)[0] == 0
    assert config.read_text() == text


def test_config_py_untouched_when_no_builtin_name_is_served(tmp_path):
    anode, config = make_anode(tmp_path, "config.py")
    original = config.read_bytes()
    reg = write_registry(tmp_path / "tsfmd.yaml", PORT, fracast_entry("fracast-fc"))
    code, out, err = adapters("install", anode, config, reg)
    assert code == 0, err
    assert config.read_bytes() == original and "config " not in out.replace("config /", "")
    assert len(adapter_files(anode)) == 1


@pytest.mark.parametrize("damage,message", [
    ("this is not python\n", "does not execute as it is"),
    ("models['mine'] = {'port': 7000, 'algo_name': 'timemoe-fc'}\n",
     "models['mine'] gives timemoe-fc its URL"),
    ("globals()['timemoe-fc'] = 'http://elsewhere/'\n", "already defines 'timemoe-fc'"),
])
def test_config_py_edit_that_cannot_be_made_cleanly_is_refused(tmp_path, damage, message):
    anode, config = make_anode(tmp_path, "config.py")
    config.write_text(config.read_text() + damage)
    before = config.read_bytes()
    reg = write_registry(tmp_path / "tsfmd.yaml", PORT, MODELS)
    code, _, err = adapters("install", anode, config, reg)
    assert code == 1 and message in err and str(config) in err
    assert config.read_bytes() == before and adapter_files(anode) == []


# ---------------------------------------------------------------------------------------
# both eras: registry changes, edited files, dry runs, list


@pytest.mark.parametrize("era", ["ini", "config.py"])
def test_registry_change_reinstalls_and_uninstall_still_restores(tmp_path, era):
    anode, config, reg, original, _ = install(tmp_path, era)
    write_registry(reg, PORT + 1, fracast_entry("fracast-fc") + fracast_entry("other-fc"))
    code, out, _ = adapters("list", anode, config, reg)
    assert code == 0 and "outdated" in out and "other-fc" in out and "not in line" in out
    code, out, err = adapters("install", anode, config, reg)
    assert code == 0, err
    assert "update" in out and "new" in out
    code, out, _ = adapters("list", anode, config, reg)
    assert "all in line with the registry" in out
    names = ["fracast-fc", "other-fc", "timemoe-fc"]
    urls = configured_urls(anode, era, config, names)
    for key in ("fracast-fc", "other-fc"):
        (module,) = (anode / "lib").rglob(f"tsfmd_{key.replace('-', '_')}.py")
        url = f"http://127.0.0.1:{PORT + 1}/{key}"
        assert f"TSFMD_URL = {url!r}" in module.read_text()
        # ini era: also in [tsfm-service]; config.py era: the adapter's own URL only
        assert urls[key] == (url if era == "ini" else None)
    assert urls["timemoe-fc"] != f"{URL}/timemoe-fc"  # no longer in the registry: restored
    assert adapters("uninstall", anode, config)[0] == 0
    assert config.read_bytes() == original and adapter_files(anode) == []


@pytest.mark.parametrize("era", ["ini", "config.py"])
def test_edited_adapter_is_never_overwritten_or_removed(tmp_path, era):
    anode, config, reg, _, _ = install(tmp_path, era)
    (module,) = (anode / "lib").rglob("tsfmd_fracast_fc.py")
    module.write_text(module.read_text() + "# my local fix\n")
    edited_config = config.read_bytes()
    code, _, err = adapters("uninstall", anode, config)
    assert code == 1 and str(module) in err and "edited" in err
    assert module.exists() and config.read_bytes() == edited_config
    write_registry(reg, PORT + 1, MODELS)
    code, _, err = adapters("install", anode, config, reg)
    assert code == 1 and str(module) in err
    assert module.read_text().endswith("# my local fix\n")
    code, out, _ = adapters("list", anode, config, reg)
    assert "EDITED" in out


@pytest.mark.parametrize("era", ["ini", "config.py"])
def test_dry_run_changes_nothing_and_ends_with_next_steps(tmp_path, era):
    anode, config = make_anode(tmp_path, era)
    before = config.read_bytes()
    reg = write_registry(tmp_path / "tsfmd.yaml", PORT, MODELS)
    code, out, _ = adapters("install", anode, config, reg, "--dry-run")
    assert code == 0
    assert "tsfmd_fracast_fc.py" in out and "timemoe-fc" in out
    assert "dry run: nothing was changed" in out
    assert config.read_bytes() == before and adapter_files(anode) == []
    last = out.strip().splitlines()[-3:]
    assert "restart" in last[0] and "update all anodes" in last[1] and "show anodes full" in last[2]
    code, out, _ = adapters("install", anode, config, reg)
    assert out.strip().splitlines()[-2].strip().endswith("update all anodes;")


def test_foreign_file_with_our_name_is_refused(tmp_path):
    anode, config = make_anode(tmp_path, "ini")
    squatter = anode / "lib/taosanalytics/algo/fc/tsfmd_fracast_fc.py"
    squatter.write_text("# someone else's adapter\n")
    reg = write_registry(tmp_path / "tsfmd.yaml", PORT, MODELS)
    code, _, err = adapters("install", anode, config, reg)
    assert code == 1 and "not written by tsfmd" in err
    assert squatter.read_text() == "# someone else's adapter\n"


@pytest.mark.parametrize("era", ["ini", "config.py"])
def test_disabling_every_model_takes_everything_back_out(tmp_path, era):
    anode, config, reg, original, _ = install(tmp_path, era)
    write_registry(reg, PORT, MODELS.replace("    device: cpu\n", "    device: cpu\n"
                                             "    enabled: false\n"))
    code, out, err = adapters("install", anode, config, reg)
    assert code == 0, err
    assert "remove" in out
    assert config.read_bytes() == original and adapter_files(anode) == []
