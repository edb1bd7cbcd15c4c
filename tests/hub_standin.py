"""A stand-in Hugging Face hub on loopback, for `tsfmd pull` tests.

No hub is reachable from the test machines, so this serves one repository from a local
directory with just what huggingface_hub 2.4's snapshot_download / hf_hub_download and
tsfmd's resumable fetch call (read from the installed huggingface_hub: hf_api.py
repo_info and list_repo_tree, file_download.py get_hf_file_metadata and http_get):

* GET /api/models/{repo}[/revision/{rev}]: {"id", "sha", "siblings"} (repo_info)
* GET /api/models/{repo}/tree/{rev}?recursive=..: [{"type", "path", "size", "oid",
  "lfs": {"oid", "size", "pointerSize"}}] in one page (no Link header)
* HEAD and GET /{repo}/resolve/{rev}/{path}: ETag (the sha256 for LFS files, the git blob
  sha1 for the others), X-Repo-Commit, Content-Length, X-Linked-Etag/X-Linked-Size for LFS
  files, Accept-Ranges; a GET honours `Range: bytes=N-` with 206 and Content-Range.

It records every request (method, path, Range and Authorization headers) and the bytes of
each file it sent, and has three faults a test switches on: `cut_once` (close the
connection half-way through a file, once), `hang_at_half` (send half, then wait until the
test lets go, so the test can kill the client mid-download) and `corrupt` (send the file
with one byte changed while the listing keeps the real checksum).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

COMMIT = "1234567890abcdef1234567890abcdef12345678"
LFS_SUFFIXES = (".safetensors",)


@dataclass
class Seen:
    method: str
    path: str
    range: Optional[str]
    authorization: Optional[str]


@dataclass
class Faults:
    cut_once: Optional[str] = None  # file path: close half-way through it, once
    hang_at_half: Optional[str] = None  # file path: send half, then wait for `released`
    corrupt: Optional[str] = None  # file path: serve it with one byte changed
    reached_half: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


class StandinHub:
    def __init__(self, repo_id: str, files_from: Path):
        self.repo_id = repo_id
        self.files: Dict[str, bytes] = {
            p.name: p.read_bytes() for p in sorted(Path(files_from).iterdir()) if p.is_file()}
        self.seen: List[Seen] = []
        self.sent: Dict[str, int] = {}  # file path -> body bytes sent, all requests together
        self.faults = Faults()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "StandinHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.faults.released.set()
        self._server.shutdown()
        self._server.server_close()

    def requests_for(self, name: str, method: str = "GET") -> List[Seen]:
        return [s for s in self.seen if s.method == method and s.path.endswith("/" + name)]

    # -- what the hub answers -------------------------------------------------------------

    def entry(self, name: str) -> dict:
        data = self.files[name]
        item = {"type": "file", "path": name, "size": len(data), "oid": git_sha1(data)}
        if name.endswith(LFS_SUFFIXES):
            item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                           "pointerSize": 134}
        return item

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_GET(self):
                self._answer(body=True)

            def do_HEAD(self):
                self._answer(body=False)

            def _answer(self, body: bool):
                path = self.path.split("?", 1)[0]
                with hub._lock:
                    hub.seen.append(Seen(self.command, path, self.headers.get("Range"),
                                         self.headers.get("Authorization")))
                api = f"/api/models/{hub.repo_id}/"
                if path == api.rstrip("/") or path.startswith(api + "revision/"):
                    return self._json({"id": hub.repo_id, "modelId": hub.repo_id, "sha": COMMIT,
                                       "siblings": [{"rfilename": n} for n in hub.files]})
                if path.startswith(api + "tree/"):
                    return self._json([hub.entry(n) for n in hub.files])
                found = re.fullmatch(rf"/{re.escape(hub.repo_id)}/resolve/[^/]+/(.+)", path)
                if found and found.group(1) in hub.files:
                    return self._file(found.group(1), body)
                self._json({"error": f"not found: {path}"}, 404)

            def _json(self, payload, status: int = 200):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)

            def _file(self, name: str, body: bool):
                data = hub.files[name]
                entry = hub.entry(name)
                etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
                if hub.faults.corrupt == name:
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
                start = 0
                asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if asked and body:
                    start = int(asked.group(1))
                self.send_response(206 if start else 200)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Accept-Ranges", "bytes")
                if "lfs" in entry:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if body:
                    self._send(name, data[start:], start, len(data))

            def _send(self, name: str, rest: bytes, start: int, total: int):
                faults = hub.faults
                half = max(0, total // 2 - start)
                cut = faults.cut_once == name and start == 0
                hang = faults.hang_at_half == name and start == 0
                if cut or hang:
                    self._write(name, rest[:half])
                    if cut:
                        faults.cut_once = None
                    else:
                        faults.reached_half.set()
                        faults.released.wait(120)
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)  # the client sees a dropped connection
                    except OSError:
                        pass  # the client is gone already (killed)
                    return
                self._write(name, rest)

            def _write(self, name: str, data: bytes):
                self.wfile.write(data)
                self.wfile.flush()
                with hub._lock:
                    hub.sent[name] = hub.sent.get(name, 0) + len(data)

        return Handler


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
