"""The YAML registry: which models tsfmd serves, where, and how.

`load_registry(path)` returns a `Registry` or raises `RegistryError` listing every problem,
each naming the file, the entry and the field. Nothing here imports torch or a model family
so that `tsfmd check` stays fast and works offline.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from tsfmd.core import tokens as token_files
from tsfmd.envs.spec import EnvironmentSpec
from tsfmd.families import family_names

#: the paths tsfmd answers itself; a model route may not take them
RESERVED_ROUTES = ("/healthz", "/readyz", "/v1", "/metrics", "/ui", "/openapi.json", "/docs")
_ROUTE = re.compile(r"^/[A-Za-z0-9._~\-/]*$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")  # int8: CPU only
DEFAULT_CONFIG = "/etc/tsfmd/tsfmd.yaml"


def embedded_registry() -> str:
    """The registry shipped inside the package (the repo's etc/tsfmd/tsfmd.yaml)."""
    return str(Path(__file__).resolve().parent.parent / "data" / "tsfmd.yaml")


def default_config() -> str:
    """/etc/tsfmd/tsfmd.yaml when installed, else the embedded default registry."""
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else embedded_registry()


class RegistryError(ValueError):
    """A registry that cannot be used; `problems` holds one line per problem."""

    def __init__(self, path: str, problems: List[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s):\n" + "\n".join(problems))


@dataclass(frozen=True)
class BatchingSettings:
    """How one model gathers concurrent requests into one forward pass."""

    enabled: bool = True
    max_batch: int = 16
    max_wait_ms: float = 5.0
    #: the most points (context + horizon, summed) one forward pass holds; None ("auto"):
    #: the family's own measure for its device (Capabilities.batch_points), else no bound
    max_batch_points: Optional[int] = None
    queue_size: int = 256
    timeout_s: float = 50.0  # below TDgpt's 60 s SQL timeout: the SQL user reads our error


@dataclass(frozen=True)
class AdapterSettings:
    """How the TDgpt adapter generated for this model talks to tsfmd."""

    connect_timeout_s: float = 5.0
    # between tsfmd's own deadline (batching.timeout_s, 50 s) and TDgpt's SQL timeout
    # (60 s): tsfmd's message arrives first, and a tsfmd that stopped answering still gets
    # the adapter's own clear error before the SQL user sees "can't access"
    read_timeout_s: float = 55.0


@dataclass(frozen=True)
class RayAutoscaling:
    """`ray.autoscaling`: Serve's autoscaling_config for the model's deployment."""

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: Optional[int] = None
    target_ongoing_requests: Optional[float] = None
    upscale_delay_s: Optional[float] = None
    downscale_delay_s: Optional[float] = None


@dataclass(frozen=True)
class RaySettings:
    """The `ray:` part of an entry: how `tsfmd ray config` deploys the model on Ray Serve
    (tsfmd/ray/). `tsfmd serve` ignores it. `batching` is what each replica's batcher uses:
    the entry's `batching:` with `ray.batching`'s fields over it; unset Serve limits are
    derived in tsfmd/ray/config.py.
    """

    num_replicas: Optional[int] = None  # None and no autoscaling: 1
    autoscaling: Optional[RayAutoscaling] = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: Optional[int] = None
    max_queued_requests: Optional[int] = None
    batching: BatchingSettings = field(default_factory=BatchingSettings)


#: the entry's fields that decide the loaded model object; a reload that changes one of them
#: loads the weights again. Every other field is a serving setting that a reload applies
#: around the same loaded model. `context_limit` is here because a family may keep that
#: many points of its own history while it decodes (TimesFM does); `horizon_limit` is not:
#: tsfmd alone enforces it, from the model's capabilities.
LOAD_FIELDS = ("family", "source", "device", "dtype", "context_limit", "options",
               "environment",  # an edited environment spec reloads its models
               "isolation")
#: `isolation:` where a model runs: in the daemon's process, or in a worker process of its own
ISOLATIONS = ("inprocess", "process")


@dataclass(frozen=True)
class ModelSpec:
    """One `models:` entry, validated; equal specs mean "unchanged" on reload."""

    key: str
    family: str
    source: str
    route: str
    aliases: Tuple[str, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    context_limit: Optional[int] = None
    horizon_limit: Optional[int] = None
    enabled: bool = True
    #: readiness: /readyz waits for required models only; a failed one is listed, not fatal
    required: bool = True
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    #: the `environments:` entry this model's worker runs in; None: the daemon's own
    environment: Optional[EnvironmentSpec] = None
    #: "process": a worker process on the daemon's own interpreter (tsfmd/runners); an
    #: entry with an `environment:` always runs in a worker of that environment
    isolation: str = "inprocess"
    #: only `tsfmd ray config` reads it: not compared, so a daemon's reload ignores it
    ray: RaySettings = field(default_factory=RaySettings, compare=False)

    @property
    def routes(self) -> Tuple[str, ...]:
        return (self.route,) + tuple(self.aliases)

    @property
    def load_identity(self) -> tuple:
        """Equal for two entries that load the same model object (see LOAD_FIELDS)."""
        options = json.dumps(self.options, sort_keys=True, default=repr)
        return tuple(options if name == "options" else getattr(self, name)
                     for name in LOAD_FIELDS)

    def loading_as(self, other: "ModelSpec") -> "ModelSpec":
        """This entry's serving settings around the model `other` loads."""
        return replace(self, **{name: getattr(other, name) for name in LOAD_FIELDS})


def client_host(host: str) -> str:
    """The host a client on this machine uses to reach a server bound to `host`, bracketed
    for URLs when it is IPv6. Wildcards map to loopback of the same family: waitress sets
    IPV6_V6ONLY, so a server bound to "::" is reached at [::1], not at 127.0.0.1."""
    host = host.strip()
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


@dataclass(frozen=True)
class AuthSettings:
    """`server.auth`: bearer tokens for tsfmd's own APIs (tsfmd/api/auth.py). Off (every
    path open, as before auth existed) unless `tokens_file` is set."""

    tokens_file: Optional[str] = None  # resolved: absolute, or in $CREDENTIALS_DIRECTORY
    #: TDgpt's built-in adapters send no header, so its model routes stay open by default
    protect_tdgpt_routes: bool = False
    #: a file holding the token that generated TDgpt adapters send (read by the anode's user)
    adapter_token_file: Optional[str] = None
    tokens: Tuple[token_files.Token, ...] = field(default=(), repr=False)

    @property
    def enabled(self) -> bool:
        return self.tokens_file is not None


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 5001
    threads: int = 32  # requests wait on models, not on cores; keep >= max_batch
    max_request_bytes: int = 16 * 1024 * 1024
    state_dir: Optional[str] = None
    torch_threads: Optional[int] = None
    # not compared: a reload applies auth at once, while the other server settings wait for
    # a restart (the daemon warns when those differ)
    auth: AuthSettings = field(default_factory=AuthSettings, compare=False)

    def resolved_state_dir(self) -> str:
        """Where downloaded model files go: the registry, systemd's StateDirectory, or ~/.cache."""
        if self.state_dir:
            return self.state_dir
        from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        if from_systemd:
            return from_systemd
        return str(Path.home() / ".cache" / "tsfmd")


@dataclass(frozen=True)
class Registry:
    path: str
    server: ServerSettings
    models: Tuple[ModelSpec, ...]
    warnings: Tuple[str, ...] = ()
    environments: Tuple[EnvironmentSpec, ...] = ()

    @property
    def enabled(self) -> Tuple[ModelSpec, ...]:
        return tuple(m for m in self.models if m.enabled)

    def model(self, key: str) -> ModelSpec:
        for spec in self.models:
            if spec.key == key:
                return spec
        raise KeyError(key)

    def environment(self, name: str) -> EnvironmentSpec:
        for env in self.environments:
            if env.name == name:
                return env
        raise KeyError(name)


# ---------------------------------------------------------------------------------------
# YAML loading: PyYAML silently keeps the last of two equal keys; a registry must not.


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping_without_duplicates(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"duplicate key {key!r} (first at line {seen[key] + 1}, again at line "
                f"{key_node.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def load_registry(path: str) -> Registry:
    """Read and validate the registry at `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(path, [f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_registry(text, path)


def parse_registry(text: str, path: str = "<string>") -> Registry:
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise RegistryError(path, [f"{path}: not valid YAML: {_yaml_problem(exc)}"]) from exc
    return _Validator(path).registry(document)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem}{where}"


# ---------------------------------------------------------------------------------------
# Validation: collect every problem instead of stopping at the first one.

_SERVER_FIELDS = {"host", "port", "threads", "max_request_bytes", "state_dir", "torch_threads",
                  "auth"}
_AUTH_FIELDS = {"tokens_file", "protect_tdgpt_routes", "adapter_token_file"}
_MODEL_FIELDS = {
    "family", "source", "route", "aliases", "device", "dtype", "context_limit",
    "horizon_limit", "enabled", "required", "description", "options", "batching", "adapter",
    "environment", "isolation", "ray",
}
_BATCHING_FIELDS = {"enabled", "max_batch", "max_wait_ms", "max_batch_points", "queue_size",
                    "timeout_s"}
_ADAPTER_FIELDS = {"connect_timeout_s", "read_timeout_s"}
_ENVIRONMENT_FIELDS = {"python", "requirements", "pip_options", "path"}
_RAY_FIELDS = {"num_replicas", "autoscaling", "num_cpus", "num_gpus", "max_ongoing_requests",
               "max_queued_requests", "batching"}
_RAY_AUTOSCALING_FIELDS = {"min_replicas", "max_replicas", "initial_replicas",
                           "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s"}


class _Validator:
    def __init__(self, path: str):
        self.path = path
        self.problems: List[str] = []
        self.warnings: List[str] = []
        self.environments: Dict[str, EnvironmentSpec] = {}
        self.broken_environments: set = set()

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{self.path}: {where}: {text}")

    def registry(self, document: Any) -> Registry:
        if document is None:
            document = {}
        if not isinstance(document, dict):
            self.problem("top level", "must be a mapping with `server:` and `models:`")
            raise RegistryError(self.path, self.problems)
        self._unknown(document, {"server", "environments", "models"}, "top level")
        server = self.server(document.get("server") or {})
        self.environments = self.environments_section(document.get("environments"))
        models = self.models(document.get("models"))
        if self.problems:
            raise RegistryError(self.path, self.problems)
        return Registry(self.path, server, tuple(models), tuple(self.warnings),
                        tuple(self.environments.values()))

    def _unknown(self, mapping: dict, known: set, where: str) -> None:
        for name in mapping:
            if name not in known:
                self.problem(where, f"unknown field {name!r} (known: {', '.join(sorted(known))})")

    # -- typed field readers; each returns the default after recording a problem -------

    def _int(self, mapping, name, where, default, low=None, high=None):
        if name not in mapping or mapping[name] is None:
            return default
        value = mapping[name]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"{where}.{name}", f"must be an integer, got {value!r}")
            return default
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.problem(f"{where}.{name}", f"must be {bounds}, got {value}")
            return default
        return value

    def _auto_int(self, mapping, name, where, default, low=None):
        """An integer, or "auto" (returned as None: decided when the model has loaded)."""
        if mapping.get(name) == "auto":
            return None
        if isinstance(mapping.get(name), str):
            self.problem(f"{where}.{name}", f'must be an integer or "auto", got {mapping[name]!r}')
            return default
        return self._int(mapping, name, where, default, low)

    def _number(self, mapping, name, where, default, low=0.0):
        if name not in mapping or mapping[name] is None:
            return default
        value = mapping[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            self.problem(f"{where}.{name}", f"must be a number >= {low}, got {value!r}")
            return default
        return float(value)

    def _bool(self, mapping, name, where, default):
        value = mapping.get(name, default)
        if not isinstance(value, bool):
            self.problem(f"{where}.{name}", f"must be true or false, got {value!r}")
            return default
        return value

    def _str(self, mapping, name, where, default):
        value = mapping.get(name, default)
        if value is None:
            return default
        if not isinstance(value, str):
            self.problem(f"{where}.{name}", f"must be a string, got {value!r}")
            return default
        return value

    # -- sections -----------------------------------------------------------------------

    def server(self, section: Any) -> ServerSettings:
        if not isinstance(section, dict):
            self.problem("server", "must be a mapping")
            return ServerSettings()
        self._unknown(section, _SERVER_FIELDS, "server")
        d = ServerSettings()
        host = self._str(section, "host", "server", d.host)
        if not host.strip():
            self.problem("server.host", "must not be empty")
        return ServerSettings(
            host=host,
            port=self._int(section, "port", "server", d.port, 1, 65535),
            threads=self._int(section, "threads", "server", d.threads, 1, 1024),
            max_request_bytes=self._int(
                section, "max_request_bytes", "server", d.max_request_bytes, 1024
            ),
            state_dir=self._str(section, "state_dir", "server", d.state_dir),
            torch_threads=self._int(section, "torch_threads", "server", None, 1, 1024),
            auth=self.auth(section.get("auth"), "server.auth"),
        )

    def auth(self, section: Any, where: str) -> AuthSettings:
        """Reads the tokens file now: a configured file that is missing, empty or malformed
        makes the registry invalid (refused at start, refused whole on reload)."""
        if section is None:
            return AuthSettings()
        if not isinstance(section, dict):
            self.problem(where, "must be a mapping")
            return AuthSettings()
        self._unknown(section, _AUTH_FIELDS, where)
        protect = self._bool(section, "protect_tdgpt_routes", where, False)
        adapter_file = self._str(section, "adapter_token_file", where, None)
        path = self._str(section, "tokens_file", where, None)
        if path is None or not path.strip():
            if path is not None or adapter_file or protect:
                self.problem(f"{where}.tokens_file", "missing: the file of accepted tokens "
                             "(without server.auth, every path is open)")
            return AuthSettings()
        path = token_files.resolve(path.strip(), self.path)
        found, problems = token_files.read_tokens(path)
        for text in problems:
            self.problem(f"{where}.tokens_file", text)
        if adapter_file is not None and not os.path.isabs(adapter_file):
            # written into the adapters, read in the anode's process: no base to be relative to
            self.problem(f"{where}.adapter_token_file", f"must be an absolute path, got "
                         f"{adapter_file!r}")
        elif adapter_file is not None:
            self._adapter_token(adapter_file, found, f"{where}.adapter_token_file")
        elif protect:
            self.warnings.append(
                f"{self.path}: {where}: protect_tdgpt_routes without adapter_token_file: "
                "no TDgpt adapter sends a token, so SQL forecasts through tsfmd are refused")
        return AuthSettings(path, protect, adapter_file, found)

    def _adapter_token(self, path: str, accepted, where: str) -> None:
        """The adapters' token must be one tsfmd accepts; checked where this user can read
        it (`tsfmd check` as root), skipped where it cannot (the daemon's own user)."""
        if not os.access(path, os.R_OK):
            return
        pairs, problems = token_files.read_secrets(path)
        for text in problems:
            self.problem(where, text)
        if pairs and token_files.digest(pairs[0][1]) not in {t.digest for t in accepted}:
            self.problem(where, f"{path}: its token is not in tokens_file: generated TDgpt "
                         "adapters would be refused")

    def models(self, section: Any) -> List[ModelSpec]:
        if section is None:
            self.problem("models", "missing: list the models to serve under `models:`")
            return []
        if not isinstance(section, dict):
            self.problem("models", "must be a mapping of algo name -> model entry")
            return []
        specs = [self.model(str(key), entry) for key, entry in section.items()]
        specs = [s for s in specs if s is not None]
        self._routes_unique(specs)
        return specs

    def model(self, key: str, entry: Any) -> Optional[ModelSpec]:
        where = f"models.{key}"
        if not _KEY.match(key):
            self.problem(where, "the key must be letters, digits, '-', '_' or '.'")
        elif key != key.lower():
            self.warnings.append(
                f"{self.path}: {where}: TDgpt lower-cases algo names, so SQL can reach this "
                f"model only as {key.lower()!r}; rename the key to lower case"
            )
        if not isinstance(entry, dict):
            self.problem(where, "must be a mapping with at least `family` and `source`")
            return None
        self._unknown(entry, _MODEL_FIELDS, where)
        family = self._str(entry, "family", where, "")
        if not family:
            self.problem(f"{where}.family", "missing")
        elif family not in family_names():
            self.problem(
                f"{where}.family", f"unknown family {family!r} (known: {', '.join(family_names())})"
            )
        source = self._str(entry, "source", where, "")
        if not source.strip():
            self.problem(f"{where}.source", "missing: a local directory or a hub id")
        route = self._route(entry.get("route", f"/{key}"), f"{where}.route")
        aliases = entry.get("aliases") or []
        if not isinstance(aliases, list):
            self.problem(f"{where}.aliases", "must be a list of routes")
            aliases = []
        aliases = tuple(self._route(a, f"{where}.aliases") for a in aliases)
        device = self._str(entry, "device", where, "auto")
        if not _DEVICE.match(device):
            self.problem(f"{where}.device", f"must be cpu, cuda, cuda:N or auto, got {device!r}")
        dtype = self._str(entry, "dtype", where, "auto")
        if dtype not in DTYPES:
            self.problem(f"{where}.dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            self.problem(f"{where}.options", "must be a mapping")
            options = {}
        isolation = self._str(entry, "isolation", where, "inprocess")
        if isolation not in ISOLATIONS:
            self.problem(f"{where}.isolation",
                         f"must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
        batching = self.batching(entry.get("batching"), f"{where}.batching")
        return ModelSpec(
            key=key,
            family=family,
            source=source,
            route=route,
            aliases=aliases,
            device=device,
            dtype=dtype,
            context_limit=self._int(entry, "context_limit", where, None, 1),
            horizon_limit=self._int(entry, "horizon_limit", where, None, 1),
            enabled=self._bool(entry, "enabled", where, True),
            required=self._bool(entry, "required", where, True),
            description=self._str(entry, "description", where, ""),
            options=dict(options),
            batching=batching,
            adapter=self.adapter(entry.get("adapter"), f"{where}.adapter"),
            environment=self.model_environment(entry, where),
            isolation=isolation,
            ray=self.ray(entry.get("ray"), f"{where}.ray", batching),
        )

    def batching(self, section: Any, where: str,
                 base: Optional[BatchingSettings] = None) -> BatchingSettings:
        """`base`: the settings a missing field keeps (default: BatchingSettings())."""
        d = base or BatchingSettings()
        section = self._mapping(section, where, _BATCHING_FIELDS)
        if section is None:
            return d
        return BatchingSettings(
            enabled=self._bool(section, "enabled", where, d.enabled),
            max_batch=self._int(section, "max_batch", where, d.max_batch, 1, 4096),
            max_wait_ms=self._number(section, "max_wait_ms", where, d.max_wait_ms),
            max_batch_points=self._auto_int(section, "max_batch_points", where,
                                            d.max_batch_points, 1),
            queue_size=self._int(section, "queue_size", where, d.queue_size, 1),
            timeout_s=self._number(section, "timeout_s", where, d.timeout_s, 0.001),
        )

    def adapter(self, section: Any, where: str) -> AdapterSettings:
        d = AdapterSettings()
        section = self._mapping(section, where, _ADAPTER_FIELDS)
        if section is None:
            return d
        return AdapterSettings(
            connect_timeout_s=self._number(
                section, "connect_timeout_s", where, d.connect_timeout_s, 0.001
            ),
            read_timeout_s=self._number(section, "read_timeout_s", where, d.read_timeout_s, 0.001),
        )

    # -- environments (tsfmd/envs) ------------------------------------------------------

    def environments_section(self, section: Any) -> Dict[str, EnvironmentSpec]:
        if section is None:
            return {}
        if not isinstance(section, dict):
            self.problem("environments", "must be a mapping of name -> environment")
            return {}
        found = {}
        for name, entry in section.items():
            env = self.environment(str(name), entry)
            if env is not None:
                found[env.name] = env
            else:  # reported once, here; its models are not also told it is unknown
                self.broken_environments.add(str(name))
        return found

    def environment(self, name: str, entry: Any) -> Optional[EnvironmentSpec]:
        where = f"environments.{name}"
        if not _KEY.match(name):
            self.problem(where, "the name must be letters, digits, '-', '_' or '.'")
            return None
        if not isinstance(entry, dict):
            self.problem(where, "must be a mapping with at least `requirements`")
            return None
        self._unknown(entry, _ENVIRONMENT_FIELDS, where)
        python = self._str(entry, "python", where, None) or sys.executable
        if not os.path.isabs(python):
            self.problem(f"{where}.python", f"must be an absolute path to an interpreter, "
                         f"got {python!r}")
        if "requirements" not in entry:
            self.problem(f"{where}.requirements", "missing: the pip requirements to install "
                         "(the worker needs numpy and the family's library)")
        requirements = self._strings(entry, "requirements", where)
        for text in requirements:
            if text.startswith("-"):
                self.problem(f"{where}.requirements", f"{text!r} is a pip option: put it "
                             "under pip_options")
        path = self._str(entry, "path", where, None)
        if path is not None and not os.path.isabs(path):
            self.problem(f"{where}.path", f"must be an absolute path, got {path!r}")
        return EnvironmentSpec(name=name, python=python, requirements=requirements,
                               pip_options=self._strings(entry, "pip_options", where), path=path)

    def _strings(self, mapping, name, where) -> Tuple[str, ...]:
        value = mapping.get(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(
                isinstance(v, str) and v.strip() for v in value):
            self.problem(f"{where}.{name}", f"must be a list of non-empty strings, got {value!r}")
            return ()
        return tuple(v.strip() for v in value)

    def model_environment(self, entry: dict, where: str) -> Optional[EnvironmentSpec]:
        name = self._str(entry, "environment", where, None)
        if name is None:
            return None
        if name in self.broken_environments:
            return None
        if name not in self.environments:
            defined = ", ".join(sorted(self.environments)) or "none"
            self.problem(f"{where}.environment", f"unknown environment {name!r} (defined under "
                         f"`environments:`: {defined})")
            return None
        return self.environments[name]
    def _mapping(self, section: Any, where: str, known: set) -> Optional[dict]:
        """An optional sub-mapping with its unknown keys reported; None when absent or not
        a mapping (that recorded as a problem)."""
        if section is None:
            return None
        if not isinstance(section, dict):
            self.problem(where, "must be a mapping")
            return None
        self._unknown(section, known, where)
        return section

    def ray(self, section: Any, where: str, batching: BatchingSettings) -> RaySettings:
        """`ray.batching` overrides the entry's `batching:` field by field (`batching`)."""
        d = RaySettings(batching=batching)
        section = self._mapping(section, where, _RAY_FIELDS)
        if section is None:
            return d
        replicas = self._int(section, "num_replicas", where, None, 1, 10000)
        autoscaling = self.ray_autoscaling(section.get("autoscaling"), f"{where}.autoscaling")
        if replicas is not None and autoscaling is not None:
            self.problem(where, "set num_replicas or autoscaling, not both")
        return RaySettings(
            num_replicas=replicas,
            autoscaling=autoscaling,
            num_cpus=self._number(section, "num_cpus", where, d.num_cpus),
            num_gpus=self._number(section, "num_gpus", where, d.num_gpus),
            max_ongoing_requests=self._int(section, "max_ongoing_requests", where, None, 1),
            max_queued_requests=self._int(section, "max_queued_requests", where, None, -1),
            batching=self.batching(section.get("batching"), f"{where}.batching", batching),
        )

    def ray_autoscaling(self, section: Any, where: str) -> Optional[RayAutoscaling]:
        section = self._mapping(section, where, _RAY_AUTOSCALING_FIELDS)
        if section is None:
            return None
        low = self._int(section, "min_replicas", where, 1, 0, 10000)
        high = self._int(section, "max_replicas", where, max(low, 1), 1, 10000)
        if high < low:
            self.problem(f"{where}.max_replicas", f"must be >= min_replicas ({low}), got {high}")
        return RayAutoscaling(
            min_replicas=low,
            max_replicas=high,
            initial_replicas=self._int(section, "initial_replicas", where, None, 0, 10000),
            target_ongoing_requests=self._number(section, "target_ongoing_requests", where, None),
            upscale_delay_s=self._number(section, "upscale_delay_s", where, None),
            downscale_delay_s=self._number(section, "downscale_delay_s", where, None),
        )

    def _route(self, route: Any, where: str) -> str:
        if not isinstance(route, str) or not _ROUTE.match(route) or "//" in route:
            self.problem(where, f"must be a path like /name, got {route!r}")
            return str(route)
        route = route.rstrip("/") or "/"
        if route == "/" or any(route == r or route.startswith(r + "/") for r in RESERVED_ROUTES):
            self.problem(where, f"{route} is reserved for tsfmd itself")
        return route

    def _routes_unique(self, specs: List[ModelSpec]) -> None:
        owner: Dict[str, str] = {}
        for spec in specs:
            if not spec.enabled:
                continue
            for route in spec.routes:
                if route in owner and owner[route] != spec.key:
                    self.problem(
                        f"models.{spec.key}.route",
                        f"route {route} is already served by models.{owner[route]}",
                    )
                elif route in owner:
                    self.problem(f"models.{spec.key}.aliases", f"route {route} is listed twice")
                owner.setdefault(route, spec.key)
