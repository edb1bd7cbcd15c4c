"""`tsfmd pull` against a stand-in hub on loopback (tests/hub_standin.py).

No hub is reachable from the test machines, and no test may reach the network: each pull
runs as a subprocess whose HF_ENDPOINT is the stand-in on 127.0.0.1, and only that
subprocess has HF_HUB_OFFLINE unset (tests/conftest.py sets it for the whole session, so
the daemon started here reads the cache offline, as it does under systemd). The repository
served is the tiny random-weight Time-MoE checkpoint the family tests use, with a model card
naming a licence and a file no family needs (it must not be fetched).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, wait_until
from hub_standin import COMMIT, StandinHub

REPO = "test-org/tiny-moe"
KEY = "tiny-moe"
WEIGHTS = "model.safetensors"
TOKEN = "hf_standin_token_123"
MODELS = (
    f"  {KEY}:\n"
    "    family: time-moe\n"
    f"    source: {REPO}\n"
    f"    route: /{KEY}\n"
    "    dtype: float32\n"
    "    device: cpu\n"
)


@pytest.fixture
def repo_dir(tmp_path) -> Path:
    directory = tmp_path / "repo"
    shutil.copytree(FIXTURES / "timemoe" / "tiny", directory)
    (directory / "README.md").write_text("---\nlicense: mit\ntags: [time-series]\n---\n# tiny\n")
    (directory / "modeling_time_moe.py").write_text("raise SystemExit('never fetched')\n")
    return directory


@pytest.fixture
def hub(repo_dir):
    with StandinHub(REPO, repo_dir) as standin:
        yield standin


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text("server:\n  host: 127.0.0.1\n  port: 5999\nmodels:\n" + MODELS)
    return path


def pull_env(hub: StandinHub, tmp_path: Path, token: str = TOKEN) -> dict:
    """The pulled subprocess's environment: the stand-in as the hub, the hub allowed."""
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"))
    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # huggingface_hub reads both
        env.pop(offline, None)
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return env


def pull_command(config: Path, state: Path, target: str = KEY) -> list:
    return [sys.executable, "-m", "tsfmd", "pull", target, "--config", str(config),
            "--state-dir", str(state)]


def pull(hub, tmp_path, config, state, target=KEY, **env) -> subprocess.CompletedProcess:
    return subprocess.run(pull_command(config, state, target), env=pull_env(hub, tmp_path, **env),
                          capture_output=True, text=True, timeout=300)


def blobs(state: Path) -> Path:
    return state / "hub" / ("models--" + REPO.replace("/", "--")) / "blobs"


def weights_sha(repo_dir: Path) -> str:
    return hashlib.sha256((repo_dir / WEIGHTS).read_bytes()).hexdigest()


def test_pull_shows_progress_then_the_daemon_serves_it_offline(
        hub, repo_dir, tmp_path, config, state, tsfmd_server):
    size = (repo_dir / WEIGHTS).stat().st_size
    done = pull(hub, tmp_path, config, state)
    assert done.returncode == 0, done.stderr
    # progress for a log (stderr is a pipe here): whole lines, no carriage returns
    assert f"{WEIGHTS}: 0% (0 of {size} bytes)" in done.stderr
    assert f"{WEIGHTS}: 100% ({size} of {size} bytes)" in done.stderr
    assert "\r" not in done.stderr
    snapshot = state / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT
    assert f"files in {snapshot}" in done.stdout
    assert "loads with family time-moe" in done.stdout and "licence mit" in done.stdout
    assert "systemctl reload tsfmd" in done.stdout
    # HF_TOKEN went with every request for the repository; a file no family needs did not
    for_repo = [s for s in hub.seen if REPO in s.path]
    assert for_repo and {s.authorization for s in for_repo} == {f"Bearer {TOKEN}"}
    assert not hub.requests_for("modeling_time_moe.py")
    assert hub.sent[WEIGHTS] == size

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the daemon below cannot reach any hub
    server = tsfmd_server(MODELS, extra_server=f"  state_dir: {state}\n")
    model = models_of(server)[KEY]
    assert model["status"] == "ready", model
    assert model["license"] == "mit" and model["weights_bytes"] == size
    reply = server.post(f"/{KEY}", {"input": [float(i % 7) for i in range(64)], "next_len": 8})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["output"]) == 8


def test_a_dropped_connection_is_resumed_with_a_range_request(
        hub, repo_dir, tmp_path, config, state):
    size = (repo_dir / WEIGHTS).stat().st_size
    hub.faults.cut_once = WEIGHTS
    done = pull(hub, tmp_path, config, state)
    assert done.returncode == 0, done.stderr
    gets = hub.requests_for(WEIGHTS)
    assert [g.range for g in gets] == [None, f"bytes={size // 2}-"]
    assert hub.sent[WEIGHTS] == size  # the first half was not sent again
    assert f"resuming at {size // 2} of {size} bytes" in done.stderr


def test_a_killed_pull_resumes_on_the_next_pull(hub, repo_dir, tmp_path, config, state):
    size = (repo_dir / WEIGHTS).stat().st_size
    half = size // 2
    partial = blobs(state) / (weights_sha(repo_dir) + ".incomplete")
    hub.faults.hang_at_half = WEIGHTS
    first = subprocess.Popen(pull_command(config, state), env=pull_env(hub, tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hub.faults.reached_half.wait(240), "the pull never reached the weights"
        # the half that arrived is on disk before the process dies (flushed per chunk)
        wait_until(lambda: partial.exists() and partial.stat().st_size == half, timeout=60)
    finally:
        first.kill()
        first.communicate(timeout=60)
    hub.faults.hang_at_half = None
    hub.faults.released.set()

    done = pull(hub, tmp_path, config, state)
    assert done.returncode == 0, done.stderr
    assert [g.range for g in hub.requests_for(WEIGHTS)] == [None, f"bytes={half}-"]
    assert hub.sent[WEIGHTS] == size  # half by the killed pull, the rest by this one
    assert f"resuming at {half} of {size} bytes" in done.stderr
    assert not partial.exists() and (blobs(state) / weights_sha(repo_dir)).exists()


def test_a_corrupt_download_is_reported_deleted_and_not_served(
        hub, repo_dir, tmp_path, config, state, tsfmd_server):
    hub.faults.corrupt = WEIGHTS
    failed = pull(hub, tmp_path, config, state)
    assert failed.returncode == 1
    assert f"{WEIGHTS}: downloaded" in failed.stderr and "sha256" in failed.stderr
    assert weights_sha(repo_dir) in failed.stderr
    assert f"tsfmd pull {KEY} --config {config} --state-dir {state}` again" in failed.stderr
    assert list(blobs(state).iterdir()) == []  # nothing of it is left to serve

    server = tsfmd_server(MODELS, extra_server=f"  state_dir: {state}\n")
    model = models_of(server)[KEY]
    assert model["status"] == "failed"
    reply = server.post(f"/{KEY}", {"input": [1.0] * 32, "next_len": 4})
    assert reply.status_code == 503 and reply.json()["status"] == "error"
    assert f"tsfmd pull {REPO} --state-dir {state}" in reply.json()["error"]

    hub.faults.corrupt = None  # the retry the message names works
    assert pull(hub, tmp_path, config, state).returncode == 0


def test_a_file_corrupted_in_the_cache_is_found_by_the_next_pull(
        hub, repo_dir, tmp_path, config, state):
    assert pull(hub, tmp_path, config, state).returncode == 0
    blob = blobs(state) / weights_sha(repo_dir)
    data = bytearray(blob.read_bytes())
    data[len(data) // 3] ^= 0x01  # a flipped bit on disk
    blob.write_bytes(bytes(data))

    again = pull(hub, tmp_path, config, state)
    assert again.returncode == 1
    assert f"{WEIGHTS}: sha256 differs from the hub's" in again.stderr
    assert not blob.exists()
    assert pull(hub, tmp_path, config, state).returncode == 0 and blob.exists()


def test_weights_the_loader_refuses_are_reported(hub, tmp_path, config, state):
    # The hub's own file is bad (checksums match): the family's load says why.
    hub.files[WEIGHTS] = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      not a checkpoint"
    failed = pull(hub, tmp_path, config, state)
    assert failed.returncode == 1
    assert "match the hub but do not load with family time-moe" in failed.stderr


def test_a_hub_id_is_pulled_and_its_family_found_in_its_config(
        hub, tmp_path, state):
    empty = tmp_path / "empty.yaml"
    empty.write_text("server:\n  port: 5999\nmodels:\n  fc:\n    family: fracast\n"
                     "    source: bundled\n")
    done = pull(hub, tmp_path, empty, state, target=REPO, token="")
    assert done.returncode == 0, done.stderr
    assert "loads with family time-moe" in done.stdout
    assert f"add one with `source: {REPO}` and `family: time-moe`" in done.stdout
    assert {s.authorization for s in hub.seen} == {None}  # no HF_TOKEN, no header


def test_pull_refuses_while_HF_HUB_OFFLINE_is_set(hub, tmp_path, config, state):
    env = dict(pull_env(hub, tmp_path), HF_HUB_OFFLINE="1")
    done = subprocess.run(pull_command(config, state), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and "HF_HUB_OFFLINE is set" in done.stderr
    assert hub.seen == []


def test_a_model_that_failed_serves_after_a_pull_and_a_reload(
        hub, tmp_path, config, state, tsfmd_server):
    # As an operator does it: the daemon reports the model missing and names the command;
    # the pull fetches only the family's files (the repository has more), and a reload
    # loads them, though huggingface_hub's own lookup calls such a snapshot incomplete.
    server = tsfmd_server(MODELS.replace("    device: cpu\n", "    device: cpu\n"
                                         "    required: false\n"),
                          extra_server=f"  state_dir: {state}\n")
    assert models_of(server)[KEY]["status"] == "failed"
    assert pull(hub, tmp_path, config, state).returncode == 0
    assert server.daemon.reload() is True
    assert server.daemon.status()["reloads"]["last_changes"]["retried"] == [KEY]
    assert models_of(server)[KEY]["status"] == "ready"


def test_a_revision_becomes_what_the_daemon_serves(hub, tmp_path, config, state):
    done = subprocess.run(pull_command(config, state) + ["--revision", "v1.0"],
                          env=pull_env(hub, tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert any(s.path.endswith("/revision/v1.0") for s in hub.seen)
    refs = state / "hub" / ("models--" + REPO.replace("/", "--")) / "refs"
    assert (refs / "main").read_text() == (refs / "v1.0").read_text() == COMMIT


def models_of(server) -> dict:
    return {m["key"]: m for m in server.get("/v1/models").json()["models"]}
