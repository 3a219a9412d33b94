"""A small model hub on 127.0.0.1 that answers the way huggingface.co does (for HF_ENDPOINT).

Two servers, like the real hub and its CDN on another origin:
- hub: `GET /api/models/REPO[/revision/REV]` (model info with `siblings[].lfs`),
  `POST /api/models/REPO/paths-info/REV` (the file metadata API), and
  `HEAD|GET /REPO/resolve/REV/FILE`, answering 302 to the CDN with the hub's
  headers: X-Repo-Commit, ETag, X-Linked-Etag (the LFS sha256), X-Linked-Size.
- cdn: `HEAD|GET /blobs/SHA256` with Content-Length, ETag, Accept-Ranges and
  `Range: bytes=N-` answered 206 with Content-Range.

Faults for tests: `corrupt` serves other bytes of the same size than the
published sha256 says; `cut_after` closes the connection after that many body
bytes, for the next `cuts` GETs; `fail_after_cut` answers 503 to every GET
after a cut (a download interrupted for good, to be resumed by a later run).
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    repo: str
    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n"
        return hashlib.sha1(f"blob {len(pointer)}\0{pointer}".encode()).hexdigest()


@dataclass
class HubState:
    files: list[HubFile]
    corrupt: bool = False
    cut_after: int | None = None
    cuts: int = 1
    fail_after_cut: bool = False
    no_blob_metadata: bool = False  # model info without siblings[].lfs, like some mirrors
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range)
    body_bytes_sent: int = 0
    cut_happened: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    cdn_url: str = ""

    def find(self, repo: str, name: str) -> HubFile | None:
        return next((f for f in self.files if f.repo == repo and f.name == name), None)

    def by_sha(self, sha: str) -> HubFile | None:
        return next((f for f in self.files if f.sha256 == sha), None)

    def gets(self, prefix: str = "/blobs/") -> list[tuple[str, str, str]]:
        return [r for r in self.requests if r[0] == "GET" and r[1].startswith(prefix)]


def _handler(state: HubState, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self) -> None:
            with state.lock:
                state.requests.append((self.command, self.path, self.headers.get("Range", "")))

        def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            self.wfile.write(body)

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        # -------------------------------------------------------------- hub

        def _repo_and_rest(self, path: str) -> tuple[str, str]:
            parts = path.strip("/").split("/")
            return "/".join(parts[:2]), "/".join(parts[2:])

        def _model_info(self, repo: str) -> None:
            files = [f for f in state.files if f.repo == repo]
            if not files:
                self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return
            siblings: list[dict[str, Any]] = [
                {"rfilename": f.name, "size": len(f.data), "blobId": f.git_oid,
                 "lfs": {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}}
                for f in files
            ]  # fmt: skip
            if state.no_blob_metadata:
                siblings = [{"rfilename": f.name} for f in files]
            self._json(200, {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings})

        def _resolve(self, head: bool) -> None:
            path = urllib.parse.urlsplit(self.path).path
            repo, rest = self._repo_and_rest(path)
            _, _, filename = rest.partition("resolve/")
            _, _, filename = filename.partition("/")
            hub_file = state.find(repo, urllib.parse.unquote(filename))
            if hub_file is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._empty(
                302,
                {
                    "Location": f"{state.cdn_url}/blobs/{hub_file.sha256}?filename={urllib.parse.quote(hub_file.name)}",
                    "X-Repo-Commit": COMMIT,
                    "ETag": f'"{hub_file.git_oid}"',
                    "X-Linked-Etag": f'"{hub_file.sha256}"',
                    "X-Linked-Size": str(len(hub_file.data)),
                },
            )

        # -------------------------------------------------------------- cdn

        def _blob(self, head: bool) -> None:
            sha = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
            hub_file = state.by_sha(sha)
            if hub_file is None:
                self._empty(404)
                return
            if not head and state.fail_after_cut and state.cut_happened:
                self._empty(503)
                return
            data = hub_file.data
            if state.corrupt:
                data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
            start = 0
            range_header = self.headers.get("Range", "")
            if range_header.startswith("bytes="):
                first = range_header[len("bytes=") :].split("-")[0]
                start = int(first) if first.isdigit() else 0
            status = 206 if start else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{hub_file.sha256}"')
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            body = data[start:]
            with state.lock:
                cut = state.cut_after is not None and state.cuts > 0
                if cut:
                    state.cuts -= 1
            if cut:
                assert state.cut_after is not None
                part = body[: state.cut_after]
                with state.lock:  # counted before sending: the client may finish before this thread runs on
                    state.body_bytes_sent += len(part)
                    state.cut_happened = True
                self.wfile.write(part)
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            with state.lock:
                state.body_bytes_sent += len(body)
            self.wfile.write(body)

        # -------------------------------------------------------------- dispatch

        def _dispatch(self, head: bool) -> None:
            self._record()
            path = urllib.parse.urlsplit(self.path).path
            if role == "cdn":
                self._blob(head) if path.startswith("/blobs/") else self._empty(404)
                return
            if path.startswith("/api/models/"):
                repo, rest = self._repo_and_rest(path[len("/api/models/") :])
                if rest == "" or rest.startswith("revision/"):
                    self._model_info(repo)
                else:
                    self._json(404, {"error": "not found"})
                return
            if "/resolve/" in path:
                self._resolve(head)
                return
            self._empty(404)

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_GET(self) -> None:
            self._dispatch(head=False)

        def do_POST(self) -> None:
            self._record()
            path = urllib.parse.urlsplit(self.path).path
            length = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if role != "hub" or "/paths-info/" not in path:
                self._json(404, {"error": "not found"})
                return
            repo, _ = self._repo_and_rest(path[len("/api/models/") :])
            out = []
            for name in form.get("paths", []):
                hub_file = state.find(repo, name)
                if hub_file is not None:
                    out.append(
                        {"type": "file", "path": name, "size": len(hub_file.data), "oid": hub_file.git_oid,
                         "lfs": {"oid": hub_file.sha256, "size": len(hub_file.data), "pointerSize": 134}}
                    )  # fmt: skip
            self._json(200, out)

    return Handler


@contextmanager
def serve_hub(state: HubState) -> Iterator[str]:
    """Start the hub and its CDN; yields the hub's URL (the HF_ENDPOINT)."""
    cdn = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state, "cdn"))
    hub = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state, "hub"))
    state.cdn_url = f"http://127.0.0.1:{cdn.server_address[1]}"
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in (cdn, hub)
    ]
    for thread in threads:
        thread.start()
    try:
        yield f"http://127.0.0.1:{hub.server_address[1]}"
    finally:
        for server in (hub, cdn):
            server.shutdown()
            server.server_close()
