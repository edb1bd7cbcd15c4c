"""A real headless Chromium, driven over the DevTools protocol on a pipe.

Why this and not selenium + chromium-driver: Chromium speaks the DevTools protocol itself
on file descriptors 3 and 4 (`--remote-debugging-pipe`, the transport Puppeteer and
Playwright use), so the test needs only the `chromium` package: no second binary whose
version must match, no Python dependency, no port to pick, and the browser dies with its
pipe. The protocol is JSON messages ended by a NUL byte; the handful of commands used here
(Page.navigate, Runtime.evaluate, Input.dispatchMouseEvent, Page.captureScreenshot) are
stable parts of it.

Every wait is bounded, and the browser is started so that it calls nothing outside this
machine (no component updates, no metrics, no sync).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

#: the Debian package's binary first; CHROMIUM may name another build
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> Optional[str]:
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named) or (named if os.access(named, os.X_OK) else None)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(AssertionError):
    """The browser or the page did something the test did not expect."""


class Chromium:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, binary: str, profile: Path, width: int = 1360, height: int = 900):
        self.binary, self.profile = binary, Path(profile)
        self.width, self.height = width, height
        self.events: List[dict] = []  # every event seen, for the test to inspect
        self._buffer = b""
        self._next_id = 0
        self._session: Optional[str] = None

    # -- process -----------------------------------------------------------------------

    def __enter__(self) -> "Chromium":
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = [
            "--headless", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-gpu",
            "--disable-dev-shm-usage", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update",
            "--disable-default-apps", "--metrics-recording-only", "--mute-audio",
            "--hide-scrollbars", "--font-render-hinting=none",
            f"--window-size={self.width},{self.height}", "about:blank",
        ]
        if os.geteuid() == 0:  # CI containers run as root, where the sandbox cannot start
            flags.insert(0, "--no-sandbox")
        # bash puts the pipe ends on fds 3 and 4, where Chromium looks for them (dash
        # cannot name fds above 9)
        launcher = (f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} '
                    f"{to_browser_r}<&- {from_browser_w}>&-")
        self.log_path = self.profile.parent / "chromium.log"
        self.profile.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", launcher, self.binary, *flags],
                pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True,
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        try:
            self._attach()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.process.poll() is None:
                try:
                    self.send("Browser.close", timeout=10)
                except (BrowserError, OSError):
                    pass
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()  # only the browser this object started
            self.process.wait(timeout=15)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _attach(self) -> None:
        targets = self.send("Target.getTargets", timeout=60)["targetInfos"]
        pages = [t for t in targets if t["type"] == "page"]
        target = pages[0]["targetId"] if pages else self.send(
            "Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.send("Target.attachToTarget",
                                  {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": self.width, "height": self.height, "deviceScaleFactor": 1,
            "mobile": False})

    # -- protocol ----------------------------------------------------------------------

    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None,
             timeout: float = 60.0) -> dict:
        """Send one command and return its result (a protocol error raises BrowserError)."""
        self._next_id += 1
        message: Dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def call(self, method: str, params: Optional[dict] = None, timeout: float = 60.0) -> dict:
        """A command to the page's session."""
        return self.send(method, params, self._session, timeout)

    def _receive(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer {waiting_for} in time")
            readable, _, _ = select.select([self._from_browser], [], [], left)
            if not readable:
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(
                    f"Chromium closed its pipe while {waiting_for} was pending "
                    f"(exit {self.process.poll()}); see {self.log_path}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def drain_events(self, seconds: float = 0.0) -> None:
        """Read what the browser has sent without asking (events), for up to `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            readable, _, _ = select.select([self._from_browser], [], [],
                                           max(0.0, deadline - time.monotonic()))
            if not readable:
                return
            self.events.append(self._receive(time.monotonic() + 10, "an event"))

    # -- page --------------------------------------------------------------------------

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.call("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
            "userGesture": True}, timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"the page threw evaluating {expression!r}: {text}")
        return result["result"].get("value")

    def open(self, url: str, timeout: float = 60.0) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'", timeout)

    def wait_for(self, expression: str, timeout: float = 120.0) -> Any:
        """Poll a JavaScript expression until it is truthy; its value, or BrowserError."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"the page never made {expression!r} true in {timeout:.0f} s")
            time.sleep(0.1)

    def click(self, selector: str, timeout: float = 30.0) -> None:
        """A real mouse click (press and release) at the middle of the element, once the
        element is what a click there would hit (scrolling and restored scroll settle)."""
        where = f"""(async () => {{
          const e = document.querySelector({json.dumps(selector)});
          if (!e) return null;
          e.scrollIntoView({{block: 'center'}});
          await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
          const r = e.getBoundingClientRect();
          const x = r.left + r.width / 2, y = r.top + r.height / 2;
          const hit = document.elementFromPoint(x, y);
          return {{x, y, hit: !!hit && e.contains(hit)}};
        }})()"""
        deadline = time.monotonic() + timeout
        while True:
            box = self.evaluate(where)
            if box is None:
                raise BrowserError(f"nothing on the page matches {selector}")
            if box["hit"]:
                break
            if time.monotonic() > deadline:
                raise BrowserError(f"{selector} stays covered: a click would miss it")
            time.sleep(0.1)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {
                "type": kind, "x": box["x"], "y": box["y"], "button": "left",
                "clickCount": 1 if kind != "mouseMoved" else 0})

    def type_into(self, selector: str, text: str) -> None:
        """Focus a field, empty it, and type `text` into it (input events, as keystrokes)."""
        found = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return false; e.focus(); e.value = ''; return true; })()")
        if not found:
            raise BrowserError(f"nothing on the page matches {selector}")
        self.call("Input.insertText", {"text": text})

    def choose(self, selector: str, value: str) -> None:
        """Pick an option of a <select> as a user's choice does: set it, fire `change`."""
        chosen = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            f" const v = {json.dumps(value)};"
            " if (!e || ![...e.options].some(o => o.value === v && !o.disabled)) return false;"
            " e.value = v; e.dispatchEvent(new Event('change', {bubbles: true}));"
            " return true; })()")
        if not chosen:
            raise BrowserError(f"{selector} has no option {value!r} to choose")

    def screenshot(self, *paths: Path) -> bytes:
        """A PNG of the whole page (not only the window), written to each of `paths`."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": self.width, "height": max(self.height, int(size["height"]) + 1),
            "deviceScaleFactor": 1, "mobile": False})
        try:
            png = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
        finally:
            self.call("Emulation.setDeviceMetricsOverride", {
                "width": self.width, "height": self.height, "deviceScaleFactor": 1,
                "mobile": False})
        for path in paths:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(png)
        return png

    def problems(self) -> List[str]:
        """What the page reported as wrong: uncaught exceptions, console errors, and
        browser log errors (a refused Content-Security-Policy, a failed load)."""
        self.drain_events()
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description")
                             or details.get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(a.get("value", a.get("description")))
                                      for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        return found
