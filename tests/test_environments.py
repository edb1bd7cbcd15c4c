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


def edited(old, new):
    """The good registry with one edit in its `environments:` section."""
    return HEAD + ENVS.replace(old, new) + MODELS


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
        edited("    path: /opt", "    paht: /opt"),
        "tsfmd.yaml: environments.moment: unknown field 'paht' (known: path, pip_options, "
        "python, requirements)"),
    "missing requirements": (
        HEAD + "environments:\n  moirai:\n    python: /usr/bin/python3\n" + MODELS,
        "environments.moirai.requirements: missing"),
    "requirements not a list": (
        edited('["momentfm==0.1.4"]', '"momentfm==0.1.4"'),
        "environments.moment.requirements: must be a list of non-empty strings"),
    "an option among the requirements": (
        edited('["momentfm==0.1.4"]', '["--no-index", "momentfm"]'),
        "environments.moment.requirements: '--no-index' is a pip option: put it under "
        "pip_options"),
    "relative python": (
        edited("/usr/bin/python3.11", "python3.11"),
        "environments.moment.python: must be an absolute path to an interpreter, got "
        "'python3.11'"),
    "relative path": (
        edited("/opt/envs/moment", "envs/moment"),
        "environments.moment.path: must be an absolute path, got 'envs/moment'"),
    "bad name": (
        edited("  moment:", "  'mo ment':"),
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


# -- real builds --------------------------------------------------------------------------


def env_registry(tmp_path, environments, models=""):
    """A registry file whose state dir is tmp_path/state; returns (config, state dir)."""
    state = tmp_path / "state"
    config = tmp_path / "tsfmd.yaml"
    config.write_text(f"server:\n  state_dir: {state}\nenvironments:\n{environments}"
                      f"models:\n  plain-fc:\n    family: fracast\n    source: bundled\n"
                      f"{models}")
    return config, state


SIX = "  six:\n    requirements: [six==1.16.0]\n"
SIX_MODEL = "  six-fc:\n    family: fracast\n    source: bundled\n    environment: six\n"


def in_env(python, code):
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_build_list_rebuild_on_edit_and_up_to_date_without_pip(tmp_path):
    config, state = env_registry(tmp_path, SIX, SIX_MODEL)
    env = registry(config.read_text()).environment("six")
    built = run_tsfmd("env", "build", "--config", str(config))
    assert built.returncode == 0, built.stderr
    assert "Successfully installed six-1.16.0" in built.stdout  # pip's own output streams
    assert "tsfmd env build: environment six: ready at" in built.stdout
    assert env_state(env, str(state)) == "ready"
    first = python_for(env, str(state))
    assert in_env(first, "import six, sys; print(six.__version__, sys.prefix)") == (
        f"1.16.0 {first.parent.parent}")

    listed = run_tsfmd("env", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "STATE", "PYTHON", "REQS", "PATH", "MODELS"]
    version = "%d.%d.%d" % sys.version_info[:3]
    assert row.split() == ["six", "ready", version, "1", f"{state}/envs/six", "six-fc"]

    # a second build must not run pip: without pip in the env it would fail
    site = Path(in_env(first, "import pip, os; print(os.path.dirname(pip.__path__[0]))"))
    for item in site.glob("pip*"):
        subprocess.run(["rm", "-rf", str(item)], check=True)
    again = run_tsfmd("env", "build", "six", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        f"tsfmd env build: environment six: up to date ({state}/envs/six)")

    config.write_text(config.read_text().replace("six==1.16.0", "six==1.15.0"))
    edited = registry(config.read_text()).environment("six")
    assert env_state(edited, str(state)) == "stale"
    checked = run_tsfmd("check", "--config", str(config))
    assert checked.returncode == 1
    assert (f"models.six-fc would fail to load: environment six is stale: {state}/envs/six "
            "was built for another spec (changed: requirements); build it with: tsfmd env "
            f"build six --config {config} --state-dir {state}") in checked.stderr
    assert "  env      six" in checked.stdout and " stale " in checked.stdout

    rebuilt = run_tsfmd("env", "build", "--config", str(config))
    assert rebuilt.returncode == 0, rebuilt.stderr
    second = python_for(edited, str(state))
    assert second != first and not first.parent.parent.exists()  # swapped, old one removed
    assert in_env(second, "import six; print(six.__version__)") == "1.15.0"
    assert run_tsfmd("check", "--config", str(config)).returncode == 0


def test_a_rebuild_keeps_the_build_a_running_worker_uses(tmp_path):
    config, state = env_registry(tmp_path, SIX)
    assert run_tsfmd("env", "build", "--config", str(config)).returncode == 0
    old = python_for(registry(config.read_text()).environment("six"), str(state))
    # stands in for a worker: started the way the runner starts one, from python_for's path
    worker = subprocess.Popen([str(old), "-c", "import sys; sys.stdin.read(); import six; "
                               "print(six.__version__)"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        config.write_text(config.read_text().replace("six==1.16.0", "six==1.15.0"))
        rebuilt = run_tsfmd("env", "build", "--config", str(config))
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert f"kept the previous build {old.parent.parent}: process(es) {worker.pid}" in (
            rebuilt.stdout)
        out, _ = worker.communicate("", timeout=60)  # imports from its own build, after the swap
        assert (worker.returncode, out.strip()) == (0, "1.16.0")
    finally:
        worker.kill()
    assert old.parent.parent.exists()
    later = run_tsfmd("env", "build", "--config", str(config))
    assert "up to date" in later.stdout
    assert not old.parent.parent.exists()  # nobody runs from it any more


def test_an_env_whose_pin_clashes_with_the_daemons(tmp_path):
    import numpy

    assert numpy.__version__.startswith("2.")
    config, state = env_registry(tmp_path, "  old-numpy:\n    requirements: [numpy==1.25.2]\n")
    built = run_tsfmd("env", "build", "old-numpy", "--config", str(config), timeout=600)
    assert built.returncode == 0, built.stderr
    python = python_for(registry(config.read_text()).environment("old-numpy"), str(state))
    assert in_env(python, "import numpy; print(numpy.__version__)") == "1.25.2"
    # its own site-packages only: none of the daemon's libraries leak in
    assert in_env(python, "import importlib.util as u; print(u.find_spec('torch'), "
                  "u.find_spec('flask'))") == "None None"


def test_a_failed_build_is_never_ready_and_leaves_no_half_build(tmp_path):
    config, state = env_registry(tmp_path, "  broken:\n    requirements: "
                                 "[tsfmd-no-such-package==0.0.0]\n    pip_options: "
                                 "[--no-index]\n")
    env = registry(config.read_text()).environment("broken")
    failed = run_tsfmd("env", "build", "--config", str(config))
    assert failed.returncode == 1
    assert "tsfmd env build: FAILED: environment broken: " in failed.stderr
    assert "exited with 1" in failed.stderr
    assert env_state(env, str(state)) == "missing"
    assert sorted(p.name for p in (state / "envs").iterdir()) == [".broken.lock"]
    listed = run_tsfmd("env", "list", "--config", str(config))
    assert listed.returncode == 1 and " missing " in listed.stdout


def test_a_stampless_venv_at_path_is_stale_then_updated_in_place(tmp_path):
    own = tmp_path / "own-venv"
    subprocess.run([sys.executable, "-m", "venv", str(own)], check=True, timeout=120)
    config, state = env_registry(tmp_path, f"  six:\n    requirements: [six==1.16.0]\n"
                                 f"    path: {own}\n")
    env = registry(config.read_text()).environment("six")
    assert env_state(env, str(state)) == "stale"
    assert "has no finished tsfmd build" in env_problem(env, str(state))
    built = run_tsfmd("env", "build", "--config", str(config))
    assert built.returncode == 0, built.stderr
    assert env_state(env, str(state)) == "ready" and not own.is_symlink()
    assert python_for(env, str(state)) == own / "bin" / "python"


def test_env_build_names_an_unknown_environment(tmp_path):
    config, _ = env_registry(tmp_path, SIX)
    result = run_tsfmd("env", "build", "sixx", "--config", str(config))
    assert result.returncode == 2
    assert f"{config} defines no environment 'sixx' (defined: six)" in result.stderr


def test_the_test_env_cache_builds_once_and_names_what_it_built(tmp_path, monkeypatch, capfd):
    from envcache import environments_yaml, test_env

    monkeypatch.setenv("TSFMD_TEST_ENVS", str(tmp_path / "cache"))
    env = test_env("six", ["six==1.16.0"])
    assert "Successfully installed six-1.16.0" in capfd.readouterr().out
    assert test_env("six", ["six==1.16.0"]) == env
    assert "test env: environment six: up to date" in capfd.readouterr().out
    reg = registry(HEAD + environments_yaml(env) + MODELS.replace("moirai", "six"))
    assert reg.environment("six") == env and env_state(env, None) == "ready"


def test_an_interrupted_build_is_never_ready_and_the_next_build_finishes_it(tmp_path):
    """The build is killed while pip runs: the package's setup.py blocks on a FIFO, and
    opening the FIFO's other end returns only once it is there (no sleeps, no timing)."""
    import signal
    import threading

    package, fifo, gate = tmp_path / "blocker", tmp_path / "fifo", tmp_path / "block"
    package.mkdir()
    os.mkfifo(fifo)
    gate.touch()
    (package / "setup.py").write_text(
        "import os\nfrom setuptools import setup\n"
        f"if os.path.exists({str(gate)!r}):\n    open({str(fifo)!r}).read()\n"
        "setup(name='blocker', version='1.0', py_modules=[])\n")
    # pip builds it with setuptools from the index, as it builds any sdist
    config, state = env_registry(tmp_path, f"  blocked:\n    requirements: [{package}]\n")
    env = registry(config.read_text()).environment("blocked")
    build = subprocess.Popen([sys.executable, "-m", "tsfmd", "env", "build", "--config",
                              str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    reached = threading.Event()

    def wait_for_pip():
        os.close(os.open(fifo, os.O_WRONLY))  # returns once setup.py opened its end
        reached.set()

    threading.Thread(target=wait_for_pip, daemon=True).start()
    try:
        assert reached.wait(300), "pip never ran the package's setup.py"
        assert env_state(env, str(state)) == "missing"
    finally:
        os.killpg(build.pid, signal.SIGKILL)
        build.communicate(timeout=60)
    unfinished = [p.name for p in (state / "envs").iterdir() if p.name.startswith(".blocked-")]
    assert len(unfinished) == 1 and not (state / "envs" / "blocked").exists()
    assert env_state(env, str(state)) == "missing"

    gate.unlink()
    again = run_tsfmd("env", "build", "--config", str(config))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "removing the unfinished build" in again.stdout
    assert env_state(env, str(state)) == "ready"


def test_two_names_of_one_interpreter_are_one_spec(tmp_path):
    """`tsfmd` runs as .venv/bin/python3 and `python -m tsfmd` as .venv/bin/python: an env
    built by one is ready for the other."""
    from tsfmd.envs.state import spec_digest

    link = tmp_path / "python-alias"
    link.symlink_to(sys.executable)
    env = EnvironmentSpec("e", sys.executable, ("six==1.16.0",))
    assert spec_digest(env, "v") == spec_digest(replace(env, python=str(link)), "v")
    assert spec_digest(env, "v") != spec_digest(replace(env, requirements=("six",)), "v")


# -- the shipped registry ------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
#: TDgpt 3.4's model services -> the shipped entry: (family, environment, routes)
TDGPT_SERVICES = {
    "tdtsfm_1": ("tdtsfm", None, ("/tdtsfm_1", "/tdtsfm")),
    "timemoe-fc": ("time-moe", None, ("/timemoe-fc", "/timemoe", "/ds_predict")),
    "chronos": ("chronos-bolt", None, ("/chronos",)),
    "moirai": ("moirai", "moirai", ("/moirai",)),
    "timesfm": ("timesfm-2.0", None, ("/timesfm",)),
    "moment": ("moment", "moment", ("/imputation",)),
}


def test_the_shipped_registry_has_an_entry_for_each_tdgpt_service():
    from tsfmd.core.registry import load_registry

    shipped = load_registry(str(REPO / "etc/tsfmd/tsfmd.yaml"))
    for key, (family, environment, routes) in TDGPT_SERVICES.items():
        spec = shipped.model(key)
        assert (spec.family, spec.routes) == (family, routes), key
        assert (spec.environment.name if spec.environment else None) == environment, key
        assert spec.enabled == (key == "timemoe-fc"), key
    assert shipped.environment("moirai").requirements == ("uni2ts==2.0.0",)
    assert "momentfm==0.1.4" in shipped.environment("moment").requirements


def test_env_list_on_the_shipped_registry_names_its_environments(tmp_path):
    listed = run_tsfmd("env", "list", "--config", str(REPO / "etc/tsfmd/tsfmd.yaml"),
                       "--state-dir", str(tmp_path))
    assert listed.returncode == 1  # nothing is built in an empty state dir
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["moirai"][1:2] == ["missing"] and rows["moirai"][-1] == "moirai"
    assert rows["moment"][1:2] == ["missing"] and rows["moment"][3] == "4"
