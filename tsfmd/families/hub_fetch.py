"""Download a hub repository's files into a hub cache, resumably, and check every byte.

`tsfmd pull` uses this; the daemon never does (it only reads the cache, hub.py).
huggingface_hub 2.4 (the installed version) downloads each file into a process-unique
`<etag>.<random>.incomplete` and deletes it when the call ends, so a pull that is stopped
(Ctrl-C, a crash, a dropped link after its few retries) starts that file again from byte
0 next time: hours for multi-GB weights on a slow mirror. So the large (LFS) files are
fetched here into `blobs/<sha256>.incomplete`, which stays until it is complete, and a
later pull asks for the rest with an HTTP Range request. Then huggingface_hub's own
snapshot_download links them and fetches the small files, leaving the cache exactly as
`hf download` would. The endpoint and token are huggingface_hub's: HF_ENDPOINT, HF_TOKEN.

Every file is then checked against the hub's tree listing: its size, and its sha256 (LFS
files) or git blob sha1 (the others). A file that does not match is deleted from the cache
(so nothing serves it and the next pull fetches it again) and reported by name.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

#: a dropped connection is retried this many times in one pull, each time from where the
#: partial file ends; after that the pull stops and the next one resumes
RETRIES = 3
_CHUNK = 1024 * 1024


class PullError(RuntimeError):
    """A pull did not complete; the text says what and how to retry."""


class CorruptFile(PullError):
    """A downloaded file does not match the hub's size or checksum."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str  # git blob sha1 (the ETag of a non-LFS file)
    sha256: Optional[str]  # LFS files: the content's sha256 (their ETag and blob name)


@dataclass(frozen=True)
class Plan:
    repo_id: str
    commit: str
    files: List[RemoteFile]


def plan(repo_id: str, revision: Optional[str], patterns: Optional[Sequence[str]]) -> Plan:
    """The commit `revision` names and the repository files matching `patterns`."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi()
    commit = api.repo_info(repo_id, revision=revision).sha
    listed = [f for f in api.list_repo_tree(repo_id, recursive=True, revision=commit)
              if isinstance(f, RepoFile)]
    wanted = filter_repo_objects(listed, allow_patterns=patterns, key=lambda f: f.path)
    files = [RemoteFile(f.path, f.lfs.size if f.lfs else f.size, f.blob_id,
                        f.lfs.sha256 if f.lfs else None) for f in wanted]
    return Plan(repo_id, commit, files)


def storage_folder(hub_cache: str, repo_id: str) -> Path:
    return Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))


def fetch_large_files(plan_: Plan, hub_cache: str, progress_for: Callable, retry: str) -> list:
    """Fetch the LFS files not yet in the cache into `blobs/<sha256>`; return their paths."""
    blobs = storage_folder(hub_cache, plan_.repo_id) / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    fetched = []
    for remote in plan_.files:
        if remote.sha256 is None or (blobs / remote.sha256).exists():
            continue
        fetch_resumable(_resolve_url(plan_, remote), blobs / remote.sha256, remote,
                        progress_for, retry)
        fetched.append(remote.path)
    return fetched


def fetch_resumable(url: str, blob: Path, remote: RemoteFile, progress_for: Callable,
                    retry: str) -> None:
    """Download `url` into `blob` through `<blob>.incomplete`, continuing a partial one."""
    partial = blob.with_name(blob.name + ".incomplete")
    problem = None
    for attempt in range(1 + RETRIES):
        if problem is not None:
            time.sleep(attempt)  # a moment for the link or the mirror to come back
        have = _size(partial)
        if have > remote.size:
            partial.unlink()
            have = 0
        if have == remote.size:
            break
        try:
            _get_from(url, partial, have, remote, progress_for)
            if _size(partial) < remote.size:
                problem = ConnectionError("the server closed the connection early")
        except urllib.error.HTTPError as exc:
            problem = exc
            if exc.code < 500:
                break  # 401, 403, 404: a retry will not help
        except (OSError, http.client.HTTPException) as exc:  # a dropped or reset connection
            problem = exc
    got = _size(partial)
    if got != remote.size:
        kept = "the part is kept: " if got else ""
        raise PullError(
            f"{remote.path}: the download stopped at {got} of {remote.size} bytes "
            f"({_why(problem)}); {kept}{retry} to resume"
        )
    digest = file_sha256(partial)
    if digest != remote.sha256:
        partial.unlink()
        raise CorruptFile(
            f"{remote.path}: downloaded {remote.size} bytes whose sha256 is {digest}, not the "
            f"hub's {remote.sha256}; the file was deleted, {retry} fetches it again"
        )
    os.replace(partial, blob)


def _get_from(url: str, partial: Path, have: int, remote: RemoteFile, progress_for) -> None:
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers()  # the user agent and, from HF_TOKEN, the token
    headers["Accept-Encoding"] = "identity"
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with _opener().open(request, timeout=60) as response:
        if have and response.status != 206:
            have = 0  # the server ignored the Range: start again
        with open(partial, "ab" if have else "wb") as out, \
                progress_for(remote.path, remote.size, have) as progress:
            while True:
                chunk = response.read1(_CHUNK)  # what has arrived, not a whole 1 MiB
                if not chunk:
                    break
                out.write(chunk)
                out.flush()  # what arrived stays, even if the process is killed next
                progress.update(len(chunk))


def verify(snapshot: Path, plan_: Plan, already_checked: Sequence[str], retry: str) -> None:
    """Check every planned file in `snapshot` against the hub's size and checksum; delete
    and report the ones that do not match. `already_checked`: hashed while downloading."""
    bad = []
    for remote in plan_.files:
        path = snapshot / remote.path
        if not path.exists():
            bad.append(f"{remote.path}: missing")
            continue
        size = path.stat().st_size
        if size != remote.size:
            bad.append(f"{remote.path}: {size} bytes, the hub says {remote.size}")
        elif remote.path in already_checked:
            continue
        elif remote.sha256 is not None and file_sha256(path) != remote.sha256:
            bad.append(f"{remote.path}: sha256 differs from the hub's {remote.sha256}")
        elif remote.sha256 is None and git_blob_sha1(path) != remote.blob_id:
            bad.append(f"{remote.path}: git blob sha1 differs from the hub's {remote.blob_id}")
        else:
            continue
        _delete_cached(path)
    if bad:
        raise CorruptFile(
            "files in the cache do not match the hub (deleted): " + "; ".join(bad)
            + f"; {retry} fetches them again"
        )


def point_refs(plan_: Plan, hub_cache: str, revision: Optional[str]) -> None:
    """Make the pulled commit what the cache's `main` (the ref the daemon reads) and the
    named revision point at, as `hf download` does for the revision it fetched."""
    refs = storage_folder(hub_cache, plan_.repo_id) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    names = {"main"} | ({revision} if revision and revision != plan_.commit else set())
    for name in names:
        ref = refs / name
        ref.parent.mkdir(parents=True, exist_ok=True)  # a branch name may hold a slash
        temporary = ref.with_name(ref.name + ".tmp")
        temporary.write_text(plan_.commit)
        os.replace(temporary, ref)  # a reader never sees a half-written ref


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """What git names a file's content: sha1 of "blob <size>\\0" and the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _delete_cached(path: Path) -> None:
    """The snapshot's link and the blob it points to."""
    target = path.resolve()
    path.unlink(missing_ok=True)
    if target != path:
        target.unlink(missing_ok=True)


def _resolve_url(plan_: Plan, remote: RemoteFile) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(plan_.repo_id, remote.path, revision=plan_.commit)


class _SameHostAuth(urllib.request.HTTPRedirectHandler):
    """Follow the hub's redirects (LFS files live on a CDN), but never send the token to
    another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != \
                urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _opener():
    return urllib.request.build_opener(_SameHostAuth())


def _why(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "the server sent fewer bytes than the file has"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class LineProgress:
    """Progress for a log: one line at each tenth of the file (tqdm's bar on a terminal)."""

    def __init__(self, name: str, total: int, initial: int = 0, stream=None):
        self.name, self.total, self.done = name, max(total, 1), initial
        self.stream = stream or sys.stderr
        self.shown = -1
        if initial:
            self._line(f"resuming at {initial} of {total} bytes")
        self._show()

    def update(self, n: int) -> None:
        self.done += n
        self._show()

    def _show(self) -> None:
        tenth = min(10, self.done * 10 // self.total)
        if tenth != self.shown:
            self.shown = tenth
            self._line(f"{tenth * 10}% ({self.done} of {self.total} bytes)")

    def _line(self, text: str) -> None:
        print(f"{self.name}: {text}", file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def progress_factory(stream=None) -> Callable:
    """A progress bar per file: tqdm (huggingface_hub's) on a terminal, lines in a log."""
    stream = stream or sys.stderr
    if stream.isatty():
        from huggingface_hub.utils import tqdm

        def bar(name, total, initial=0):
            return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name,
                        file=stream)
        return bar
    return lambda name, total, initial=0: LineProgress(name, total, initial, stream)
