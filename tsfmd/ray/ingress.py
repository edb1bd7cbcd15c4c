"""The ingress deployment: tsfmd's own Flask app behind Ray Serve's HTTP proxy.

Every route `tsfmd serve` answers (TDgpt's model routes and aliases, /v1/models, /healthz,
/readyz, the native /v1 API, KServe's /v2, /metrics, /openapi.json, the web page) is
answered here by the same Flask app (tsfmd/api/app.py `create_app`, with auth), so the two
cannot drift apart: the only difference is what its model table holds, `RemoteHandle`s
that send each forecast to the model's own deployment (tsfmd/ray/remote.py).

How a request gets there: Serve hands the ingress a Starlette request; the ingress reads the
body, builds the WSGI environ werkzeug builds for any WSGI server (werkzeug.test's
EnvironBuilder, with the client's address and tsfmd's arrival stamp that waitress would
set) and runs the app on a thread of its own (the app blocks while a model answers), then
returns status, headers and body as a Starlette response. Chosen over Serve's FastAPI
ingress because a second implementation of the routes would have to be kept equal to the
first forever; over a WSGI-to-ASGI adapter because Flask needs the full body anyway and this
is a few lines with no other dependency.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import yaml
from ray import serve
from starlette.requests import Request
from starlette.responses import Response
from werkzeug.test import EnvironBuilder, run_wsgi_app

from tsfmd.api import auth
from tsfmd.api.app import create_app
from tsfmd.core.admission import Admission
from tsfmd.core.models import Models, ModelTable
from tsfmd.core.registry import parse_registry
from tsfmd.daemon.waitress_hooks import ARRIVED
from tsfmd.ray.config import INGRESS_MAX_ONGOING, model_app
from tsfmd.ray.remote import RemoteHandle, refresh_all

log = logging.getLogger("tsfmd.ray")

#: how often the ingress asks each model's replicas for their state
REFRESH_S = 1.0
#: the longest a starting ingress waits for the models' first answers
FIRST_REFRESH_S = 10.0
#: headers of one hop, never copied from the app's answer
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}


@serve.deployment(max_ongoing_requests=INGRESS_MAX_ONGOING, ray_actor_options={"num_cpus": 0})
class Ingress:
    """`registry`: the whole registry, as YAML reads it."""

    def __init__(self, registry: dict):
        # in the registry's order: /v1/models lists the models as `tsfmd serve` does
        parsed = parse_registry(yaml.safe_dump(registry, sort_keys=False), "<ray config>")
        state_dir = parsed.server.resolved_state_dir()
        self.models = Models(state_dir)
        self.models.table = ModelTable.build(
            RemoteHandle(spec, state_dir, _handle_getter(spec.key))
            for spec in parsed.enabled)
        server = parsed.server
        self.flask = create_app(self.models, server.max_request_bytes, None, Admission(None))
        auth.install(self.flask, self.models, server.auth)
        self.calls = ThreadPoolExecutor(INGRESS_MAX_ONGOING, thread_name_prefix="ingress")
        self._stop, refreshed = threading.Event(), threading.Event()
        threading.Thread(target=self._refresh, args=(refreshed,), name="refresh-models",
                         daemon=True).start()
        # a replacement ingress (a redeploy) takes traffic once it knows which models serve
        refreshed.wait(FIRST_REFRESH_S)

    def _refresh(self, refreshed: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                refresh_all(list(self.models.table.handles.values()))
            except Exception:  # never let the refresher die: the state would freeze
                log.exception("refreshing the models' state failed")
            refreshed.set()
            self._stop.wait(REFRESH_S)

    async def __call__(self, request: Request) -> Response:
        arrived = time.monotonic()  # the deadline counts from here, as under waitress
        body = await request.body()
        environ = _environ(request, body, arrived)
        loop = asyncio.get_running_loop()
        status, headers, content = await loop.run_in_executor(self.calls, self._run, environ)
        return Response(content, status_code=status, headers=headers)

    def _run(self, environ: dict):
        chunks, status, headers = run_wsgi_app(self.flask, environ, buffered=True)
        try:
            content = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        kept = {name: value for name, value in headers.items()
                if name.lower() not in _HOP_HEADERS}
        return int(status.split(" ", 1)[0]), kept, content

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


def _environ(request: Request, body: bytes, arrived: float) -> dict:
    url = request.url
    builder = EnvironBuilder(
        path=url.path, method=request.method, query_string=url.query,
        base_url=f"{url.scheme}://{url.netloc}", headers=list(request.headers.items()),
        data=body)
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    if request.client is not None:
        environ["REMOTE_ADDR"] = request.client.host
    environ[ARRIVED] = arrived
    return environ


def _handle_getter(key: str):
    return lambda: serve.get_deployment_handle(key, app_name=model_app(key))


def app(args: dict):
    """`tsfmd.ray:app`, the builder the ingress application imports (config.py)."""
    return Ingress.bind(args["registry"])
