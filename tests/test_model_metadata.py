"""/v1/models gives each model's weights licence, parameter count and bytes of weights.

The licence comes from the checkpoint's model card (README.md front matter) or its
config.json, else the family's declared licence, else "unknown"; counts come from the
safetensors headers. The expected numbers here are computed another way: with the
safetensors library itself, the file sizes on disk and the installed wheel's metadata.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import shutil
from pathlib import Path

import fracast
import pytest
from safetensors import safe_open

from conftest import FIXTURES
from tsfmd.families.metadata import safetensors_parameters, weights_info

FRACAST_WEIGHTS = Path(fracast.__file__).parent / "weights"


def counted_by_safetensors(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


def models_by_key(server) -> dict:
    reply = server.get("/v1/models")
    assert reply.status_code == 200
    return {m["key"]: m for m in reply.json()["models"]}


def timemoe_copy(directory: Path, card: str = None, config_license: str = None) -> Path:
    shutil.copytree(FIXTURES / "timemoe" / "tiny", directory)
    if card is not None:
        (directory / "README.md").write_text(card)
    if config_license is not None:
        config = json.loads((directory / "config.json").read_text())
        config["license"] = config_license
        (directory / "config.json").write_text(json.dumps(config))
    return directory


def entry(key: str, family: str, source, extra: str = "") -> str:
    return (f"  {key}:\n    family: {family}\n    source: {source}\n    route: /{key}\n"
            f"    device: cpu\n{extra}")


def test_fracast_shows_its_wheels_licence_and_the_weights_it_loads(tsfmd_server):
    server = tsfmd_server(entry("fc", "fracast", "bundled")
                          + entry("fc-w8", "fracast", "bundled", "    options: {weights: w8}\n"))
    models = models_by_key(server)
    wheel_licence = importlib.metadata.metadata("fracast")["License-Expression"]
    fp32, w8 = FRACAST_WEIGHTS / "model.safetensors", FRACAST_WEIGHTS / "model.int8.safetensors"
    assert models["fc"]["license"] == wheel_licence == "Apache-2.0"
    assert models["fc"]["parameters"] == counted_by_safetensors(fp32) > 0
    assert models["fc"]["weights_bytes"] == fp32.stat().st_size
    assert models["fc-w8"]["weights_bytes"] == w8.stat().st_size < fp32.stat().st_size
    assert models["fc-w8"]["parameters"] == counted_by_safetensors(w8)


def test_a_model_cards_licence_wins_and_counts_come_from_the_checkpoint(
        tsfmd_server, tmp_path):
    carded = timemoe_copy(tmp_path / "carded",
                          card="---\nlicense: cc-by-nc-4.0\nlibrary_name: x\n---\n# tiny\n")
    configured = timemoe_copy(tmp_path / "configured", card="# no front matter\n",
                              config_license="other")
    plain = timemoe_copy(tmp_path / "plain")
    server = tsfmd_server(entry("carded", "time-moe", carded, "    dtype: float32\n")
                          + entry("configured", "time-moe", configured, "    dtype: float32\n")
                          + entry("plain", "time-moe", plain, "    dtype: float32\n"))
    models = models_by_key(server)
    weights = carded / "model.safetensors"
    assert models["carded"]["license"] == "cc-by-nc-4.0"
    assert models["configured"]["license"] == "other"
    assert models["plain"]["license"] == "apache-2.0"  # Time-MoE's declared licence
    for key in ("carded", "configured", "plain"):
        assert models[key]["parameters"] == counted_by_safetensors(weights) > 0
        assert models[key]["weights_bytes"] == weights.stat().st_size
    loaded = server.daemon.models.table.handles["plain"].model.model
    assert models["plain"]["parameters"] == sum(p.numel() for p in loaded.parameters())


def test_a_model_that_did_not_load_shows_its_familys_licence_and_no_counts(
        tsfmd_server, tmp_path):
    server = tsfmd_server(entry("fc", "fracast", "bundled")
                          + entry("gone", "time-moe", tmp_path / "missing",
                                  "    required: false\n"))
    gone = models_by_key(server)["gone"]
    assert gone["status"] == "failed"
    assert (gone["license"], gone["parameters"], gone["weights_bytes"]) == \
        ("apache-2.0", None, None)


def test_unknown_licence_and_a_truncated_file(tmp_path):
    directory = timemoe_copy(tmp_path / "ckpt")
    assert weights_info(directory, None).license == "unknown"
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert safetensors_parameters(weights) is None
    info = weights_info(directory, None)
    assert info.parameters is None and info.weights_bytes == weights.stat().st_size


@pytest.mark.parametrize("header", [b"", b"\xff" * 8, b"\x04\x00\x00\x00\x00\x00\x00\x00[1]!"])
def test_headers_that_are_not_safetensors_count_nothing(tmp_path, header):
    path = tmp_path / "model.safetensors"
    path.write_bytes(header)
    assert safetensors_parameters(path) is None
