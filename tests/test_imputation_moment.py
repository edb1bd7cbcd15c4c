"""MOMENT in its own environment: a tiny random checkpoint made with momentfm's own classes,
loaded through tsfmd's moment family (a local directory, then a hub id from the cache), and
the family's imputation checked against momentfm's own model call on the same series.

The environment (tests/envs/moment.txt: momentfm 0.1.4, transformers 4.33.3, numpy 1.25.2)
cannot share tsfmd's, so it is built with tsfmd's own builder (tests/envcache.py: once per
spec into $TSFMD_TEST_ENVS; a failed build fails the test, never a skip) and the checks run
in its python (tests/moment_env_probe.py) with only tsfmd's package on its path, as a
worker's; this file, in tsfmd's environment, asserts on the numbers it prints.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from envcache import spec_env, tsfmd_only_path
from hubcache import put_in_hub_cache
from tsfmd.envs import python_for

TESTS = Path(__file__).parent
PROBE = TESTS / "moment_env_probe.py"
HUB_ID = "AutonLab/MOMENT-1-small"


def moment_env():
    """The moment environment's EnvironmentSpec, built now unless up to date."""
    return spec_env("moment")


def family_path(directory: Path) -> str:
    """A directory holding only a `tsfmd` link, as a worker's PYTHONPATH does."""
    return str(tsfmd_only_path(directory))


def probe(python: Path, tmp: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=family_path(tmp / "path"), HF_HUB_OFFLINE="1",
               PYTHONWARNINGS="ignore")
    done = subprocess.run([str(python), str(PROBE), *args], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    python = python_for(moment_env(), None)
    tmp = tmp_path_factory.mktemp("moment")
    probe(python, tmp, "build", str(tmp / "ckpt"))
    assert (tmp / "ckpt" / "config.json").exists()
    return python, tmp


def results(checkpoint, *source) -> dict:
    python, tmp = checkpoint
    return json.loads(probe(python, tmp, "compare", *source).strip().splitlines()[-1])


def check_imputation(out: dict) -> None:
    for i, raw in enumerate(out["series"]):
        given = np.array([np.nan if v is None else v for v in raw])
        observed = ~np.isnan(given)
        filled = np.array(out["family"][i])
        assert filled.shape == given.shape and np.isfinite(filled).all()
        assert np.array_equal(filled[observed], given[observed])  # exactly as sent
        reference = np.array(out["reference"][i])
        # the family scales in float64 before MOMENT's float32 and back; momentfm's own
        # call gets the raw values: equal within float32 rounding at the series' scale
        # (measured: 9e-4 at values ~120, a gap spread of 14 to 36)
        atol = 2e-5 * np.abs(given[observed]).max()
        assert np.allclose(filled, reference, rtol=0, atol=atol), \
            np.abs(filled - reference).max()
        # the model's own numbers, not a copy of the neighbours: gaps differ from a line
        line = np.interp(np.flatnonzero(~observed), np.flatnonzero(observed), given[observed])
        assert np.abs(filled[~observed] - line).max() > 1e-2
        assert np.array_equal(filled, np.array(out["again"][i]))  # deterministic
        assert np.allclose(filled, np.array(out["alone"][i]), rtol=0, atol=1e-4)


def test_local_checkpoint_imputes_as_momentfm_does(checkpoint):
    out = results(checkpoint, str(checkpoint[1] / "ckpt"))
    assert out["caps"] == {"tasks": ["impute"], "context_limit": 512}
    assert out["numpy"] == "1.25.2"  # the env's own pins, not tsfmd's
    assert out["modules"] == []  # the family side needs none of the daemon's libraries
    check_imputation(out)
    print(f"moment: load {out['load_s']:.2f}s, impute {out['points']} points "
          f"{out['impute_s'] * 1000:.0f} ms")


def test_hub_id_loads_from_the_cache_offline(checkpoint):
    python, tmp = checkpoint
    state = tmp / "state"
    put_in_hub_cache(state / "hub", HUB_ID, tmp / "ckpt")
    check_imputation(results(checkpoint, HUB_ID, str(state)))


def test_family_imports_without_its_library():
    # tsfmd's own environment has no momentfm: the parent can still check an entry
    from tsfmd.families import get_family
    from tsfmd.families.base import LoadSpec, ModelLoadError

    family = get_family("moment")
    assert family.check_options({}) == []
    with pytest.raises(ModelLoadError, match="weights not found"):
        family.check_source(LoadSpec(key="m", source="/nonexistent/moment"))


def test_load_without_momentfm_says_which_environment_it_needs(tmp_path):
    from tsfmd.families import get_family
    from tsfmd.families.base import LoadSpec, ModelLoadError

    source = tmp_path / "m"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(
        {"t5_config": {"d_model": 32}, "patch_len": 8, "seq_len": 512}))
    (source / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="momentfm is not installed .*environment:"):
        get_family("moment").load(LoadSpec(key="m", source=str(source)))
    (source / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelLoadError, match="is not a MOMENT checkpoint"):
        get_family("moment").check_source(LoadSpec(key="m", source=str(source)))
