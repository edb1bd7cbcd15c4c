"""`tsfmd check`: a good registry passes with a summary; each kind of mistake fails and
names the file, the entry and the field. Runs the real command in a subprocess."""
import subprocess
import sys
from pathlib import Path

import pytest

from tsfmd.core.registry import RegistryError, parse_registry

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
server:
  host: 127.0.0.1
  port: 5001
models:
  fracast-fc:
    family: fracast
    source: bundled
    aliases: [/ds_predict]
  other-fc:
    family: fracast
    source: /srv/models/other
    enabled: false
"""


def check(tmp_path, text):
    path = tmp_path / "tsfmd.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "tsfmd", "check", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    return result, str(path)


def test_good_registry_passes_with_summary(tmp_path):
    result, path = check(tmp_path, GOOD)
    assert result.returncode == 0, result.stderr
    assert f"{path}: OK: listen 127.0.0.1:5001, 2 model(s), 1 enabled" in result.stdout
    assert "fracast-fc" in result.stdout and "routes=/fracast-fc,/ds_predict" in result.stdout


def test_shipped_default_registry_is_valid():
    result = subprocess.run(
        [sys.executable, "-m", "tsfmd", "check", "--config", str(REPO / "etc/tsfmd/tsfmd.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "fracast-fc" in result.stdout


BROKEN = {
    "unknown family": (
        GOOD.replace("family: fracast\n    source: bundled", "family: prophet\n    source: bundled"),
        "models.fracast-fc.family: unknown family 'prophet'",
    ),
    "duplicate key": (
        GOOD + "  fracast-fc:\n    family: fracast\n    source: bundled\n",
        "duplicate key 'fracast-fc'",
    ),
    "duplicate route": (
        GOOD + "  third-fc:\n    family: fracast\n    source: bundled\n    route: /ds_predict\n",
        "models.third-fc.route: route /ds_predict is already served by models.fracast-fc",
    ),
    "missing source": (
        GOOD.replace("    source: bundled\n", ""),
        "models.fracast-fc.source: missing",
    ),
    "bad port": (
        GOOD.replace("port: 5001", "port: 70000"),
        "server.port: must be between 1 and 65535, got 70000",
    ),
    "unknown field": (
        GOOD.replace("    aliases:", "    aliasses:"),
        "models.fracast-fc: unknown field 'aliasses'",
    ),
    "unknown server field": (
        GOOD.replace("  port: 5001", "  port: 5001\n  bind: 0.0.0.0"),
        "server: unknown field 'bind'",
    ),
    "reserved route": (
        GOOD.replace("[/ds_predict]", "[/healthz]"),
        "models.fracast-fc.aliases: /healthz is reserved",
    ),
    "bad device": (
        GOOD.replace("source: bundled", "source: bundled\n    device: tpu"),
        "models.fracast-fc.device: must be cpu, cuda, cuda:N or auto",
    ),
    "bad dtype": (
        GOOD.replace("source: bundled", "source: bundled\n    dtype: int4"),
        "models.fracast-fc.dtype: must be one of",
    ),
    "not yaml": ("server: [unclosed\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_registry_fails_naming_the_entry(tmp_path, case):
    text, expected = BROKEN[case]
    result, path = check(tmp_path, text)
    assert result.returncode != 0
    assert "is NOT valid" in result.stderr
    assert f"{path}: " in result.stderr
    assert expected in result.stderr, result.stderr


def test_every_problem_is_reported_at_once():
    text = GOOD.replace("port: 5001", "port: 0").replace("family: fracast", "family: nope", 1)
    with pytest.raises(RegistryError) as info:
        parse_registry(text, "reg.yaml")
    problems = info.value.problems
    assert any("server.port" in p for p in problems)
    assert any("models.fracast-fc.family" in p for p in problems)


def test_upper_case_key_warns_that_sql_cannot_reach_it():
    registry = parse_registry(GOOD.replace("other-fc:", "Other-FC:"), "reg.yaml")
    assert any("lower-cases algo names" in w and "'other-fc'" in w for w in registry.warnings)


def test_defaults_bind_to_loopback_on_port_5001():
    registry = parse_registry("models:\n  a:\n    family: fracast\n    source: bundled\n")
    assert registry.server.host == "127.0.0.1" and registry.server.port == 5001
    spec = registry.model("a")
    assert spec.route == "/a" and spec.enabled and spec.device == "auto"


# -- like `nginx -t`: what each enabled model's load needs, checked offline ---------------


def check_with_state(tmp_path, models: str):
    """`tsfmd check` on a registry of `models`, hub cache in an empty state dir of its own."""
    state = tmp_path / "state"
    path = tmp_path / "tsfmd.yaml"
    path.write_text("models:\n" + models)
    result = subprocess.run(
        [sys.executable, "-m", "tsfmd", "check", "--config", str(path), "--state-dir",
         str(state)], capture_output=True, text=True, timeout=120,
    )
    return result, str(path), state


def fracast_entry(key, source="bundled", extra=""):
    return f"  {key}:\n    family: fracast\n    source: {source}\n{extra}"


def test_check_names_a_model_whose_source_is_missing(tmp_path):
    result, path, _ = check_with_state(
        tmp_path, fracast_entry("good") + fracast_entry("lost", "/srv/nowhere/lost"))
    assert result.returncode == 1
    assert (f"error: {path}: models.lost would fail to load: weights not found at "
            "/srv/nowhere/lost: no such directory") in result.stderr
    assert "models.good" not in result.stderr
    assert (f"tsfmd check: {path}: 1 required model(s) would fail to load: lost"
            in result.stderr)
    assert f"{path}: valid, but models would not load: " in result.stdout


def test_check_names_missing_files_in_a_directory_that_exists(tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    result, path, _ = check_with_state(tmp_path, fracast_entry("partial", partial))
    assert result.returncode == 1
    assert f"models.partial would fail to load: weights not found at {partial}" in result.stderr
    assert "missing model.safetensors" in result.stderr


@pytest.mark.parametrize("options, expected", [
    ("{weights: int4}", "options.weights: must be one of fp32, w8, got 'int4'"),
    ("{wieghts: w8}", "options.wieghts: unknown option (this family takes: weights)"),
])
def test_check_names_a_bad_option(tmp_path, options, expected):
    result, path, _ = check_with_state(
        tmp_path, fracast_entry("opt", extra=f"    options: {options}\n"))
    assert result.returncode == 1
    assert f"error: {path}: models.opt would fail to load: {expected}" in result.stderr


def test_check_names_a_hub_id_not_in_the_cache_and_the_command_that_fetches_it(tmp_path):
    models = ("  moe:\n    family: time-moe\n    source: nobody/time-moe-tiny\n"
              "  spare:\n    family: time-moe\n    source: nobody/other\n    required: false\n")
    result, path, state = check_with_state(tmp_path, models)
    assert result.returncode == 1
    fetch = f"fetch them with: tsfmd pull nobody/time-moe-tiny --state-dir {state}"
    assert (f"error: {path}: models.moe would fail to load: weights not found for "
            f"nobody/time-moe-tiny: not in {state / 'hub'}") in result.stderr
    assert fetch in result.stderr
    # a model marked `required: false` is a warning, and alone it does not fail the check
    assert f"warning: {path}: models.spare (required: false) would fail to load" in result.stderr
    assert "1 required model(s) would fail to load: moe" in result.stderr


def test_check_finds_hub_ids_in_the_state_dirs_cache(tmp_path):
    from conftest import FIXTURES
    from hubcache import put_in_hub_cache

    models = ("  moe:\n    family: time-moe\n    source: nobody/time-moe-tiny\n"
              "  spare:\n    family: time-moe\n    source: nobody/other\n    required: false\n")
    put_in_hub_cache(tmp_path / "state" / "hub", "nobody/time-moe-tiny",
                     FIXTURES / "timemoe" / "tiny")
    result, path, _ = check_with_state(tmp_path, models)
    assert result.returncode == 0, result.stderr
    assert f"{path}: OK: listen 127.0.0.1:5001, 2 model(s), 2 enabled" in result.stdout
    assert "models.moe" not in result.stderr and "models.spare (required: false)" in result.stderr
