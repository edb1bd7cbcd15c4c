"""Environments (issue 16): the registry's `environments:` section, `tsfmd env build` /
`tsfmd env list`, and what `tsfmd check` says about them.

The builds are real: `python -m venv` and pip from the configured index (PyPI here, a
mirror or find-links in CI), into pytest's tmp dirs.
"""
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tsfmd.core.registry import RegistryError, parse_registry
from tsfmd.envs import EnvironmentSpec, env_problem, env_state, python_for

HEAD = """\
server:
  port: 5001
"""

ENVS = """\
environments:
  moirai:
    requirements: ["uni2ts==2.0.0", "numpy~=1.26.0"]
    pip_options: ["--find-links", "/srv/wheels"]
  moment:
    python: /usr/bin/python3.11
    requirements: ["momentfm==0.1.4"]
    path: /opt/envs/moment
"""

MODELS = """\
models:
  plain-fc:
    family: fracast
    source: bundled
  moirai-fc:
    family: fracast
    source: bundled
    environment: moirai
"""


def registry(text):
    return parse_registry(text, "tsfmd.yaml")


def problems_of(text):
    with pytest.raises(RegistryError) as caught:
        registry(text)
    return "\n".join(caught.value.problems)


# -- the registry part ------------------------------------------------------------------


def test_environments_resolve_into_frozen_specs_with_defaults():
    reg = registry(HEAD + ENVS + MODELS)
    moirai = reg.environment("moirai")
    assert moirai == EnvironmentSpec(
        name="moirai", python=sys.executable, requirements=("uni2ts==2.0.0", "numpy~=1.26.0"),
        pip_options=("--find-links", "/srv/wheels"), path=None)
    assert hash(moirai) == hash(replace(moirai))
    moment = reg.environment("moment")
    assert (moment.python, moment.path, moment.pip_options) == (
        "/usr/bin/python3.11", "/opt/envs/moment", ())
    assert reg.model("moirai-fc").environment is moirai
    assert reg.model("plain-fc").environment is None


def test_default_path_is_under_the_state_dir_and_python_for_names_its_interpreter(tmp_path):
    reg = registry(HEAD + ENVS + MODELS)
    assert python_for(reg.environment("moirai"), str(tmp_path)) == (
        tmp_path / "envs" / "moirai" / "bin" / "python")
    assert python_for(reg.environment("moment"), str(tmp_path)) == Path(
        "/opt/envs/moment/bin/python")
    assert env_state(reg.environment("moirai"), str(tmp_path)) == "missing"


def test_an_edited_environment_changes_the_load_identity_of_its_models():
    before = registry(HEAD + ENVS + MODELS)
    after = registry(HEAD + ENVS.replace("numpy~=1.26.0", "numpy~=1.26.4") + MODELS)
    assert before.model("moirai-fc").load_identity != after.model("moirai-fc").load_identity
    assert before.model("plain-fc").load_identity == after.model("plain-fc").load_identity
    same = registry(HEAD + ENVS + MODELS)
    assert before.model("moirai-fc").load_identity == same.model("moirai-fc").load_identity


BROKEN = {
    "undefined environment": (
        HEAD + MODELS,
        "tsfmd.yaml: models.moirai-fc.environment: unknown environment 'moirai' (defined under "
        "`environments:`: none)"),
    "misspelt environment": (
        HEAD + ENVS + MODELS.replace("environment: moirai", "environment: moira"),
        "models.moirai-fc.environment: unknown environment 'moira' (defined under "
        "`environments:`: moirai, moment)"),
    "unknown field": (
        HEAD + ENVS.replace("    path: /opt", "    paht: /opt") + MODELS,
        "tsfmd.yaml: environments.moment: unknown field 'paht' (known: path, pip_options, "
        "python, requirements)"),
    "missing requirements": (
        HEAD + "environments:\n  moirai:\n    python: /usr/bin/python3\n" + MODELS,
        "environments.moirai.requirements: missing"),
    "requirements not a list": (
        HEAD + ENVS.replace('["momentfm==0.1.4"]', '"momentfm==0.1.4"') + MODELS,
        "environments.moment.requirements: must be a list of non-empty strings"),
    "an option among the requirements": (
        HEAD + ENVS.replace('["momentfm==0.1.4"]', '["--no-index", "momentfm"]') + MODELS,
        "environments.moment.requirements: '--no-index' is a pip option: put it under "
        "pip_options"),
    "relative python": (
        HEAD + ENVS.replace("/usr/bin/python3.11", "python3.11") + MODELS,
        "environments.moment.python: must be an absolute path to an interpreter, got "
        "'python3.11'"),
    "relative path": (
        HEAD + ENVS.replace("/opt/envs/moment", "envs/moment") + MODELS,
        "environments.moment.path: must be an absolute path, got 'envs/moment'"),
    "bad name": (
        HEAD + ENVS.replace("  moment:", "  'mo ment':") + MODELS,
        "environments.mo ment: the name must be letters, digits"),
    "not a mapping": (
        HEAD + "environments: [moirai]\n" + MODELS,
        "tsfmd.yaml: environments: must be a mapping of name -> environment"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_environment_mistakes_name_file_entry_and_field(case):
    text, expected = BROKEN[case]
    assert expected in problems_of(text)


def test_a_broken_environment_is_reported_once_not_again_by_its_models():
    text = HEAD + "environments:\n  moirai: [uni2ts]\n" + MODELS
    found = problems_of(text)
    assert "environments.moirai: must be a mapping" in found
    assert "models.moirai-fc.environment" not in found


def run_tsfmd(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tsfmd", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_check_names_a_missing_environment_with_the_command_that_builds_it(tmp_path):
    config = tmp_path / "tsfmd.yaml"
    config.write_text(HEAD + ENVS + MODELS)
    state = tmp_path / "state"
    result = run_tsfmd("check", "--config", str(config), "--state-dir", str(state))
    assert result.returncode == 1, result.stdout
    assert (f"error: {config}: models.moirai-fc would fail to load: environment moirai is "
            f"missing: nothing is built at {state}/envs/moirai; build it with: tsfmd env build "
            f"moirai --config {config} --state-dir {state}") in result.stderr
    assert "moment" not in result.stderr  # defined, but no enabled model uses it
    assert "plain-fc would fail" not in result.stderr


def test_env_problem_is_none_only_when_ready(tmp_path):
    env = EnvironmentSpec("e", sys.executable, ("six==1.16.0",))
    assert env_problem(env, str(tmp_path)).startswith(
        f"environment e is missing: nothing is built at {tmp_path}/envs/e; build it with: ")
    gone = replace(env, python="/nonexistent/python3")
    assert env_state(gone, str(tmp_path)) == "missing"
    assert "its interpreter /nonexistent/python3 does not run here" in env_problem(
        gone, str(tmp_path))
