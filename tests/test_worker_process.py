"""Models in worker processes: the same answers as in-process, the wire format, the worker's
own environment, and a worker's life tied to the daemon's.

Real daemons on loopback, real worker processes, the bundled fracast. The environment
without tsfmd's dependencies is built once by tsfmd's own builder (tests/envcache.py, in
$TSFMD_TEST_ENVS): torch 2.13.0 and fracast with its own dependencies only (numpy,
safetensors, huggingface_hub): no flask, waitress, pydantic, prometheus_client, requests.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_until
from envcache import environments_yaml, test_env
from tsfmd.core.registry import RegistryError, parse_registry
from tsfmd.families.base import Capabilities, Forecast, SeriesInput
from tsfmd.runners import protocol
from tsfmd.runners.process import package_path, worker_env

TESTS = Path(__file__).parent
#: what the daemon needs and a worker environment must not (tsfmd's worker side runs without)
DAEMON_ONLY = ("flask", "waitress", "pydantic", "prometheus_client", "requests")
RNG = np.random.default_rng(16)
INPUTS = [
    {"input": (np.sin(np.arange(200) / 5.0) * 3 + 10).tolist(), "next_len": 24,
     "conf_interval": 0.9},
    {"input": RNG.normal(size=57).cumsum().tolist(), "next_len": 7},
    {"input": [1.0, 2.0, None] + [4.0, 3.0] * 40, "next_len": 100, "conf_interval": 0.8},
]


def entry(key, extra=""):
    return f"  {key}:\n    family: fracast\n    source: bundled\n    device: cpu\n{extra}"


def model_info(server, key):
    return next(m for m in server.get("/v1/models").json()["models"] if m["key"] == key)


def answers(server, route):
    replies = [server.post(route, body) for body in INPUTS]
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    return [r.json() for r in replies]


def test_a_worker_answers_bit_for_bit_as_in_process(tsfmd_server):
    # one torch thread on both sides (the daemon passes its count to the worker), so the
    # two run the very same kernels
    server = tsfmd_server(entry("inproc") + entry("isolated", "    isolation: process\n"),
                          extra_server="  torch_threads: 1\n")
    assert answers(server, "/isolated") == answers(server, "/inproc")  # floats compared exactly
    isolated, inproc = model_info(server, "isolated"), model_info(server, "inproc")
    assert isolated["status"] == "ready" and isolated["isolation"] == "process"
    assert isolated["worker"]["python"] == sys.executable
    assert Path(f"/proc/{isolated['worker']['pid']}").exists()
    assert isolated["worker"]["torch_threads"] == 1  # server.torch_threads, not every core
    assert inproc["isolation"] == "inprocess" and "worker" not in inproc
    for name in ("quantile_levels", "context_limit", "horizon_limit", "min_context"):
        assert isolated[name] == inproc[name]  # capabilities crossed the handshake
    metrics = server.get("/metrics").text
    assert 'tsfmd_model_state{model="isolated",state="restarting"} 0.0' in metrics


@pytest.fixture(scope="session")
def bare_env():
    """A worker environment with fracast and torch only: built once, cached."""
    env = test_env("worker-bare", ["torch==2.13.0", "fracast"])
    python = Path(env.path) / "bin" / "python"
    probe = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % (DAEMON_ONLY,)
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert found == "[]", f"the worker environment has daemon-only packages: {found}"
    return env


def test_a_model_runs_in_an_environment_without_tsfmds_dependencies(tsfmd_server, bare_env):
    server = tsfmd_server(entry("inproc") + entry("envmodel", "    environment: worker-bare\n"))
    # the registry's `environments:` section goes before `server:`; start_tsfmd writes it
    assert answers(server, "/envmodel") == answers(server, "/inproc")
    worker = model_info(server, "envmodel")["worker"]
    assert worker["python"].startswith(os.path.realpath(bare_env.path))
    exe = os.path.realpath(f"/proc/{worker['pid']}/exe")
    assert Path(exe).resolve() == Path(worker["python"]).resolve()


@pytest.fixture
def tsfmd_server(tsfmd_server, request):
    """tsfmd_server, with the `environments:` section when a test uses bare_env."""
    if "bare_env" not in request.fixturenames:
        yield tsfmd_server
        return
    env = request.getfixturevalue("bare_env")

    def start(models, extra_server=""):
        from conftest import free_port, RunningTsfmd, registry_yaml

        port = free_port()
        config = request.getfixturevalue("tmp_path") / f"tsfmd-{port}.yaml"
        config.write_text(environments_yaml(env) + registry_yaml(models, port, extra_server))
        running = RunningTsfmd(config, port).start()
        started.append(running)
        return running

    started = []
    yield start
    for running in started:
        running.stop()


def test_the_worker_side_imports_no_daemon_dependency(bare_env):
    """tsfmd's worker modules and a family, imported in the bare environment with the
    daemon-only packages (and yaml) made unimportable."""
    python = Path(bare_env.path) / "bin" / "python"
    blocked = DAEMON_ONLY + ("yaml",)
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        f"    def find_spec(self, name, path, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}: raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import tsfmd.runners.worker, tsfmd.runners.protocol, tsfmd.families.fracast\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([str(python), "-c", script], env=worker_env(), cwd=package_path(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # not even torch until a family loads


def test_core_and_api_do_not_import_torch():
    script = ("import sys, tsfmd.core.models, tsfmd.core.batching, tsfmd.core.executor, "
              "tsfmd.api.app, tsfmd.runners.process; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "False"


# -- the wire format ----------------------------------------------------------------------

def round_trip(header, arrays):
    stream = io.BytesIO()
    protocol.write_frame(stream, header, arrays)
    stream.seek(0)
    return protocol.read_frame(stream)


def test_frames_carry_series_and_forecasts_exactly():
    batch = [SeriesInput(values=RNG.normal(size=30).astype(np.float32), zero=1.5),
             SeriesInput(values=RNG.normal(size=12),
                         past_covariates=RNG.normal(size=(2, 12)),
                         future_covariates=RNG.normal(size=(1, 20)).astype(np.float32))]
    arrays = []
    header, got = round_trip({"op": "forecast", "series": protocol.encode_series(batch, arrays),
                              "horizon": 8}, arrays)
    back = protocol.decode_series(header["series"], got)
    for sent, came in zip(batch, back):
        for name in ("values", "past_covariates", "future_covariates"):
            a, b = getattr(sent, name), getattr(came, name)
            assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b))
        assert sent.zero == came.zero
    for quantiles in (None, RNG.normal(size=(2, 8, 9))):
        forecast = Forecast(point=RNG.normal(size=(2, 8)), quantiles=quantiles)
        header, got = round_trip(*protocol.forecast_arrays(forecast))
        again = protocol.forecast_from(header, got)
        assert np.array_equal(again.point, forecast.point)
        assert (quantiles is None) == (again.quantiles is None)
    assert round_trip({"op": "close"}, [])[0] == {"op": "close"}
    assert protocol.read_frame(io.BytesIO(b"")) is None


def test_frames_refuse_object_arrays_and_torn_streams():
    stream = io.BytesIO()
    protocol.write_frame(stream, {"op": "x"}, [np.zeros(4)])
    torn = io.BytesIO(stream.getvalue()[:-3])
    with pytest.raises(protocol.ProtocolError):
        protocol.read_frame(torn)
    text = b'{"arrays":[{"dtype":"|O","shape":[1]}]}'
    with pytest.raises(protocol.ProtocolError):
        protocol.read_frame(io.BytesIO(len(text).to_bytes(4, "big") + text + b"\0" * 8))


def test_capabilities_cross_as_plain_values_field_by_field():
    caps = Capabilities(context_limit=100, horizon_limit=10, quantile_levels=(0.1, 0.5, 0.9),
                        horizon_block=1, position_limit=300)
    header, _ = round_trip({"capabilities": protocol.capabilities_dict(caps)}, [])
    assert protocol.capabilities_from(header["capabilities"]) == caps
    newer = dict(header["capabilities"], a_field_from_a_newer_worker=3)
    assert protocol.capabilities_from(newer) == caps


def test_impute_passes_through_the_worker_unchanged(monkeypatch):
    """The generic `impute` op: arrays with NaN in, the family's filled arrays out."""
    from tsfmd.families import _FAMILIES, get_family
    from tsfmd.families.base import LoadSpec
    from tsfmd.runners import start_runner

    monkeypatch.setenv("TSFMD_WORKER_PATH", str(TESTS))
    monkeypatch.setitem(_FAMILIES, "fault-test", "workerfamilies:FaultFamily")  # test-only
    family, spec = get_family("fault-test"), LoadSpec(key="imp", source="x", device="cpu")
    batch = [np.array([1.0, np.nan, 3.0, np.nan]), np.arange(6, dtype=np.float32)]
    inproc, worker = start_runner(family, spec), start_runner(family, spec, sys.executable)
    try:
        expected, got = inproc.impute(batch), worker.impute(batch)
    finally:
        worker.close()
    assert [a.tolist() for a in got] == [a.tolist() for a in expected]
    assert got[0].tolist() == [1.0, 2.0, 3.0, 2.0] and got[1].dtype == expected[1].dtype


def test_a_batch_past_its_deadline_is_not_sent_and_the_worker_lives(monkeypatch):
    from tsfmd.core.errors import DeadlineExceeded
    from tsfmd.families import _FAMILIES, get_family
    from tsfmd.families.base import LoadSpec
    from tsfmd.runners import start_runner

    monkeypatch.setenv("TSFMD_WORKER_PATH", str(TESTS))
    monkeypatch.setitem(_FAMILIES, "fault-test", "workerfamilies:FaultFamily")  # test-only
    runner = start_runner(get_family("fault-test"), LoadSpec(key="d", source="x"),
                          sys.executable)
    try:
        pid, batch = runner.pid, [SeriesInput(values=np.array([1.0, 2.0]))]
        with pytest.raises(DeadlineExceeded, match="before its batch was sent"):
            runner.forecast(batch, 2, deadline=time.monotonic() - 0.001)
        assert runner.forecast(batch, 2).point.tolist() == [[3.0, 4.0]]
        assert runner.pid == pid and runner.restarts == 0
    finally:
        runner.close()


def test_a_worker_that_never_finishes_loading_is_killed_and_the_load_fails(monkeypatch):
    from tsfmd.families import _FAMILIES, get_family
    from tsfmd.families.base import LoadSpec, ModelLoadError
    from tsfmd.runners.process import ProcessRunner, RestartPolicy

    monkeypatch.setenv("TSFMD_WORKER_PATH", str(TESTS))
    monkeypatch.setitem(_FAMILIES, "fault-test", "workerfamilies:FaultFamily")  # test-only
    family = get_family("fault-test")
    spec = LoadSpec(key="wedged", source="x", options={"hang_on_load": True})
    runner = ProcessRunner("wedged", f"{family.__module__}:{family.__qualname__}", spec,
                           sys.executable, RestartPolicy(load_timeout_s=3.0, standby=False))
    try:
        with pytest.raises(ModelLoadError, match="had not loaded it after 3s and was killed"
                           ) as raised:
            runner.load()
        assert "fault-test: loading wedged" in str(raised.value)  # its stderr, for the operator
        pid = int(str(raised.value).split("worker pid ")[1].split()[0])
        wait_until(lambda: not Path(f"/proc/{pid}").exists())  # killed and reaped
    finally:
        runner.close()


# -- the worker's life ------------------------------------------------------------------------

def start_worker(parent_pid=None):
    env = worker_env()
    if parent_pid is not None:
        env["TSFMD_PARENT_PID"] = str(parent_pid)
    return subprocess.Popen([sys.executable, "-m", "tsfmd.runners.worker"], env=env,
                            cwd=package_path(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_a_worker_exits_at_the_end_of_its_request_pipe():
    worker = start_worker()
    worker.stdin.close()
    assert worker.wait(60) == 0


def test_a_worker_whose_parent_is_not_the_daemon_exits():
    worker = start_worker(parent_pid=1)  # not our pid: the daemon it was meant for is gone
    assert worker.wait(60) == 3
    assert b"is gone" in worker.stderr.read()


def dead(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (FileNotFoundError, IndexError):
        return True


def test_workers_die_with_the_daemon(tmp_path):
    """A stand-in daemon process starts a process runner (worker + standby), then is
    SIGKILLed: the kernel ends its workers (PR_SET_PDEATHSIG); nothing is left behind."""
    script = tmp_path / "standin.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from tsfmd.families import register_family, get_family\n"
        "from tsfmd.families.base import LoadSpec\n"
        "from tsfmd.runners import start_runner\n"
        "register_family('fault-test', 'workerfamilies:FaultFamily')\n"
        "runner = start_runner(get_family('fault-test'), LoadSpec(key='x', source='x', "
        "device='cpu'), sys.executable)\n"
        "while runner.describe()['standby_pid'] is None: time.sleep(0.05)\n"
        "print(runner.pid, runner.describe()['standby_pid'], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    env = dict(os.environ, PYTHONPATH=str(TESTS), TSFMD_WORKER_PATH=str(TESTS))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    wait_until(lambda: all(dead(pid) for pid in pids), timeout=10)


# -- the registry --------------------------------------------------------------------------

def test_isolation_is_validated_and_is_part_of_the_load_identity():
    text = "models:\n  a:\n    family: fracast\n    source: bundled\n    isolation: {}\n"
    with pytest.raises(RegistryError, match=r"models\.a\.isolation: must be one of inprocess, "
                                            r"process, got 'thread'"):
        parse_registry(text.format("thread"))
    inproc = parse_registry(text.format("inprocess")).model("a")
    isolated = parse_registry(text.format("process")).model("a")
    assert isolated.isolation == "process" and inproc.isolation == "inprocess"
    assert inproc.load_identity != isolated.load_identity  # a change restarts it elsewhere
    assert parse_registry(text.replace("    isolation: {}\n", "")).model("a") == inproc
