"""The web page at `/`, in a real headless Chromium against a real tsfmd on loopback.

The browser (Debian's `chromium`, driven over the DevTools protocol: tests/headless.py says
why) loads the page tsfmd serves, the test fills the forecast form and clicks, and the
numbers the page plotted (data attributes on the SVG points, and the points' positions on
the drawn scale) are compared with what a direct POST to the same TDgpt route answers.
The models are fracast (bundled weights) and a tiny random-weight Chronos-Bolt
(tests/tinymodels.py), whose numbers mean nothing but are what tsfmd serves.

Screenshots are test artifacts: written under pytest's tmp dir and to
$TSFMD_TEST_ARTIFACTS (default tests/artifacts/). Without chromium the browser tests skip
loudly, except under CI=true, where they fail.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pytest
import requests

import tinymodels
from conftest import start_tsfmd
from headless import BrowserError, Chromium, find_chromium
from tsfmd.core.registry import RegistryError, parse_registry

ARTIFACTS = Path(os.environ.get("TSFMD_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
SHORT_LIMIT = 16  # fracast-short's horizon_limit: the page must show tsfmd's refusal
TOKEN = "page-test-token-1234"


def chromium_binary() -> str:
    found = find_chromium()
    if found:
        return found
    message = ("chromium is not installed, so the web page cannot be tested in a real "
               "browser: install the Debian package `chromium` (.ci/install-apt does)")
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
    warnings.warn(message)
    pytest.skip(f"SKIPPED (not in CI): {message}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("webui")
    bolt = tinymodels.chronos_bolt(root / "bolt", prediction_length=16)
    models = (
        "  fracast:\n    family: fracast\n    source: bundled\n    device: cpu\n"
        "    description: fracast, bundled weights\n"
        f"  bolt:\n    family: chronos-bolt\n    source: {bolt}\n    device: cpu\n"
        "  fracast-short:\n    family: fracast\n    source: bundled\n    device: cpu\n"
        f"    horizon_limit: {SHORT_LIMIT}\n"
    )
    daemon = start_tsfmd(root, models)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium_binary()
    with Chromium(binary, tmp_path_factory.mktemp("chromium") / "profile") as chromium:
        yield chromium


@pytest.fixture
def page(browser, server):
    """The page freshly loaded, its models table filled from /v1/models."""
    browser.open(server.url + "/")
    browser.wait_for("document.querySelectorAll('#models tbody tr[data-key]').length === 3")
    yield browser
    problems = [p for p in browser.problems() if not _expected_refusal(p)]
    assert problems == [], f"the page reported problems: {problems}"


def _expected_refusal(problem: str) -> bool:
    # Chromium logs every non-2xx fetch; the refusals tests ask for are not page bugs
    return "status of 400" in problem and "/fracast-short" in problem


def shoot(browser, tmp_path, name: str) -> Path:
    browser.evaluate("document.querySelectorAll('details.numbers').forEach(d => d.open = false)")
    png = browser.screenshot(tmp_path / name, ARTIFACTS / name)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    return ARTIFACTS / name


def run_forecast(page, example: str, model_a: str, model_b: str, horizon: int, conf: str):
    page.choose("#example", example)
    page.choose("#model-a", model_a)
    page.choose("#model-b", model_b)
    page.type_into("#horizon", str(horizon))
    page.choose("#conf", conf)
    page.click("#run")
    page.wait_for("document.getElementById('results').dataset.state === 'done'")


def series_in_box(page) -> list:
    """The series as the text box holds it, read as Python reads numbers."""
    text = page.evaluate("document.getElementById('series').value")
    return [float(t) for t in re.split(r"[\s,;]+", text.strip()) if t]


def panels(page) -> list:
    """Every result panel: its model, HTTP status, error text, and what its SVG drew."""
    return page.evaluate("""[...document.querySelectorAll('#results article.result')].map(a => {
      const svg = a.querySelector('svg.plot');
      const box = a.getBoundingClientRect();
      const panel = {model: a.dataset.model, route: a.dataset.route,
        status: Number(a.dataset.status), left: box.left, top: box.top,
        error: a.querySelector('.error-text')?.textContent ?? null};
      if (!svg) return panel;
      const history = svg.querySelector('path.history');
      panel.scale = Object.fromEntries(['ymin', 'ymax', 'top', 'bottom']
        .map(k => [k, Number(svg.dataset[k])]));
      panel.history = {offset: Number(history.dataset.offset),
        values: JSON.parse(history.dataset.values)};
      panel.points = [...svg.querySelectorAll('circle.point')].map(c => ({
        step: Number(c.dataset.step), output: Number(c.dataset.output),
        lower: c.dataset.lower === undefined ? null : Number(c.dataset.lower),
        upper: c.dataset.upper === undefined ? null : Number(c.dataset.upper),
        cx: Number(c.getAttribute('cx')), cy: Number(c.getAttribute('cy'))}));
      panel.band = svg.querySelector('polygon.band')?.getAttribute('points') ?? null;
      return panel;
    })""")


def assert_plotted_as_answered(panel: dict, answer: dict, history: list) -> None:
    """The panel drew exactly the API's numbers, each at its place on the drawn scale."""
    assert panel["status"] == 200 and panel["error"] is None
    assert panel["history"] == {"offset": 0, "values": history}
    points = panel["points"]
    assert [p["step"] for p in points] == list(range(1, len(answer["output"]) + 1))
    # same series, same model, batch of one both times: the same float64 numbers
    assert [p["output"] for p in points] == answer["output"]
    assert [p["lower"] for p in points] == answer["lower"]
    assert [p["upper"] for p in points] == answer["upper"]
    scale = panel["scale"]
    assert scale["ymin"] < min(answer["lower"] + history)
    assert scale["ymax"] > max(answer["upper"] + history)

    def y(value):
        share = (value - scale["ymin"]) / (scale["ymax"] - scale["ymin"])
        return scale["bottom"] - share * (scale["bottom"] - scale["top"])

    for p in points:
        assert p["cy"] == pytest.approx(y(p["output"]), abs=1e-6)
    # the band: the upper edge left to right, then the lower edge right to left
    corners = [tuple(map(float, xy.split(","))) for xy in panel["band"].split()]
    h = len(points)
    expected = ([(p["cx"], y(p["upper"])) for p in points]
                + [(p["cx"], y(p["lower"])) for p in reversed(points)])
    assert len(corners) == 2 * h
    for (cx, cy), (ex, ey) in zip(corners, expected):
        assert cx == pytest.approx(ex, abs=0.01) and cy == pytest.approx(ey, abs=0.01)


def direct(server, route: str, history: list, horizon: int, conf: float) -> requests.Response:
    return server.post(route, {"input": history, "next_len": horizon, "conf_interval": conf})


# -- without a browser ---------------------------------------------------------------------

def test_root_serves_the_page_and_tdgpt_routes_answer_as_before(server):
    page = server.get("/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert re.findall(r'(?:src|href)="([^"]+)"', page.text) == [
        "data:,", "/ui/style.css", "/ui/app.js"]  # nothing from outside
    for asset in ("app.js", "api.js", "plot.js", "examples.js", "style.css"):
        served = server.get(f"/ui/{asset}")
        assert served.status_code == 200, asset
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", served.text), asset
    missing = server.get("/ui/nothing.js")
    assert missing.status_code == 404 and missing.json()["status"] == "error"
    refused = server.post("/", {"input": [1, 2, 3], "next_len": 2})
    assert refused.status_code == 405 and refused.json()["status"] == "error"
    # TDgpt's probe and forecasts are untouched
    probe = server.get("/fracast")
    assert probe.status_code == 405 and probe.headers["Allow"] == "POST"
    assert server.post("/fracast", {"input": list(range(40)), "next_len": 3}).status_code == 200
    unknown = server.post("/nowhere", {"input": [1, 2], "next_len": 1})
    assert unknown.status_code == 404 and "served routes" in unknown.json()["error"]


@pytest.mark.parametrize("route", ["/", "/ui", "/ui/app.js"])
def test_no_model_route_may_take_the_pages_paths(route):
    text = f"models:\n  a:\n    family: fracast\n    source: bundled\n    route: {route}\n"
    with pytest.raises(RegistryError) as refused:
        parse_registry(text, "reg.yaml")
    assert refused.value.problems == [f"reg.yaml: models.a.route: {route} is reserved for "
                                      "tsfmd itself"]


# -- in the browser ------------------------------------------------------------------------

def test_page_lists_every_model_with_state_limits_licence_and_queue(page, server):
    rows = page.evaluate("""[...document.querySelectorAll('#models tbody tr')].map(r =>
      Object.fromEntries(['key', 'route', 'state', 'licence', 'queue']
        .map(c => [c, r.querySelector('td.' + c).textContent])
        .concat([['numbers', [...r.querySelectorAll('td.num')].map(td => td.textContent)]])))""")
    listed = server.get("/v1/models").json()["models"]
    assert [r["key"] for r in rows] == [m["key"] for m in listed]
    for row, info in zip(rows, listed):
        assert row["route"] == " ".join(info["routes"])
        assert row["state"] == info["status"] == "ready"
        assert row["numbers"] == [str(info["context_limit"]), str(info["horizon_limit"])]
        assert row["licence"] == (info.get("license") or "unknown")
        batching = info["batching"]
        assert row["queue"].startswith(
            f"{batching['queue_depth']} waiting of {batching['queue_size']}"
            f"{batching['running']} running")
    assert rows[2]["numbers"][1] == str(SHORT_LIMIT)
    reload = page.evaluate("[document.getElementById('reload').dataset.state,"
                           " document.getElementById('reload').textContent]")
    assert reload == ["none", "no reload since tsfmd started (0 started, 0 succeeded, 0 failed)"]


def test_a_forecast_through_the_page_plots_the_api_answer(page, server, tmp_path):
    run_forecast(page, "weekly", "bolt", "", horizon=12, conf="0.9")
    history = series_in_box(page)
    assert len(history) == 112
    [panel] = panels(page)
    assert panel["model"] == "bolt" and panel["route"] == "/bolt"
    answer = direct(server, "/bolt", history, 12, 0.9)
    assert answer.status_code == 200, answer.text
    assert_plotted_as_answered(panel, answer.json(), history)
    shoot(page, tmp_path, "webui-forecast.png")


def test_two_models_side_by_side_on_one_scale(page, server, tmp_path):
    run_forecast(page, "sine", "fracast", "bolt", horizon=12, conf="0.95")
    history = series_in_box(page)
    drawn = panels(page)
    assert [p["model"] for p in drawn] == ["fracast", "bolt"]
    for panel in drawn:
        answer = direct(server, panel["route"], history, 12, 0.95)
        assert answer.status_code == 200, answer.text
        assert_plotted_as_answered(panel, answer.json(), history)
    left, right = drawn
    assert left["scale"] == right["scale"]  # comparable at a glance
    assert left["top"] == right["top"] and left["left"] < right["left"]  # beside, not below
    assert left["points"] != right["points"]  # two models, two forecasts
    shoot(page, tmp_path, "webui-side-by-side.png")


def test_a_refused_forecast_shows_tsfmds_error(page, server, tmp_path):
    horizon = SHORT_LIMIT + 8
    run_forecast(page, "counter", "fracast", "fracast-short", horizon=horizon, conf="0.8")
    history = series_in_box(page)
    served, refused = panels(page)
    assert_plotted_as_answered(served, direct(server, "/fracast", history, horizon, 0.8).json(),
                               history)
    answer = direct(server, "/fracast-short", history, horizon, 0.8)
    assert answer.status_code == 400
    assert (refused["model"], refused["status"]) == ("fracast-short", 400)
    assert refused["error"] == answer.json()["error"]
    assert str(SHORT_LIMIT) in refused["error"]
    assert "points" not in refused  # nothing plotted for a refusal
    shoot(page, tmp_path, "webui-refused.png")


def test_a_pasted_series_is_forecast_and_bad_text_is_named(page, server):
    pasted = [3.5, 4.25, 5.0, 4.0] * 12
    pasted[20] = None  # a missing point, which tsfmd fills
    page.type_into("#series", json.dumps(pasted))
    run_forecast(page, "", "fracast", "", horizon=6, conf="0.5")
    [panel] = panels(page)
    answer = direct(server, "/fracast", pasted, 6, 0.5).json()
    assert [p["output"] for p in panel["points"]] == answer["output"]
    assert panel["history"]["values"] == pasted
    page.type_into("#series", "1, 2, three, 4")
    page.click("#run")
    page.wait_for("document.getElementById('results').dataset.state === 'invalid'")
    assert page.evaluate("document.getElementById('results').textContent") == (
        'point 3 of the series is not a number: "three"')


def test_the_token_is_kept_for_the_tab_and_sent_on_every_call(page, server):
    page.call("Network.enable")
    try:
        page.type_into("#token", TOKEN)
        page.click("#token-save")
        page.wait_for("document.getElementById('token-state').textContent !== ''")
        assert page.evaluate("sessionStorage.getItem('tsfmd.token')") == TOKEN
        page.events.clear()  # what was sent before "Use" carried no token
        run_forecast(page, "sine", "fracast", "", horizon=4, conf="0.9")
        sent = _calls(page)
        assert {"/v1/models", "/v1/status", "/fracast"} <= set(sent)
        assert all(auth == [f"Bearer {TOKEN}"] for auth in sent.values()), sent
        # a reload of the page keeps it (same tab); "Forget" drops it
        page.open(server.url + "/")
        page.wait_for("document.getElementById('token').value === %s" % json.dumps(TOKEN))
        page.click("#token-clear")
        page.wait_for("sessionStorage.getItem('tsfmd.token') === null")
        page.events.clear()
        run_forecast(page, "sine", "fracast", "", horizon=4, conf="0.9")
        assert _calls(page)["/fracast"] == []
    finally:
        page.call("Network.disable")


def _calls(page) -> dict:
    """path -> the Authorization headers of every request the page sent there."""
    page.drain_events(0.2)
    sent: dict = {}
    for event in page.events:
        if event.get("method") != "Network.requestWillBeSent":
            continue
        request = event["params"]["request"]
        path = "/" + request["url"].split("/", 3)[3].split("?")[0]
        headers = {k.lower(): v for k, v in request["headers"].items()}
        if path.startswith(("/v1/", "/fracast", "/bolt")):
            sent.setdefault(path, [])
            if "authorization" in headers:
                sent[path].append(headers["authorization"])
    return sent


def test_the_last_reload_outcome_is_shown(page, server, tmp_path):
    """Last: a failed reload leaves the registry as it was, plus a model that failed."""
    config = server.config_path
    original = config.read_text()
    config.write_text(original + "  lost:\n    family: fracast\n"
                      f"    source: {tmp_path / 'no-such-weights'}\n    device: cpu\n")
    try:
        assert server.daemon.reload() is False
        reloads = server.get("/v1/status").json()["reloads"]
        shown = page.wait_for(
            "document.getElementById('reload').dataset.state === 'failed' &&"
            " document.getElementById('reload').innerText", timeout=60)
        assert shown.startswith("failed (1 started, 0 succeeded, 1 failed)")
        assert reloads["last_error"] in shown and "lost" in reloads["last_error"]
        lost = page.wait_for(
            "document.querySelector('#models tr[data-key=lost] td.state')?.innerText")
        assert lost.startswith("failed")
        shoot(page, tmp_path, "webui-reload-failed.png")
    finally:
        config.write_text(original)
    assert server.daemon.reload() is True
    page.wait_for("document.getElementById('reload').dataset.state === 'succeeded'", 60)
    assert "removed: lost" in page.evaluate("document.getElementById('reload').innerText")


def test_browser_errors_are_reported_not_swallowed(browser, server):
    """The harness itself: a page error reaches the test (so `page` checks mean something)."""
    browser.open(server.url + "/")
    with pytest.raises(BrowserError, match="nothing on the page matches"):
        browser.click("#no-such-button")
    browser.evaluate("setTimeout(() => { throw new Error('boom from the page'); }, 0); 1")
    browser.evaluate("new Promise(done => setTimeout(done, 50))")  # the throw runs first
    assert any("boom from the page" in p for p in browser.problems())
