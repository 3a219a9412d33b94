"""Shared pieces of the sandbox tests: a run with a real server on real bwrap, a host HTTP server."""

from __future__ import annotations

import dataclasses
import http.server
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Settings, load_settings
from appliance.tools.base import CallContext, ToolOutput
from appliance.tools.sandbox.host import is_real_root, sandbox_uid
from appliance.tools.sandbox.server import SandboxServer

RUN_ID = "20260101-000000-abcdef"


@dataclass
class Run:
    """One run's view of the tool-python server: call tools, create sandboxes, look at the host side."""

    server: SandboxServer
    settings: Settings
    ctx: CallContext

    def call(self, tool: str, **arguments: Any) -> ToolOutput:
        return self.server.call(tool, arguments, self.ctx)

    def sandbox(self) -> str:
        created = self.call("create_sandbox")
        assert created.text.startswith("Sandbox created with sandbox_id: "), created.text
        return str(created.meta["sandbox_id"])

    def sh(self, sandbox_id: str, command: str) -> ToolOutput:
        return self.call("run_command", command=command, sandbox_id=sandbox_id)

    def py(self, sandbox_id: str, code: str) -> ToolOutput:
        return self.call("run_python_code", code_block=code, sandbox_id=sandbox_id)

    def with_attachments(self, *paths: Path) -> Run:
        return Run(self.server, self.settings, dataclasses.replace(self.ctx, attachments=tuple(paths)))

    @property
    def workspace(self) -> Path:
        return self.ctx.workspace


@dataclass
class RunFactory:
    home: Path
    made: list[SandboxServer] = field(default_factory=list)

    def __call__(self, run_id: str = RUN_ID, timeout: float = 120.0, **overrides: Any) -> Run:
        values = {"sandbox.command_timeout": 20.0, **{k.replace("__", "."): v for k, v in overrides.items()}}
        settings = load_settings(overrides=values)
        server = SandboxServer(settings)
        self.made.append(server)
        run_dir = settings.dirs.run_dir(run_id)
        ctx = CallContext(run_id, run_dir, run_dir / "workspace", run_dir / "output", timeout=timeout)
        return Run(server, settings, ctx)


@pytest.fixture
def make_run(appliance_home: Path) -> Iterator[RunFactory]:
    """Build runs with settings overrides: make_run(sandbox__max_processes=32)."""
    factory = RunFactory(appliance_home)
    yield factory
    for server in factory.made:
        server.close()


@pytest.fixture
def run(make_run: RunFactory) -> Run:
    return make_run()


def command_parts(text: str) -> dict[str, Any]:
    """The fields of a CommandResult text (the repr is Python literal syntax)."""
    import ast

    match = re.match(r"CommandResult\(stderr=(.*), stdout=(.*), exit_code=(-?\d+), error=(.*?)\)(\n\n|$)", text, re.S)
    assert match, text[:500]
    return {
        "stderr": ast.literal_eval(match.group(1)),
        "stdout": ast.literal_eval(match.group(2)),
        "exit_code": int(match.group(3)),
        "error": ast.literal_eval(match.group(4)),
    }


def leftover_processes(marker: str, uid: int | None = None) -> list[str]:
    """Host processes whose command line carries `marker`, or (root mode) that run as the sandbox's uid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\x00", b" ").decode("utf-8", "replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        runs_as_sandbox = uid is not None and uid_line.split()[1:2] == [str(uid)]
        if marker in cmdline or runs_as_sandbox:
            found.append(f"{entry.name}: {cmdline}")
    return found


def sandbox_host_uid(run: Run) -> int | None:
    return sandbox_uid(run.workspace) if is_real_root() else None


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: HostServer = self.server  # type: ignore[assignment]
        server.hits.append(self.path)
        body = server.files.get(self.path.split("?", 1)[0])
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class HostServer(http.server.ThreadingHTTPServer):
    """A real HTTP server on the host's 127.0.0.1; `hits` records every request that reached it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: list[str] = []
        self.files: dict[str, bytes] = {}

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def host_http() -> Iterator[HostServer]:
    server = HostServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def tree_listing(path: Path) -> list[str]:
    """Names and sizes under `path` (to prove the host was left untouched)."""
    out = []
    for directory, _dirs, names in os.walk(path):
        for name in names:
            full = Path(directory, name)
            try:
                out.append(f"{full}:{full.lstat().st_size}")
            except OSError:
                continue
    return sorted(out)
