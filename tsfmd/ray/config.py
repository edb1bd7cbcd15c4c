"""`tsfmd ray config`: the registry as a Ray Serve config (the `serve deploy` schema).

The config holds one Serve application for the ingress (`tsfmd.ray:app`, at route prefix
"/", every route `tsfmd serve` has) and one per enabled model (`tsfmd.ray:model`, not on
HTTP: only the ingress calls it). Why not one application for everything: Serve's code
version of an application hashes its `args` (ray.serve._private.deploy_utils.
get_app_code_version), and a new code version restarts every deployment of that
application. Were all models in one application, adding or changing one entry would reload
every model; here a redeploy restarts the models whose entries changed and the ingress,
nothing else. Every deployment sets `max_surge_percent: 100`, so the replicas that replace
old ones start beside them and the old ones stop only once the new ones run.

Each application's `args` is a registry of its own: the model's holds `server:` and that one
entry (so editing another entry leaves it alone), the ingress's the whole registry.
Nothing here imports ray: the config is written where only the base install is.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict
from typing import Optional

import yaml

from tsfmd.core.registry import Registry, RegistryError, ModelSpec, default_config, load_registry

INGRESS_APP = "tsfmd"
INGRESS_DEPLOYMENT = "Ingress"
#: the ingress's own limit of requests it works on at once (a thread each, waiting)
INGRESS_MAX_ONGOING = 256


def model_app(key: str) -> str:
    """The Serve application name of a model (its deployment is named `key`)."""
    return f"model-{key}"


def serve_config(registry: Registry, document: dict, http_host: Optional[str] = None,
                 http_port: Optional[int] = None, ingress_replicas: int = 1) -> dict:
    """The `serve deploy` document for `registry` (`document`: the registry file's YAML as
    read, validated as `registry`)."""
    server = registry.server
    apps = [_ingress(document, ingress_replicas)]
    apps += [_model(spec, document) for spec in registry.enabled]
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": http_host or server.host, "port": http_port or server.port},
        "applications": apps,
    }


def _ingress(document: dict, replicas: int) -> dict:
    return {
        "name": INGRESS_APP,
        "route_prefix": "/",
        "import_path": "tsfmd.ray:app",
        "args": {"registry": document},
        "deployments": [{
            "name": INGRESS_DEPLOYMENT,
            "num_replicas": replicas,
            "max_ongoing_requests": INGRESS_MAX_ONGOING,
            "max_surge_percent": 100,
            # it parses JSON and waits on the models: no core of its own to reserve
            "ray_actor_options": {"num_cpus": 0},
        }],
    }


def _model(spec: ModelSpec, document: dict) -> dict:
    ray, batching = spec.ray, spec.ray.batching
    running = batching.max_batch if batching.enabled else 1
    deployment = {
        "name": spec.key,
        # a batch running and the next one gathering: what one replica's batcher works on
        "max_ongoing_requests": ray.max_ongoing_requests or 2 * running,
        # beyond that Serve queues, then refuses with BackPressureError (-> 503)
        "max_queued_requests": (ray.max_queued_requests if ray.max_queued_requests is not None
                                else batching.queue_size),
        "max_surge_percent": 100,
        # a replica stops once its queued requests had their deadline
        "graceful_shutdown_timeout_s": math.ceil(batching.timeout_s) + 5,
        "ray_actor_options": {"num_cpus": ray.num_cpus, "num_gpus": ray.num_gpus},
    }
    if ray.autoscaling is not None:
        deployment["autoscaling_config"] = {
            name: value for name, value in vars(ray.autoscaling).items() if value is not None}
    else:
        deployment["num_replicas"] = ray.num_replicas or 1
    app = {
        "name": model_app(spec.key),
        "route_prefix": None,
        "import_path": "tsfmd.ray:model",
        "args": {"key": spec.key, "registry": _entry_registry(spec, document)},
        "deployments": [deployment],
    }
    runtime_env = runtime_env_of(spec)
    if runtime_env:
        app["runtime_env"] = runtime_env
    return app


def _entry_registry(spec: ModelSpec, document: dict) -> dict:
    """The registry a model's replicas load: `server:`, the entry with the replicas' batching
    in place of its `ray:` part (a changed replica count is then a lightweight update, not
    a restart), and the environment it names."""
    entry = dict(document["models"][spec.key])
    entry.pop("ray", None)
    entry["batching"] = asdict(spec.ray.batching)
    subset = {"server": document.get("server") or {}, "models": {spec.key: entry}}
    environment = entry.get("environment")
    if environment is not None:
        subset["environments"] = {environment: document["environments"][environment]}
    return subset


def runtime_env_of(spec: ModelSpec) -> dict:
    """The replica's runtime_env for the entry's `environment:` (registry `environments:`):
    its requirements as Ray's pip env (built by Ray on each node, over the cluster's own
    packages, so tsfmd and ray stay importable) with its pip options. Empty where the entry
    names no environment. An environment's own `python:` has no equivalent here: a replica
    runs the cluster's interpreter (see `interpreter_warnings`)."""
    env = spec.environment
    if env is None or not env.requirements:
        return {}
    pip: dict = {"packages": list(env.requirements), "pip_check": False}
    if env.pip_options:
        pip["pip_install_options"] = list(env.pip_options)
    return {"pip": pip}


def interpreter_warnings(registry: Registry) -> list:
    """Entries whose environment names an interpreter (other than the one writing the
    config, the registry's default) that the replicas will not use."""
    return [f"models.{spec.key}: environment {env.name!r} names python {env.python}; on Ray "
            "its replicas run the cluster's Python with the environment's requirements"
            for spec in registry.enabled
            for env in [spec.environment]
            if env is not None and os.path.realpath(env.python) != os.path.realpath(sys.executable)]


class _Dumper(yaml.SafeDumper):
    """Writes a shared part (the `server:` every application carries) out each time."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump(config: dict) -> str:
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, width=100)


def add_parser(commands) -> None:
    ray = commands.add_parser("ray", help="run the registry on Ray Serve")
    sub = ray.add_subparsers(dest="ray_command", metavar="COMMAND")
    sub.required = True
    config = sub.add_parser("config", help="write the Ray Serve config (serve deploy) of a "
                            "registry")
    config.add_argument("--config", default=None, help="registry file (default: as serve)")
    config.add_argument("--output", "-o", default="-", help="file to write (default stdout)")
    config.add_argument("--http-host", default=None,
                        help="the Ray proxies' address (default: the registry's server.host)")
    config.add_argument("--http-port", type=int, default=None,
                        help="the Ray proxies' port (default: the registry's server.port)")
    config.add_argument("--ingress-replicas", type=int, default=1,
                        help="replicas of the ingress deployment (default 1)")
    config.set_defaults(handler=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    path = args.config or default_config()
    try:
        registry = load_registry(path)
        with open(path, encoding="utf-8") as file:
            document = yaml.safe_load(file)
    except RegistryError as exc:
        print(f"tsfmd ray config: {path} is NOT valid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for warning in interpreter_warnings(registry):
        print(f"warning: {warning}", file=sys.stderr)
    config = dump(serve_config(registry, document, args.http_host, args.http_port,
                               args.ingress_replicas))
    if args.output == "-":
        sys.stdout.write(config)
    else:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(config)
        print(f"wrote {args.output}: {len(registry.enabled)} model(s); deploy it with "
              f"`serve deploy {args.output}`", file=sys.stderr)
    return 0
