"""The web page at `/`: every model at a glance, and forecasts plotted in the browser.

The page is static files (tsfmd/api/ui/static/, shipped as package data) served at `/` and
`/ui/<file>`. It only reads the daemon's own JSON routes (/v1/models, /v1/status) and POSTs
to a model's TDgpt route, so what it plots is exactly what a client gets. Nothing comes
from outside: no CDN, no web fonts; the Content-Security-Policy below says so to the
browser too.
"""
from __future__ import annotations

from flask import Blueprint, Response

blueprint = Blueprint("ui", __name__, static_folder="static", static_url_path="/ui")

#: the page may talk to this daemon only (fetch, scripts, styles, images)
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@blueprint.get("/")
def index() -> Response:
    return blueprint.send_static_file("index.html")


@blueprint.after_request
def _locked_down(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"  # revalidate: a new tsfmd, a new page
    return response
