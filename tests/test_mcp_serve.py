"""`appliance mcp serve` with the SDK's own clients: real server processes, bwrap, corpus and HTTP."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import anyio
import httpx
import pytest

from appliance.config import load_settings
from appliance.errors import ConfigError
from appliance.llm.base import Backend
from appliance.protocol.tooldefs import ServerSpec, ToolSpec
from appliance.tools.mcp.serve import tool_index
from appliance.tools.registry import build_toolbox
from appliance.tools.specs import PYTHON_TOOLS
from tests.conftest import run_cli, write_replay
from tests.mcp_support import (
    HttpServer,
    RawServer,
    create_sandbox,
    http_session,
    stdio_session,
    text_of,
    wait_until,
)
from tests.sandbox_support import HostServer, command_parts, host_http, leftover_processes
from tests.test_corpus import write_library

__all__ = ["host_http"]  # a fixture

HIDDEN = "download_file_from_sandbox_to_local"
SANDBOX_TOOLS = [t.name for t in PYTHON_TOOLS if t.name != HIDDEN]


@pytest.fixture
def errlog(tmp_path: Path) -> Iterator[TextIO]:
    """The server's stderr, kept in a file (the SDK's stdio client needs a real file)."""
    with (tmp_path / "serve-stderr.log").open("w+") as handle:
        yield handle


def no_model() -> Backend:
    raise AssertionError("listing tools must not load a model")


# ------------------------------------------------------------------ listing and options


@pytest.mark.asyncio
async def test_lists_the_enabled_tools_as_a_run_sees_them(appliance_home: Path, errlog: TextIO) -> None:
    toolbox = build_toolbox(load_settings(), no_model)
    try:
        expected = [(t.name, t.description, t.input_schema) for s in toolbox.server_specs() for t in s.tools]
    finally:
        toolbox.close()
    async with stdio_session(errlog=errlog) as session:
        listed = (await session.list_tools()).tools
    assert [(t.name, t.description, t.inputSchema) for t in listed] == expected
    names = [t.name for t in listed]
    assert HIDDEN not in names and {"run_command", "google_search", "scrape_and_extract_info"} <= set(names)
    # One run-like directory for the whole process.
    assert [p.name[:4] for p in (appliance_home / "runs").iterdir()] == ["mcp-"]


@pytest.mark.asyncio
async def test_tools_option_chooses_the_servers(appliance_home: Path, errlog: TextIO) -> None:
    async with stdio_session("--tools", "tool-python", errlog=errlog) as session:
        assert [t.name for t in (await session.list_tools()).tools] == SANDBOX_TOOLS
    # Repeatable and comma-separated; offering the download tool works as in a run.
    env = {"APPLIANCE_AGENT_OFFER_DOWNLOAD_TOOL": "true"}
    args = ("--tools", "jina_scrape_llm_summary,tool-python", "--tools", "tool-python")
    async with stdio_session(*args, errlog=errlog, env=env) as session:
        names = [t.name for t in (await session.list_tools()).tools]
    assert names == ["scrape_and_extract_info", *[t.name for t in PYTHON_TOOLS]]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tools", "tool-python,nope"], "unknown tool server 'nope'; choose from: tool-python, "),
        (["--http", "0", "--host", "0.0.0.0"], "no authentication"),
        (["--http", "0", "--host", "192.168.1.10"], "not a loopback address"),
        (["--http", "0", "--host", "example.com"], "no authentication"),
        (["--host", "127.0.0.1"], "--host needs --http"),
        (["--attach", "/nonexistent/file.csv"], "attachment /nonexistent/file.csv does not exist"),
    ],
)
def test_bad_options_are_usage_errors(appliance_home: Path, args: list[str], expected: str) -> None:
    done = run_cli(["mcp", "serve", *args], input="", timeout=60)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert done.stdout == ""


def test_config_errors_exit_2(appliance_home: Path) -> None:
    done = run_cli(["mcp", "serve"], env={"APPLIANCE_TOOLS_ENABLED": "tool-python,bogus"}, input="", timeout=60)
    assert done.returncode == 2 and "unknown tool server 'bogus'" in done.stderr


def test_tool_names_must_be_unique_across_servers() -> None:
    spec = ToolSpec("fetch", "Fetch a page.", {"type": "object", "properties": {}})
    assert set(tool_index([ServerSpec("a", (spec,))])) == {"fetch"}
    with pytest.raises(ConfigError, match="tool 'fetch' is offered by both a and b"):
        tool_index([ServerSpec("a", (spec,)), ServerSpec("b", (spec,))])


# ------------------------------------------------------------------ the sandbox's guarantees


@pytest.mark.asyncio
async def test_sandbox_through_mcp_keeps_its_guarantees(
    appliance_home: Path, tmp_path: Path, host_http: HostServer, errlog: TextIO
) -> None:
    attached = tmp_path / "attached" / "data.csv"
    attached.parent.mkdir()
    attached.write_text("city,population\nLyon,522000\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the sandbox")
    host_http.files["/x"] = b"reached the host"
    async with stdio_session("--tools", "tool-python", "--attach", str(attached), errlog=errlog) as session:
        sandbox = await create_sandbox(session)

        async def sh(command: str) -> dict[str, object]:
            result = await session.call_tool("run_command", {"command": command, "sandbox_id": sandbox})
            assert not result.isError, text_of(result)
            return command_parts(text_of(result))

        assert (await sh("echo hi"))["stdout"] == "hi\n"
        # No network: neither the host's loopback services nor the internet.
        code = (
            "import socket\n"
            f"for address in [('127.0.0.1', {host_http.port}), ('1.1.1.1', 53)]:\n"
            "    try:\n"
            "        socket.create_connection(address, timeout=3)\n"
            "        print('connected', address)\n"
            "    except OSError as exc:\n"
            "        print('refused', address, type(exc).__name__)\n"
        )
        result = await session.call_tool("run_python_code", {"code_block": code, "sandbox_id": sandbox})
        assert "connected" not in text_of(result) and text_of(result).count("refused") == 2, text_of(result)
        assert host_http.hits == []
        # Only the workspace is writable.
        for path in ("/etc/mcp-serve-test", "/usr/mcp-serve-test"):
            parts = await sh(f"echo x > {path}")
            assert parts["exit_code"] != 0 and not Path(path).exists()
        assert (await sh("echo kept > /home/user/note.txt && cat note.txt"))["stdout"] == "kept\n"
        python = await session.call_tool("run_python_code", {"code_block": "print(6 * 7)", "sandbox_id": sandbox})
        assert not python.isError and "42" in text_of(python)
        # Uploads: the attached file only.
        refused = await session.call_tool(
            "upload_file_from_local_to_sandbox", {"sandbox_id": sandbox, "local_file_path": str(secret)}
        )
        assert refused.isError and "Failed to upload file" in text_of(refused)
        uploaded = await session.call_tool(
            "upload_file_from_local_to_sandbox", {"sandbox_id": sandbox, "local_file_path": str(attached)}
        )
        assert not uploaded.isError and text_of(uploaded) == "File uploaded to /home/user/data.csv"
        assert "Lyon,522000" in str((await sh("cat /home/user/data.csv"))["stdout"])
        # Argument checks and unknown tools answer as in a run.
        missing = await session.call_tool("run_command", {"command": "echo"})
        assert missing.isError
        assert text_of(missing) == "Error executing tool run_command: 1 validation error: sandbox_id: field required"
        hidden = await session.call_tool(HIDDEN, {"sandbox_id": sandbox, "sandbox_file_path": "/home/user/note.txt"})
        assert hidden.isError and text_of(hidden) == f"Unknown tool: {HIDDEN}"


@pytest.mark.asyncio
async def test_limits_of_a_run_apply(appliance_home: Path, errlog: TextIO) -> None:
    """[agent] result_max_chars cuts results; [agent] tool_timeout stops a call (the failed-call text)."""
    with socket.socket() as silent:  # accepts connections, never answers: a hung SearXNG
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        env = {
            "APPLIANCE_AGENT_RESULT_MAX_CHARS": "300",
            "APPLIANCE_AGENT_TOOL_TIMEOUT": "2",
            "APPLIANCE_SEARCH_SOURCES": "searxng",
            "APPLIANCE_SEARCH_SEARXNG_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
        }
        args = ("--tools", "tool-python,search_and_scrape_webpage")
        async with stdio_session(*args, errlog=errlog, env=env) as session:
            sandbox = await create_sandbox(session)
            long = await session.call_tool("run_command", {"command": "seq 1 1000", "sandbox_id": sandbox})
            assert not long.isError and text_of(long).endswith("\n... [Result truncated]")
            assert len(text_of(long)) == 300 + len("\n... [Result truncated]")
            started = time.monotonic()
            hung = await session.call_tool("google_search", {"q": "anything"})
            assert time.monotonic() - started < 10
            assert hung.isError
            assert text_of(hung).startswith(
                "Tool call to google_search on search_and_scrape_webpage failed. Error: Tool call timed out after 2"
            )


def processes_with(marker: str) -> list[str]:
    """Host processes whose command line carries `marker` (a sandbox's processes are visible from the host)."""
    return leftover_processes(marker)


def start_sleep(server: RawServer, command: str) -> str:
    """Initialize, create sandbox (request 1), start `command` as request 2 and wait until it runs."""
    server.initialize()
    sandbox = server.create_sandbox(1)
    server.request(2, "tools/call", {"name": "run_command", "arguments": {"command": command, "sandbox_id": sandbox}})
    deadline = time.monotonic() + 20
    while not processes_with(command):
        assert time.monotonic() < deadline, server.stderr()
        time.sleep(0.1)
    return sandbox


def test_a_cancelled_call_stops_its_process(appliance_home: Path, tmp_path: Path) -> None:
    """notifications/cancelled reaches the sandbox: the command is killed, the server goes on."""
    server = RawServer(["--tools", "tool-python"], tmp_path / "stderr.log")
    try:
        sandbox = start_sleep(server, "sleep 61.234")
        started = time.monotonic()
        server.send(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2, "reason": "test"}}
        )
        while processes_with("sleep 61.234"):
            assert time.monotonic() - started < 5, "the cancelled command still runs"
            time.sleep(0.1)
        # The SDK answers a cancelled request with an error (the spec lets it say nothing).
        assert "error" in server.response(2, timeout=5)
        after = server.call(3, "run_command", {"command": "echo still here", "sandbox_id": sandbox})
        assert "still here" in after["result"]["content"][0]["text"]
        assert server.close() == 0
    finally:
        server.kill()


@pytest.mark.asyncio
async def test_a_client_that_goes_away_stops_its_calls(appliance_home: Path, errlog: TextIO) -> None:
    """The SDK client cancelled mid-call (it closes the server's stdin): the command does not outlive it."""
    async with stdio_session("--tools", "tool-python", errlog=errlog) as session:
        sandbox = await create_sandbox(session)
        async with anyio.create_task_group() as group:
            arguments = {"command": "sleep 62.345", "sandbox_id": sandbox}
            group.start_soon(session.call_tool, "run_command", arguments)
            await wait_until(lambda: processes_with("sleep 62.345"), 20, "the command to start")
            group.cancel_scope.cancel()
    await wait_until(lambda: not processes_with("sleep 62.345"), 5, "the command to stop")


def test_sigterm_stops_a_stdio_server_and_its_commands(appliance_home: Path, tmp_path: Path) -> None:
    server = RawServer(["--tools", "tool-python"], tmp_path / "stderr.log")
    try:
        start_sleep(server, "sleep 63.456")
        server.process.send_signal(signal.SIGTERM)
        # stdin stays open: the server must not wait for the client's next line.
        assert server.process.wait(timeout=10) == 0
        assert not processes_with("sleep 63.456")
        assert "stopping (SIGTERM)" in server.stderr()
    finally:
        server.kill()


# ------------------------------------------------------------------ missing components


@pytest.mark.asyncio
async def test_missing_bwrap_and_searxng_do_not_stop_the_server(appliance_home: Path, errlog: TextIO) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    env = {
        "APPLIANCE_SANDBOX_BWRAP": "/nonexistent/bwrap",
        "APPLIANCE_SEARCH_SOURCES": "searxng",
        "APPLIANCE_SEARCH_SEARXNG_URL": f"http://127.0.0.1:{closed_port}",
    }
    async with stdio_session("--tools", "tool-python,search_and_scrape_webpage", errlog=errlog, env=env) as session:
        assert [t.name for t in (await session.list_tools()).tools] == [*SANDBOX_TOOLS, "google_search"]
        sandbox = await session.call_tool("create_sandbox", {})
        assert sandbox.isError and "bubblewrap (bwrap) is not installed at /nonexistent/bwrap" in text_of(sandbox)
        assert "Fix: install bubblewrap: apt-get install bubblewrap" in text_of(sandbox)
        search = await session.call_tool("google_search", {"q": "tea"})
        assert search.isError and "SearXNG" in text_of(search)
    errlog.seek(0)
    assert "warning: bubblewrap (bwrap) is not installed" in errlog.read()


# ------------------------------------------------------------------ search and scrape


@pytest.mark.asyncio
async def test_search_the_corpus_and_scrape_through_mcp(
    appliance_home: Path, tmp_path: Path, host_http: HostServer, errlog: TextIO
) -> None:
    library = write_library(tmp_path / "library")
    added = run_cli(["corpus", "add", str(library)])
    assert added.returncode == 0, added.stderr
    script = write_replay(tmp_path / "extract.jsonl", ["<think>find the rule</think>The warden takes cash only."])
    host_http.files["/page"] = b"<html><body>a local service</body></html>"
    args = (
        "--backend",
        "replay",
        "--replay",
        str(script),
        "--tools",
        "search_and_scrape_webpage,jina_scrape_llm_summary",
    )
    async with stdio_session(*args, errlog=errlog, env={"APPLIANCE_SEARCH_SOURCES": "corpus"}) as session:
        found = await session.call_tool("google_search", {"q": "hut warden cash"})
        assert not found.isError, text_of(found)
        top = json.loads(text_of(found))["organic"][0]
        assert top["title"] == "Alpine hut trip" and top["link"].startswith("corpus://")

        local = await session.call_tool(
            "scrape_and_extract_info", {"url": host_http.url("/page"), "info_to_extract": "anything"}
        )
        assert local.isError and "refusing to fetch" in json.loads(text_of(local))["error"]
        assert host_http.hits == []

        scraped = await session.call_tool(
            "scrape_and_extract_info", {"url": top["link"], "info_to_extract": "How does the hut take payment?"}
        )
        data = json.loads(text_of(scraped))
        assert not scraped.isError and data["success"] is True, data
        assert data["extracted_info"] == "The warden takes cash only." and data["model_used"] == "replay:extract.jsonl"


# ------------------------------------------------------------------ HTTP


@pytest.mark.asyncio
async def test_http_on_loopback_with_rebinding_protection(appliance_home: Path) -> None:
    server = HttpServer(["--tools", "tool-python"])
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/mcp")
        async with http_session(server.url) as session:
            assert [t.name for t in (await session.list_tools()).tools] == SANDBOX_TOOLS
            sandbox = await create_sandbox(session)
            echoed = await session.call_tool("run_command", {"command": "echo over http", "sandbox_id": sandbox})
            assert command_parts(text_of(echoed))["stdout"] == "over http\n"
        initialize = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "x", "version": "1"},
            },
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        async with httpx.AsyncClient(trust_env=False) as client:
            rebound = await client.post(server.url, json=initialize, headers={**headers, "Host": "evil.example"})
            assert rebound.status_code == 421
            port = server.url.split(":")[2].split("/")[0]
            cross_origin = {**headers, "Host": f"localhost:{port}", "Origin": "http://evil.example"}
            assert (await client.post(server.url, json=initialize, headers=cross_origin)).status_code == 403
            same_origin = {**headers, "Origin": f"http://127.0.0.1:{port}"}
            assert (await client.post(server.url, json=initialize, headers=same_origin)).status_code == 200
        # SIGTERM with a client connected and a command running: the command stops, the server ends cleanly.
        async with http_session(server.url) as session:
            sandbox = await create_sandbox(session)

            async def long_call() -> None:
                with contextlib.suppress(Exception):  # the server goes away under it
                    await session.call_tool("run_command", {"command": "sleep 64.567", "sandbox_id": sandbox})

            async with anyio.create_task_group() as group:
                group.start_soon(long_call)
                await wait_until(lambda: processes_with("sleep 64.567"), 20, "the command to start")
                started = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                await wait_until(lambda: server.process.poll() is not None, 10, "the server to exit")
                group.cancel_scope.cancel()
        assert server.process.returncode == 0 and time.monotonic() - started < 5
        assert not processes_with("sleep 64.567")
        assert "stopping (SIGTERM)" in "".join(server.stderr_lines)
    finally:
        server.kill()


# ------------------------------------------------------------------ stdout discipline


def test_stdio_stdout_carries_only_the_protocol(appliance_home: Path, tmp_path: Path) -> None:
    # Every warning shown (on stderr), so one printed to stdout would show up here.
    server = RawServer([], tmp_path / "stderr.log", env={"PYTHONWARNINGS": "always"})
    try:
        assert server.initialize()["result"]["serverInfo"]["name"] == "appliance"
        server.request(1, "tools/list")
        assert len(server.response(1)["result"]["tools"]) == 7
        sandbox = server.create_sandbox(2)
        server.call(3, "run_command", {"command": "echo to the sandbox's stdout; echo err >&2", "sandbox_id": sandbox})
        server.call(4, "google_search", {"q": "no searxng here"})  # an error result, on stdout as protocol only
        server.request(5, "no/such/method")
        assert "error" in server.response(5)  # the SDK says -32602 (invalid params), not -32601
        assert server.close() == 0
    finally:
        server.kill()
    assert len(server.stdout_lines) == 6
    for line in server.stdout_lines:
        assert json.loads(line)["jsonrpc"] == "2.0", line
    assert "appliance mcp serve: 7 tools from" in server.stderr()


# Stands in for a library that prints: once the server has moved fd 1 away from the
# protocol's pipe, a thread prints and writes to fd 1 directly.
STRAY_PRINTER = """
import os, sys, threading, time
from appliance.cli import main
protocol = os.fstat(1).st_ino
def stray():
    while os.fstat(1).st_ino == protocol:
        time.sleep(0.01)
    print("stray print", flush=True)
    os.write(1, b"stray write\\n")
threading.Thread(target=stray, daemon=True).start()
main(["mcp", "serve", "--tools", "tool-python"])
"""


def test_stray_prints_go_to_stderr(appliance_home: Path, tmp_path: Path) -> None:
    server = RawServer([], tmp_path / "stderr.log", command=[sys.executable, "-c", STRAY_PRINTER])
    try:
        server.initialize()
        deadline = time.monotonic() + 10
        while "stray write" not in server.stderr():
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.05)
        server.request(1, "tools/list")
        assert len(server.response(1)["result"]["tools"]) == len(SANDBOX_TOOLS)
        assert server.close() == 0
    finally:
        server.kill()
    assert "stray print\n" in server.stderr()
    assert [json.loads(line)["id"] for line in server.stdout_lines] == [0, 1]


def test_stdio_server_ends_when_stdin_closes_and_takes_its_sandboxes(appliance_home: Path, tmp_path: Path) -> None:
    server = RawServer(["--tools", "tool-python"], tmp_path / "stderr.log")
    try:
        server.initialize()
        sandbox = server.create_sandbox(1)
        # The Python kernel keeps running between cells; its bwrap command line names the workspace.
        started = server.call(2, "run_python_code", {"code_block": "x = 1", "sandbox_id": sandbox})
        assert "error" not in started
        assert processes_with(str(appliance_home / "runs"))
        closed = time.monotonic()
        assert server.close() == 0
        assert time.monotonic() - closed < 5
    finally:
        server.kill()
    assert not processes_with(str(appliance_home / "runs"))


def test_a_port_in_use_is_refused_before_anything_starts(appliance_home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = run_cli(["mcp", "serve", "--http", str(taken.getsockname()[1])], timeout=60)
    assert done.returncode == 2 and "Address already in use" in done.stderr
    assert not (appliance_home / "runs").exists()
