"""Clients for `appliance mcp serve` tests: the SDK's own (stdio, streamable HTTP) and a raw JSON-RPC peer.

Every server is a real `python -m appliance mcp serve` process from this checkout,
with the test's APPLIANCE_HOME (see cli_env).
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from tests.conftest import REPO_ROOT, cli_env

SERVE = [sys.executable, "-m", "appliance", "mcp", "serve"]
PROTOCOL_VERSION = "2025-06-18"


def text_of(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


@asynccontextmanager
async def stdio_session(*args: str, errlog: TextIO, env: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    """An initialized SDK client session with a server started over stdio."""
    params = StdioServerParameters(command=SERVE[0], args=[*SERVE[1:], *args], env=cli_env(env), cwd=REPO_ROOT)
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def http_session(url: str) -> AsyncIterator[ClientSession]:
    async with streamable_http_client(url) as (read, write, _session_id), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def create_sandbox(session: ClientSession) -> str:
    result = await session.call_tool("create_sandbox", {})
    text = text_of(result)
    assert not result.isError and text.startswith("Sandbox created with sandbox_id: "), text
    return text.rsplit(" ", 1)[1]


async def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await anyio.sleep(0.1)


class RawServer:
    """A server process spoken to line by line; every stdout line it wrote is kept in `stdout_lines`."""

    def __init__(
        self,
        args: Sequence[str],
        stderr_path: Path,
        env: dict[str, str] | None = None,
        command: Sequence[str] = SERVE,
    ) -> None:
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("w")
        self.process = subprocess.Popen(
            [*command, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=cli_env(env),
            cwd=REPO_ROOT,
        )
        self.stdout_lines: list[bytes] = []
        self._incoming: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout_lines.append(line)
            self._incoming.put(line)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def request(self, request_id: int, method: str, params: dict[str, Any] | None = None) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, **({"params": params} if params else {})})

    def response(self, request_id: int, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = json.loads(self._incoming.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no response to request {request_id} in {timeout:g} s; {self.stderr()}") from None
            if message.get("id") == request_id:
                return dict(message)

    def initialize(self) -> dict[str, Any]:
        self.request(
            0,
            "initialize",
            {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
        )
        answer = self.response(0)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    def call(self, request_id: int, tool: str, arguments: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        self.request(request_id, "tools/call", {"name": tool, "arguments": arguments})
        return self.response(request_id, timeout)

    def create_sandbox(self, request_id: int) -> str:
        result = self.call(request_id, "create_sandbox", {})["result"]
        return str(re.sub(r"^Sandbox created with sandbox_id: ", "", result["content"][0]["text"]))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self, timeout: float = 10) -> int:
        """Close stdin (how an MCP client ends a stdio server) and wait for the exit code."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


class HttpServer:
    """`appliance mcp serve --http 0 ...`: started, its URL read from stderr."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 30) -> None:
        self.process = subprocess.Popen(
            [*SERVE, "--http", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(env),
            cwd=REPO_ROOT,
        )
        self.stderr_lines: list[str] = []
        found: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.stderr_lines.append(line)
                match = re.search(r"listening on (http://\S+)", line)
                if match:
                    found.put(match.group(1))

        threading.Thread(target=read, daemon=True).start()
        try:
            self.url = found.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"the server printed no URL: {''.join(self.stderr_lines)}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
