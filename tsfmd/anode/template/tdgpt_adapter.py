"""Template of the TDgpt adapter that `tsfmd adapters install` writes into the anode.

This file runs INSIDE TDgpt's anode (taosanode), not in tsfmd. Rules it follows, because
the anode's loader is fragile (see shared/TDGPT.md, "Details checked by running the anode's
own code"):
- imports only the standard library, `requests` and `taosanalytics`, and never raises at
  import or in `__init__` (an older anode stops entirely when one adapter does);
- defines exactly one `_`-prefixed class and imports no other `_` name (the ini-era loader
  registers every `_` class it can see in the module);
- keeps nothing mutable on the object: the anode copies it shallowly for every request.

The generator replaces each `__TSFMD_...__` token with a Python literal and the class name
`_TsfmdTemplateService` with one derived from the registry key.
"""
import logging

import requests

try:  # config.py-era anodes
    from taosanalytics.base import AbstractForecastService
except ImportError:  # ini-era anodes
    from taosanalytics.service import AbstractForecastService

ALGO_NAME = __TSFMD_NAME__
DESCRIPTION = __TSFMD_DESC__
#: where tsfmd serves this model; the anode's own config may point elsewhere
TSFMD_URL = __TSFMD_URL__
TSFMD_ROUTE = __TSFMD_ROUTE__
CONNECT_TIMEOUT_S = __TSFMD_CONNECT_TIMEOUT__
READ_TIMEOUT_S = __TSFMD_READ_TIMEOUT__
#: with auth on in tsfmd (server.auth.adapter_token_file): the file holding the token this
#: adapter sends, read at each request so a new token needs no anode restart; None: no token
TOKEN_FILE = __TSFMD_TOKEN_FILE__
#: the status probe (config.py-era list calls) must stay quick even if tsfmd is busy
STATUS_TIMEOUT_S = 5.0
#: what the anode's own classes answer from get_status() for a service that cannot serve
UNAVAILABLE = "UNAVAIL"
#: tsfmd's model listing: each model's routes and its state (loading, ready, failed)
MODELS_PATH = "/v1/models"


def _newest_anode_logger():
    from taosanalytics import log as anode_log  # config.py era, newer releases

    return anode_log.AppLogger.get_instance()


def _conf_anode_logger():
    from taosanalytics import conf as anode_conf  # ini era and early config.py releases

    app_logger = getattr(anode_conf, "app_logger", None)
    if app_logger is not None:
        return app_logger.log_inst
    return anode_conf.AppLogger.get_instance()


def anode_logger():
    """The logger whose handler writes the anode's log file (where it lives differs by
    release), so this adapter's warnings land there; never raises."""
    for find in (_newest_anode_logger, _conf_anode_logger):
        try:
            found = find()
        except Exception:  # this release keeps its logger elsewhere
            continue
        if isinstance(found, logging.Logger):
            return found
    return logging.getLogger("taosanalytics.tsfmd")


log = anode_logger()


def anode_configured_url(name):
    """The URL the anode's configuration gives `name`, or None; never raises."""
    try:
        from taosanalytics import conf as anode_conf
        configure = getattr(anode_conf, "Configure", None)
        if configure is not None and hasattr(configure, "get_instance"):
            url = configure.get_instance().get_tsfm_service(name)  # config.py era
        else:
            url = anode_conf.conf.get_tsfm_service(name)  # ini era: module-level object
    except Exception as exc:  # the anode's config must never break the adapter
        log.warning("tsfmd adapter %s: cannot read the anode's service URL (%s); using %s",
                    name, exc, TSFMD_URL)
        return None
    if isinstance(url, str) and url.strip():
        return url.strip()
    return None


def url_from_host_option(host):
    """`host=` in the SQL option: a full URL, or host:port (then this model's route)."""
    host = str(host).strip()
    if "://" not in host:
        host = "http://" + host
    scheme, _, rest = host.partition("://")
    if "/" not in rest:
        return f"{scheme}://{rest}{TSFMD_ROUTE}"
    return host


def file_token(text):
    """The first token in a token file's text: `token` or `name:token`, `#` comments."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.rpartition(":")[2].strip() or None
    return None


def auth_headers(url):
    """`Authorization: Bearer` for tsfmd when a token file is configured, sent only to the
    URLs the registry or the anode's config name: never to a host= a query chose, which could
    collect it. The token itself is never logged."""
    if not TOKEN_FILE:
        return {}
    trusted = [TSFMD_URL, anode_configured_url(ALGO_NAME) or TSFMD_URL]
    if split_url(url)[0] not in [split_url(u)[0] for u in trusted]:
        return {}
    try:
        with open(TOKEN_FILE, encoding="utf-8") as f:
            token = file_token(f.read())
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("tsfmd adapter %s: cannot read the token file %s (%s); sending no token",
                    ALGO_NAME, TOKEN_FILE, getattr(exc, "strerror", None) or exc)
        return {}
    if not token:
        log.warning("tsfmd adapter %s: no token in %s; sending none", ALGO_NAME, TOKEN_FILE)
        return {}
    return {"Authorization": "Bearer " + token}


def split_url(url):
    """'http://host:port/route' -> ('http://host:port', '/route')."""
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    return f"{scheme}://{host}", "/" + path.split("?")[0].rstrip("/")


def served_state(reply, route):
    """(state, reason) of the model at `route` in tsfmd's model listing, or None when the
    reply is not a tsfmd listing (the URL points at some other service)."""
    try:
        models = reply.json().get("models") if reply.status_code == 200 else None
    except (ValueError, AttributeError):
        return None
    if not isinstance(models, list):
        return None
    for entry in models:
        if isinstance(entry, dict) and route in (entry.get("routes") or []):
            return str(entry.get("status")), str(entry.get("reason") or "")
    return "not served", "no model of this tsfmd has that route"


def number_list(reply, field, rows, url):
    """reply[field] as `rows` floats, or a ValueError saying what is wrong with it."""
    values = reply.get(field)
    if not isinstance(values, list):
        raise ValueError(f"{ALGO_NAME}: tsfmd at {url} sent a reply without a '{field}' list")
    if len(values) < rows:
        raise ValueError(
            f"{ALGO_NAME}: tsfmd at {url} returned {len(values)} '{field}' values for "
            f"{rows} forecast rows (a short reply)"
        )
    out = []
    for i, value in enumerate(values[:rows]):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"{ALGO_NAME}: tsfmd at {url} sent a non-number in '{field}' at position {i}"
            )
        out.append(float(value))
    return out


def floats(values):
    """A series as JSON numbers; None (an SQL NULL) stays None for tsfmd to fill or refuse."""
    return [None if v is None else float(v) for v in values]


def error_text(response):
    """tsfmd's own message from an error reply, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "msg"):
            if isinstance(body.get(key), str):
                return body[key]
    text = (response.text or "").strip()
    return text[:300] if text else "(empty body)"


class _TsfmdTemplateService(AbstractForecastService):
    """Forecasts by POSTing the series to tsfmd."""

    name = ALGO_NAME
    desc = DESCRIPTION
    # a plain attribute: some releases define `is_builtins` as a property returning itself,
    # which recurses when their list endpoint reads it
    is_builtins = False

    def __init__(self):
        super().__init__()
        # per-request value set by set_params on the anode's copy; a str, never shared state
        self.host_option = None

    def set_params(self, params):
        super().set_params(params)
        host = params.get("host") if isinstance(params, dict) else None
        self.host_option = str(host) if host else None

    def service_url(self):
        """host= of this query, else the anode's config, else tsfmd's URL from the registry."""
        host = self.host_option or getattr(self, "host", None)
        if isinstance(host, str) and host.strip():
            return url_from_host_option(host)
        return anode_configured_url(ALGO_NAME) or TSFMD_URL

    def get_params(self):
        # plain JSON only: the anode's list endpoint (taosd's `update all anodes`) must serialise it
        return {
            "period": int(self.period or 0),
            "start": int(self.start_ts or 0),
            "every": int(self.time_step or 0),
            "forecast_rows": int(self.rows or 0),
            "return_conf": int(self.return_conf or 0),
            "conf": float(self.conf if self.conf is not None else 0.95),
            "service": str(self.service_url()),
        }

    def get_status(self):
        """READY only when tsfmd has this model loaded: the anode lists it from this answer
        (config.py era), and a loading or failed model would fail every query."""
        url = self.service_url()
        base, route = split_url(url)
        timeout = (CONNECT_TIMEOUT_S, STATUS_TIMEOUT_S)
        try:
            headers = auth_headers(url)
            listing = requests.get(base + MODELS_PATH, headers=headers, timeout=timeout)
            state = served_state(listing, route)
            if state is None:  # not a tsfmd: probe the route the way TDgpt's own classes do
                probe = requests.get(url, headers=headers, timeout=timeout)
                if probe.status_code == 503:
                    state = ("unavailable", error_text(probe))
        except Exception as exc:
            log.warning("tsfmd adapter %s: tsfmd at %s does not answer: %s", ALGO_NAME, url, exc)
            return UNAVAILABLE
        if state is not None and state[0] != "ready":
            log.warning("tsfmd adapter %s: the model at %s is %s%s; listed as unavailable",
                        ALGO_NAME, url, state[0], f" ({state[1]})" if state[1] else "")
            return UNAVAILABLE
        parent = getattr(super(), "get_status", None)
        return parent() if parent is not None else "READY"

    def request_body(self):
        # plain floats/ints: a release may hand over numpy values, which json cannot encode
        body = {"input": floats(self.list), "next_len": int(self.rows)}
        if self.ts_list is not None and len(self.ts_list):
            body["ts"] = [int(t) for t in self.ts_list]
        conf = float(self.conf) if self.conf is not None else 0.95
        if 0.0 < conf < 1.0:  # sent even when return_conf is 0, as TDgpt does
            body["conf_interval"] = conf
        for field in ("past_dynamic_real", "dynamic_real"):
            covariates = getattr(self, field, None)
            if covariates is not None and len(covariates):
                body[field] = [floats(column) for column in covariates]
        return body

    def post(self, url, body):
        try:
            return requests.post(url, json=body, headers=auth_headers(url),
                                 timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        except requests.exceptions.ConnectTimeout:
            raise ValueError(
                f"{ALGO_NAME}: tsfmd at {url} did not accept a connection within "
                f"{CONNECT_TIMEOUT_S:g}s (adapter.connect_timeout_s in tsfmd's registry)"
            ) from None
        except requests.exceptions.ReadTimeout:
            raise ValueError(
                f"{ALGO_NAME}: tsfmd at {url} did not answer within {READ_TIMEOUT_S:g}s "
                "(adapter.read_timeout_s in tsfmd's registry)"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            raise ValueError(
                f"{ALGO_NAME}: cannot reach tsfmd at {url}: {type(exc).__name__}; is tsfmd "
                "running (systemctl status tsfmd)?"
            ) from None
        except (requests.exceptions.RequestException, TypeError, ValueError) as exc:
            raise ValueError(f"{ALGO_NAME}: request to tsfmd at {url} failed: {exc}") from None

    def execute(self):
        url = self.service_url()
        if self.list is None or len(self.list) == 0:
            raise ValueError(f"{ALGO_NAME}: no input values to forecast from")
        rows = int(self.rows or 0)
        if rows <= 0:
            raise ValueError(f"{ALGO_NAME}: the number of forecast rows must be positive")
        try:
            body = self.request_body()
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{ALGO_NAME}: cannot send this series to tsfmd at {url}: {exc}"
            ) from None
        response = self.post(url, body)
        if response.status_code != 200:
            raise ValueError(
                f"{ALGO_NAME}: tsfmd at {url} answered HTTP {response.status_code}: "
                f"{error_text(response)}"
            )
        try:
            reply = response.json()
        except ValueError:
            raise ValueError(f"{ALGO_NAME}: tsfmd at {url} sent a reply that is not JSON") from None
        if not isinstance(reply, dict):
            raise ValueError(f"{ALGO_NAME}: tsfmd at {url} sent a reply that is not a JSON object")
        values = number_list(reply, "output", rows, url)
        timestamps = [int(self.start_ts) + i * int(self.time_step) for i in range(rows)]
        if not int(self.return_conf):
            return {"res": [timestamps, values], "conf": 0}
        if reply.get("lower") is not None and reply.get("upper") is not None:
            lower = number_list(reply, "lower", rows, url)
            upper = number_list(reply, "upper", rows, url)
        else:  # the model gives no interval: TDgpt's convention is the values three times
            lower, upper = list(values), list(values)
        return {"res": [timestamps, values, lower, upper], "conf": float(self.conf)}

