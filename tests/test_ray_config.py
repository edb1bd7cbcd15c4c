"""`tsfmd ray config` and the registry's `ray:` part: real YAML through the real CLI.

Runs on the base install: writing the config must not need (nor import) ray.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tsfmd.core import errors
from tsfmd.core.registry import RegistryError, parse_registry
from tsfmd.ray.config import interpreter_warnings, model_app, runtime_env_of
from tsfmd.ray.remote import error_record, raise_record

REGISTRY = """\
server:
  host: 127.0.0.1
  port: 5123
models:
  fracast-fc:
    family: fracast
    source: bundled
    batching: {max_batch: 8, queue_size: 40, timeout_s: 20}
    ray:
      num_replicas: 3
      num_cpus: 0.5
      max_queued_requests: 12
      batching: {max_batch: 4}
  scaled:
    family: fracast
    source: bundled
    route: /scaled
    ray:
      autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 6}
      num_gpus: 1
      max_ongoing_requests: 10
  plain:
    family: fracast
    source: bundled
  off:
    family: fracast
    source: bundled
    enabled: false
"""


def write_config(tmp_path: Path, text: str = REGISTRY, *extra: str) -> dict:
    registry = tmp_path / "tsfmd.yaml"
    registry.write_text(text)
    out = tmp_path / "serve.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "tsfmd", "ray", "config", "--config", str(registry),
         "--output", str(out), *extra], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(out.read_text())


def apps_of(config: dict) -> dict:
    return {app["name"]: app for app in config["applications"]}


def test_one_application_per_enabled_model_and_the_ingress(tmp_path):
    config = write_config(tmp_path)
    apps = apps_of(config)
    assert set(apps) == {"tsfmd", model_app("fracast-fc"), model_app("scaled"),
                         model_app("plain")}
    assert config["http_options"] == {"host": "127.0.0.1", "port": 5123}
    ingress = apps["tsfmd"]
    assert ingress["import_path"] == "tsfmd.ray:app" and ingress["route_prefix"] == "/"
    assert ingress["args"]["registry"] == yaml.safe_load(REGISTRY)  # the whole registry
    for key in ("fracast-fc", "scaled", "plain"):
        app = apps[model_app(key)]
        assert app["import_path"] == "tsfmd.ray:model" and app["route_prefix"] is None
        assert [d["name"] for d in app["deployments"]] == [key]
        assert list(app["args"]["registry"]["models"]) == [key]  # its own entry only
        assert app["deployments"][0]["max_surge_percent"] == 100


def test_replicas_resources_limits_and_batching_from_the_ray_part(tmp_path):
    apps = apps_of(write_config(tmp_path))
    fixed = apps[model_app("fracast-fc")]["deployments"][0]
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert fixed["max_ongoing_requests"] == 8  # 2 x ray.batching.max_batch
    assert fixed["max_queued_requests"] == 12
    assert fixed["graceful_shutdown_timeout_s"] == 25  # batching.timeout_s + 5
    # the replicas batch with ray.batching over the entry's batching, field by field
    batching = apps[model_app("fracast-fc")]["args"]["registry"]["models"]["fracast-fc"][
        "batching"]
    # max_batch_points None reads back as "auto": the family's own measure
    assert batching == {"enabled": True, "max_batch": 4, "max_wait_ms": 5.0, "queue_size": 40,
                        "timeout_s": 20.0, "max_batch_points": None}
    assert "ray" not in apps[model_app("fracast-fc")]["args"]["registry"]["models"][
        "fracast-fc"]
    scaled = apps[model_app("scaled")]["deployments"][0]
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4,
                                            "target_ongoing_requests": 6.0}
    assert "num_replicas" not in scaled
    assert scaled["ray_actor_options"]["num_gpus"] == 1.0
    assert scaled["max_ongoing_requests"] == 10
    assert scaled["max_queued_requests"] == 256  # the entry's batching.queue_size
    plain = apps[model_app("plain")]["deployments"][0]
    assert plain["num_replicas"] == 1 and plain["max_ongoing_requests"] == 32


def test_cli_overrides_the_proxy_address_and_ingress_replicas(tmp_path):
    config = write_config(tmp_path, REGISTRY, "--http-host", "0.0.0.0", "--http-port", "8000",
                          "--ingress-replicas", "2")
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    assert apps_of(config)["tsfmd"]["deployments"][0]["num_replicas"] == 2


def test_another_entry_changing_leaves_a_model_application_alone(tmp_path):
    """What makes a redeploy restart only the models that changed (config.py)."""
    before = apps_of(write_config(tmp_path))
    changed = REGISTRY.replace("target_ongoing_requests: 6", "target_ongoing_requests: 3")
    changed += "  added:\n    family: fracast\n    source: bundled\n"
    after = apps_of(write_config(tmp_path, changed))
    assert after[model_app("fracast-fc")] == before[model_app("fracast-fc")]
    assert after[model_app("plain")] == before[model_app("plain")]
    assert model_app("added") in after and model_app("added") not in before


@pytest.mark.parametrize("part, problem", [
    ("ray: {replicas: 2}", "models.m.ray: unknown field 'replicas'"),
    ("ray: {num_replicas: 2, autoscaling: {max_replicas: 3}}",
     "models.m.ray: set num_replicas or autoscaling, not both"),
    ("ray: {autoscaling: {min_replicas: 3, max_replicas: 2}}",
     "models.m.ray.autoscaling.max_replicas: must be >= min_replicas (3), got 2"),
    ("ray: {autoscaling: {max: 2}}", "models.m.ray.autoscaling: unknown field 'max'"),
    ("ray: {num_cpus: -1}", "models.m.ray.num_cpus: must be a number >= 0.0, got -1"),
    ("ray: {batching: {max_batch: 0}}",
     "models.m.ray.batching.max_batch: must be between 1 and 4096, got 0"),
    ("ray: {batching: {size: 3}}", "models.m.ray.batching: unknown field 'size'"),
    ("ray: 3", "models.m.ray: must be a mapping"),
])
def test_the_ray_part_is_validated(part, problem):
    text = f"models:\n  m:\n    family: fracast\n    source: bundled\n    {part}\n"
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, "reg.yaml")
    assert any(line.startswith(f"reg.yaml: {problem}") for line in caught.value.problems), \
        caught.value.problems


def test_the_daemon_ignores_the_ray_part():
    """A reload that edits only `ray:` is no change for `tsfmd serve`."""
    base = "models:\n  m:\n    family: fracast\n    source: bundled\n"
    plain = parse_registry(base).model("m")
    with_ray = parse_registry(base + "    ray: {num_replicas: 4}\n").model("m")
    assert with_ray.ray.num_replicas == 4 and with_ray == plain


def test_an_invalid_registry_writes_no_config(tmp_path):
    registry = tmp_path / "bad.yaml"
    registry.write_text("models:\n  m:\n    family: fracast\n    source: bundled\n"
                        "    ray: {replicas: 2}\n")
    out = tmp_path / "serve.yaml"
    done = subprocess.run([sys.executable, "-m", "tsfmd", "ray", "config", "--config",
                           str(registry), "-o", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "unknown field 'replicas'" in done.stderr
    assert not out.exists()


def test_an_environment_becomes_the_replicas_runtime_env():
    plain = parse_registry("models:\n  m:\n    family: fracast\n    source: bundled\n")
    assert runtime_env_of(plain.model("m")) == {}
    registry = parse_registry(
        "environments:\n"
        "  moirai:\n"
        "    python: /usr/bin/python3.11\n"
        "    requirements: [uni2ts==2.0.0]\n"
        "    pip_options: [--find-links, /srv/wheels]\n"
        "  own:\n"
        "    requirements: [six==1.16.0]\n"
        "models:\n"
        "  m:\n    family: fracast\n    source: bundled\n    environment: moirai\n"
        "  o:\n    family: fracast\n    source: bundled\n    environment: own\n")
    assert runtime_env_of(registry.model("m")) == {
        "pip": {"packages": ["uni2ts==2.0.0"], "pip_check": False,
                "pip_install_options": ["--find-links", "/srv/wheels"]}}
    # only an interpreter other than the registry's default (this one) is worth a warning
    [warning] = interpreter_warnings(registry)
    assert warning.startswith("models.m: environment 'moirai' names python /usr/bin/python3.11")


def test_writing_the_config_does_not_import_ray(tmp_path):
    registry = tmp_path / "tsfmd.yaml"
    registry.write_text(REGISTRY)
    code = ("import sys; from tsfmd.cli import main\n"
            f"rc = main(['ray', 'config', '--config', {str(registry)!r}, '-o', "
            f"{str(tmp_path / 'out.yaml')!r}])\n"
            "assert rc == 0, rc\n"
            "assert 'ray' not in sys.modules, 'tsfmd ray config imported ray'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_adapters_install_url_points_tdgpt_at_the_ray_proxy(tmp_path):
    """`tsfmd adapters install --url`: the anode's entries and adapters use the Ray proxy."""
    from anode_standin.lab import adapters, configured_urls, fracast_entry, make_anode, \
        write_registry

    anode, config = make_anode(tmp_path, "ini")
    models = fracast_entry("fracast-fc") + fracast_entry("timemoe-fc")
    registry = write_registry(tmp_path / "tsfmd.yaml", 5077, models, "127.0.0.1")
    proxy = "http://ray-head.internal:8000"
    code, _, err = adapters("install", anode, config, registry, "--url", proxy)
    assert code == 0, err
    urls = configured_urls(anode, "ini", config, ["fracast-fc", "timemoe-fc"])
    assert urls == {"fracast-fc": f"{proxy}/fracast-fc", "timemoe-fc": f"{proxy}/timemoe-fc"}
    module = anode / "lib/taosanalytics/algo/fc/tsfmd_fracast_fc.py"
    assert f"{proxy}/fracast-fc" in module.read_text()
    code, out, err = adapters("list", anode, config, registry, "--url", proxy)
    assert code == 0, err
    assert "NOT pointed" not in out and "differs" not in out, out
    code, _, err = adapters("install", anode, config, registry, "--url", f"{proxy}/sub")
    assert code != 0 and "--url must be http://HOST[:PORT]" in err


@pytest.mark.parametrize("error", [
    errors.Overloaded("model m is busy", 7), errors.DeadlineExceeded("too slow", 3),
    errors.Unavailable("loading", 5), errors.BadInput("bad series", "input"),
    errors.Unsupported("no covariates", "dynamic_real"), errors.ModelFault("NaN"),
])
def test_a_replicas_error_is_raised_again_as_itself(error):
    """What crosses from a replica to the ingress (tsfmd/ray/remote.py): plain values, so
    Retry-After and the field survive (a pickled ServeError would lose them)."""
    with pytest.raises(errors.ServeError) as caught:
        raise_record(error_record(error))
    again = caught.value
    assert type(again) is type(error) and again.message == error.message
    assert again.retry_after == error.retry_after
    assert getattr(again, "field", None) == getattr(error, "field", None)
