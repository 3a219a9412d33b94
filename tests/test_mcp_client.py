"""External MCP servers as tool servers of a run, against real servers written with the SDK
(tests/mcpservers.py): listing, calls, crashes, hangs, huge output, failed starts, HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.agent.events import Notice, RunFinished, ToolCallFinished
from appliance.agent.runtime import build_toolbox, prepare_run
from appliance.config import load_settings, parse_mcp_server
from appliance.errors import ConfigError
from appliance.tools.base import CallContext, ToolBox
from appliance.tools.mcp.server import RESTARTS_PER_RUN, ExternalMcpServer
from tests.conftest import REPO_ROOT, run_cli, tool_call, write_replay
from tests.scripted import RecordingReplay, run_all

SERVERS = str(REPO_ROOT / "tests" / "mcpservers.py")
GOLDEN = REPO_ROOT / "tests" / "golden"
NO_BUILTINS = {"APPLIANCE_TOOLS_ENABLED": "[]"}


def stdio(mode: str = "notes", **extra: Any) -> dict[str, Any]:
    return {"command": [sys.executable, SERVERS, mode], **extra}


def server(tmp_path: Path, mode: str = "notes", name: str = "notes", **extra: Any) -> ExternalMcpServer:
    return ExternalMcpServer(parse_mcp_server(name, stdio(mode, **extra), "test"), log_path=tmp_path / f"{name}.log")


def ctx(tmp_path: Path, timeout: float = 30.0) -> CallContext:
    return CallContext("run", tmp_path, tmp_path, tmp_path, timeout=timeout)


@pytest.fixture
def notes(tmp_path: Path) -> Iterator[tuple[ToolBox, CallContext]]:
    box = ToolBox([server(tmp_path)])
    yield box, ctx(tmp_path)
    box.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def write_config(home: Path, text: str) -> None:
    (home / "config.toml").write_text(text, encoding="utf-8")


def toml_servers(**servers: dict[str, Any]) -> str:
    lines = []
    for name, table in servers.items():
        lines.append(f"[mcp_servers.{name}]")
        for key, value in table.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- configuration


def test_config_accepts_stdio_and_http_servers_and_redacts_secrets(appliance_home: Path) -> None:
    write_config(
        appliance_home,
        toml_servers(
            wiki={"command": "python -m wiki_mcp --db 'my notes.db'", "args": ["-v"], "env": {"WIKI_TOKEN": "s3cret"}},
            db={"url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer t0ken"}, "timeout": 5},
            off={"command": ["true"], "enabled": False},
        ),
    )
    settings = load_settings()
    wiki, db, off = settings.mcp_servers.values()
    assert wiki.command == ("python", "-m", "wiki_mcp", "--db", "my notes.db", "-v")
    assert wiki.transport == "stdio" and wiki.env == {"WIKI_TOKEN": "s3cret"}
    assert db.transport == "http" and db.timeout == 5.0 and db.startup_timeout == 30.0
    assert [s.name for s in settings.enabled_mcp_servers()] == ["wiki", "db"] and not off.enabled
    shown = json.dumps(settings.as_dict(redact=True))
    assert "s3cret" not in shown and "t0ken" not in shown and '"WIKI_TOKEN": "***"' in shown
    assert settings.origins["mcp_servers.wiki"] == str(appliance_home / "config.toml")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"command": ["x"], "url": "http://h/mcp"}, "not both"),
        ({"timeout": 3}, "not neither"),
        ({"url": "ftp://h/mcp"}, "not an http(s) URL"),
        ({"comand": ["x"]}, "did you mean 'command'"),
        ({"url": "http://h/mcp", "env": {"A": "b"}}, "env applies to stdio servers only"),
        ({"command": ["x"], "headers": {"A": "b"}}, "headers apply to HTTP servers only"),
        ({"command": ["x"], "timeout": -1}, "timeout must be a number"),
        ({"command": ["x"], "startup_timeout": "soon"}, "startup_timeout must be a number"),
        ({"command": ["x"], "env": {"A": ["list"]}}, "env.A must be a string"),
        ({"command": ["x"], "tools": "add_note"}, "tools must be a list of strings"),
        ({"command": ["x"], "enabled": "yes"}, "enabled must be true or false"),
    ],
)
def test_config_mistakes_are_clear_usage_errors(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_mcp_server("wiki", table, "config.toml")


def test_server_names_must_be_usable_and_not_shadow_builtins(appliance_home: Path) -> None:
    with pytest.raises(ConfigError, match="not usable as a <server_name>"):
        parse_mcp_server("my wiki", {"command": ["x"]}, "config.toml")
    write_config(appliance_home, toml_servers(**{"tool-python": {"command": ["true"]}}))
    settings = load_settings()
    with pytest.raises(ConfigError, match="name of a built-in tool server"):
        build_toolbox(settings, lambda: None)  # type: ignore[arg-type, return-value]
    broken = run_cli(["prompt"])
    assert broken.returncode == 2 and "rename it" in broken.stderr


# ---------------------------------------------------------------- listing


def test_prompt_lists_external_servers_exactly_as_the_reference_agent_does(appliance_home: Path) -> None:
    """The golden was rendered by MiroThinker's own ToolManager + prompt_utils against these servers."""
    write_config(appliance_home, toml_servers(notes=stdio(), ghost=stdio("broken-start")))
    result = run_cli(["prompt", "--date", "2025-11-26"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == (GOLDEN / "system_prompt_with_mcp.txt").read_text(encoding="utf-8")
    # The failed server keeps its header (as in the reference) and the user is told why.
    assert "MCP server 'ghost' could not start" in result.stderr
    assert "cannot open database" in result.stderr


def test_tools_allowlist_limits_what_the_model_sees(tmp_path: Path) -> None:
    box = ToolBox([server(tmp_path, tools=["search_notes", "nonexistent"])])
    try:
        (spec,) = box.server_specs()
        assert [t.name for t in spec.tools] == ["search_notes"]
        outcome = box.call("notes", "crash", {}, ctx(tmp_path))
        assert outcome.status == "unknown_tool"  # not offered, so not callable either
        assert any("nonexistent" in p for p in box.problems())
    finally:
        box.close()


# ---------------------------------------------------------------- calls


def test_calls_share_one_session_and_results_become_text(notes: tuple[ToolBox, CallContext]) -> None:
    box, context = notes
    assert box.call("notes", "add_note", {"title": "Mars", "body": "two moons"}, context).text == "1 notes stored"
    found = box.call("notes", "search_notes", {"query": "moons"}, context)
    assert (found.status, found.text) == ("ok", "Mars: two moons")  # state kept: one server process
    mixed = box.call("notes", "mixed", {}, context)
    assert mixed.text.splitlines()[0] == "before" and mixed.text.splitlines()[-1] == "after"
    assert "[image content (image/png" in mixed.text
    refused = box.call("notes", "refuse", {}, context)
    assert (refused.status, refused.text) == ("error", "no such record")
    assert box.call("notes", "undocumented", {}, context).text == "ok"
    bad = box.call("notes", "add_note", {"title": "x"}, context)
    assert bad.status == "bad_arguments" and "body: field required" in bad.text
    assert box.call("notes", "no_such_tool", {}, context).status == "unknown_tool"


def test_the_server_gets_its_env_but_none_of_the_appliances(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_API_KEY", "leak-me")
    monkeypatch.setenv("OPENAI_API_KEY", "leak-me-too")
    box = ToolBox([server(tmp_path, env={"NOTES_TOKEN": "granted"})])
    try:
        context = ctx(tmp_path)
        has = {name: box.call("notes", "env_has", {"name": name}, context).text for name in
               ("NOTES_TOKEN", "PATH", "APPLIANCE_API_KEY", "OPENAI_API_KEY")}  # fmt: skip
        assert has == {"NOTES_TOKEN": "True", "PATH": "True", "APPLIANCE_API_KEY": "False", "OPENAI_API_KEY": "False"}
    finally:
        box.close()


def test_a_crashing_server_gives_a_clear_result_and_is_restarted(tmp_path: Path) -> None:
    box = ToolBox([server(tmp_path)])
    context = ctx(tmp_path)
    try:
        first_pid = int(box.call("notes", "pid", {}, context).text)
        crashed = box.call("notes", "crash", {}, context)
        assert crashed.status == "failed"
        assert "exited during the call" in crashed.text
        assert "crashing on purpose" in crashed.text  # the server's stderr, from its log
        assert "restarted at the next call" in crashed.meta["notice"]
        after = box.call("notes", "pid", {}, context)
        assert after.status == "ok" and int(after.text) != first_pid
        for _ in range(RESTARTS_PER_RUN):
            box.call("notes", "crash", {}, context)
        given_up = box.call("notes", "pid", {}, context)
        assert given_up.status == "failed" and "not started again" in given_up.text
    finally:
        box.close()
    log = (tmp_path / "notes.log").read_text()
    assert log.count("crashing on purpose") == RESTARTS_PER_RUN + 1


def test_a_hanging_server_times_out_is_stopped_and_replaced(tmp_path: Path) -> None:
    box = ToolBox([server(tmp_path, timeout=1.5)])
    context = ctx(tmp_path, timeout=60)  # the server's own timeout is the shorter one
    try:
        stuck_pid = int(box.call("notes", "pid", {}, context).text)
        started = time.monotonic()
        hung = box.call("notes", "hang", {"seconds": 600}, context)
        assert hung.status == "timeout" and "1.5 seconds" in hung.text
        assert time.monotonic() - started < 20  # the 1.5 s timeout, not the 600 s hang (slack for a loaded machine)
        fresh = box.call("notes", "pid", {}, context)
        assert fresh.status == "ok" and int(fresh.text) != stuck_pid
        assert wait_gone(stuck_pid), "the stuck server process was left running"
    finally:
        box.close()


def test_closing_stops_every_server_process(tmp_path: Path) -> None:
    box = ToolBox([server(tmp_path)])
    pid = int(box.call("notes", "pid", {}, ctx(tmp_path)).text)
    box.close()
    assert not alive(pid)


# ---------------------------------------------------------------- failed starts


def test_a_server_that_cannot_start_fails_its_calls_clearly(tmp_path: Path) -> None:
    box = ToolBox([server(tmp_path, "broken-start", name="ghost")])
    try:
        (spec,) = box.server_specs()
        assert spec.tools == ()
        (problem,) = box.problems()
        assert "could not start" in problem and "cannot open database" in problem
        outcome = box.call("ghost", "anything", {}, ctx(tmp_path))
        assert outcome.status == "failed" and "could not start" in outcome.text and outcome.meta["notice"]
    finally:
        box.close()


def test_a_server_that_never_answers_the_handshake_is_given_up_on_time(tmp_path: Path) -> None:
    hanging = server(tmp_path, "hang-start", name="mute", startup_timeout=1)
    started = time.monotonic()
    assert list(hanging.tools()) == []
    assert time.monotonic() - started < 8
    assert "did not start within 1 s" in hanging.problems()[0]
    hanging.close()


def test_a_missing_command_is_named(tmp_path: Path) -> None:
    missing = ExternalMcpServer(parse_mcp_server("gone", {"command": ["/nonexistent/mcp-server"]}, "t"))
    assert list(missing.tools()) == []
    assert "/nonexistent/mcp-server" in missing.problems()[0]
    missing.close()


# ---------------------------------------------------------------- streamable HTTP


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_notes() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, SERVERS, "notes", "--http", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1)
            break
        time.sleep(0.1)
    yield url, proc
    proc.kill()
    proc.wait()


def test_streamable_http_server_lists_calls_and_survives_its_loss(
    tmp_path: Path, http_notes: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, proc = http_notes
    remote = ExternalMcpServer(parse_mcp_server("remote", {"url": url, "timeout": 10}, "test"))
    box = ToolBox([remote])
    context = ctx(tmp_path)
    try:
        (spec,) = box.server_specs()
        assert "add_note" in [t.name for t in spec.tools]
        assert box.call("remote", "add_note", {"title": "a", "body": "b"}, context).text == "1 notes stored"
        assert box.call("remote", "search_notes", {"query": "b"}, context).text == "a: b"
        proc.kill()
        proc.wait()
        gone = box.call("remote", "search_notes", {"query": "b"}, context)
        assert gone.status in ("failed", "error") and gone.text, gone
        again = box.call("remote", "search_notes", {"query": "b"}, context)
        assert again.status == "failed" and "could not start" in again.text and "connect" in again.text
    finally:
        box.close()


def test_an_unreachable_url_is_a_startup_problem(tmp_path: Path) -> None:
    remote = ExternalMcpServer(parse_mcp_server("remote", {"url": f"http://127.0.0.1:{free_port()}/mcp"}, "t"))
    assert list(remote.tools()) == []
    assert "could not start" in remote.problems()[0] and "connect" in remote.problems()[0]
    remote.close()


# ---------------------------------------------------------------- in a run


def run_with_notes(tmp_path: Path, turns: list[str], **server_options: Any) -> tuple[list[Any], ToolBox]:
    settings = load_settings(overrides={"tools.enabled": []})
    config = parse_mcp_server("notes", stdio(**server_options), "test")
    settings.mcp_servers = {"notes": config}
    backend = RecordingReplay(turns)
    toolbox = build_toolbox(settings, lambda: backend)
    agent, state = prepare_run(settings, "Take notes.", backend=backend, toolbox=toolbox)
    try:
        return run_all(agent, state), toolbox
    finally:
        toolbox.close()


def test_a_run_goes_on_through_a_crash_and_truncates_huge_output(appliance_home: Path, tmp_path: Path) -> None:
    turns = [
        tool_call("notes", "add_note", {"title": "Mars", "body": "two moons"}),
        tool_call("notes", "crash", {}),
        tool_call("notes", "huge", {"chars": 3_000_000}),
        tool_call("notes", "search_notes", {"query": "Mars"}),
        "Done.",
        "\\boxed{no notes}",
    ]
    events, _ = run_with_notes(tmp_path, turns)
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [f.status for f in finished] == ["ok", "failed", "ok", "ok"]
    assert finished[1].result.startswith("Tool call to crash on notes failed. Error: MCP server 'notes' exited during")
    huge = finished[2]
    assert huge.truncated and huge.raw_chars == 3_000_000
    assert len(huge.result) < 110_000 and huge.result.endswith("[Result truncated]")
    # The restarted server is a new process: the note added before the crash is gone.
    assert finished[3].result == "no notes"
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("restarted at the next call" in n for n in notices)
    (end,) = [e for e in events if isinstance(e, RunFinished)]
    assert end.status == "answered" and end.tool_calls == 4


def test_headless_run_records_external_calls_and_never_their_secrets(appliance_home: Path, tmp_path: Path) -> None:
    write_config(appliance_home, toml_servers(notes=stdio(env={"NOTES_TOKEN": "tok-9f8e7d"})))
    replay = write_replay(
        tmp_path / "r.jsonl",
        [
            tool_call("notes", "add_note", {"title": "Phobos", "body": "inner moon"}),
            tool_call("notes", "search_notes", {"query": "moon"}),
            "It is Phobos.",
            "\\boxed{Phobos}",
        ],
    )
    result = run_cli(["--task", "Which moon?", "--replay", str(replay), "--json"], env=NO_BUILTINS)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["answer"] == "Phobos" and payload["tool_calls"] == 2
    shown = run_cli(["history", "show", payload["run_id"], "--json"])
    assert shown.returncode == 0, shown.stderr
    assert "Phobos: inner moon" in shown.stdout and "notes" in shown.stdout
    raw = (appliance_home / "history.db").read_bytes() + b"".join(
        p.read_bytes() for p in appliance_home.glob("history.db*") if p.is_file()
    )
    assert b"tok-9f8e7d" not in raw
    with sqlite3.connect(appliance_home / "history.db") as db:
        rows = db.execute("SELECT server, tool, status, result FROM tool_calls ORDER BY id").fetchall()
    assert rows == [
        ("notes", "add_note", "ok", "1 notes stored"),
        ("notes", "search_notes", "ok", "Phobos: inner moon"),
    ]


def test_a_failed_server_does_not_stop_a_headless_run(appliance_home: Path, tmp_path: Path) -> None:
    write_config(appliance_home, toml_servers(ghost=stdio("broken-start")))
    replay = write_replay(tmp_path / "r.jsonl", [tool_call("ghost", "lookup", {}), "Fine.", "\\boxed{42}"])
    result = run_cli(["--task", "What is it?", "--replay", str(replay), "--json"], env=NO_BUILTINS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["answer"] == "42"
    assert "MCP server 'ghost' could not start" in result.stderr


# ---------------------------------------------------------------- health


def test_doctor_and_mcp_list_report_each_server(appliance_home: Path) -> None:
    write_config(
        appliance_home,
        toml_servers(notes=stdio(), ghost=stdio("broken-start"), off={"command": ["true"], "enabled": False}),
    )
    listed = run_cli(["mcp", "list", "--json"])
    assert listed.returncode == 3, listed.stderr
    by_name = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert by_name["notes"]["status"] == "ok" and "add_note" in by_name["notes"]["tools"]
    golden = (GOLDEN / "system_prompt_with_mcp.txt").read_text(encoding="utf-8")
    listing = golden.split("## Server name: notes\n", 1)[1].split("\n## Server name: ghost", 1)[0]
    assert by_name["notes"]["prompt_chars"] == len("\n## Server name: notes\n" + listing)
    assert by_name["ghost"]["status"] == "fail" and "cannot open database" in by_name["ghost"]["detail"]
    assert "mcp-ghost.log" in by_name["ghost"]["fix"]
    assert by_name["off"]["status"] == "skip"
    plain = run_cli(["mcp", "list"])
    assert "[ok  ] notes: stdio" in plain.stdout and "[FAIL] ghost" in plain.stdout
    doctor = run_cli(["doctor", "--json", "--profile", "cpu-8b"], timeout=240)
    checks = {c["component"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["MCP server notes"]["status"] == "ok"
    assert checks["MCP server ghost"]["status"] == "fail" and checks["MCP server ghost"]["fix"]


def test_mcp_list_without_servers_shows_an_example(appliance_home: Path) -> None:
    result = run_cli(["mcp", "list"])
    assert result.returncode == 0 and "[mcp_servers.notes]" in result.stdout


def test_the_readme_example_configuration_is_valid(appliance_home: Path) -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## MCP: your tool servers in, ours out", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    write_config(appliance_home, example)
    servers = load_settings().mcp_servers
    assert [(s.name, s.transport) for s in servers.values()] == [("wiki", "stdio"), ("crm", "http")]
    assert servers["wiki"].timeout == 120 and servers["crm"].headers["Authorization"].startswith("Bearer")


def test_mcp_serve_does_not_pass_the_users_servers_through(appliance_home: Path) -> None:
    from appliance.tools.mcp.serve import ServedTools, serve_context

    write_config(appliance_home, toml_servers(notes=stdio()))
    settings = load_settings()
    served = ServedTools(settings, ["search_and_scrape_webpage"], serve_context(settings, None, []))
    try:
        assert list(served.toolbox.servers) == ["search_and_scrape_webpage"]
        assert [t.name for t in served.tools()] == ["google_search"]
    finally:
        served.close()


def test_url_secrets_and_home_paths(appliance_home: Path) -> None:
    from appliance.policy import redact_url

    # One rule for every secret (appliance.policy): the user and password go, and credential parameters' values.
    assert redact_url("https://bob:pa55@h.example/mcp?token=abc&x=") == "https://***@h.example/mcp?token=***&x="
    assert redact_url("http://127.0.0.1:8000/mcp") == "http://127.0.0.1:8000/mcp"
    config = parse_mcp_server("r", {"url": "https://h.example/mcp?api_key=k3y"}, "t")
    assert "k3y" not in config.target() and "k3y" not in json.dumps(config.as_dict())
    assert config.as_dict(redact=False)["url"].endswith("k3y")
    home = parse_mcp_server("h", {"command": "~/bin/notes-mcp --db ~/n.db"}, "t")
    assert home.command == (str(Path.home() / "bin" / "notes-mcp"), "--db", "~/n.db")
    assert parse_mcp_server("p", {"command": "./server"}, "t").command == ("./server",)


def test_a_banner_on_stdout_does_not_break_the_session(appliance_home: Path, tmp_path: Path) -> None:
    write_config(appliance_home, toml_servers(notes=stdio("noisy")))
    replay = write_replay(
        tmp_path / "r.jsonl", [tool_call("notes", "search_notes", {"query": "x"}), "None.", "\\boxed{none}"]
    )
    result = run_cli(["--task", "Any notes?", "--replay", str(replay), "--json"], env=NO_BUILTINS)
    assert result.returncode == 0, result.stderr
    assert "notes/search_notes" in result.stderr and "-> ok" in result.stderr
    # The SDK's complaint about the banner stays off the terminal.
    assert "Traceback" not in result.stderr and "JSONRPCMessage" not in result.stderr


def test_a_server_that_exits_between_calls_is_started_again_quietly(tmp_path: Path) -> None:
    box = ToolBox([server(tmp_path)])
    context = ctx(tmp_path)
    try:
        box.server_specs()
        first = box.call("notes", "pid", {}, context)
        # exit_soon is not listed, so it is reached through the server directly, as a tool would be.
        (notes,) = box.servers.values()
        assert isinstance(notes, ExternalMcpServer) and notes.connected
        assert notes.call("exit_soon", {}, context).text == "bye"
        assert wait_gone(int(first.text))
        deadline = time.monotonic() + 10
        while notes.connected:  # noticed without any call: the end of the server's output
            assert time.monotonic() < deadline, "the exit went unnoticed"
            time.sleep(0.02)
        after = box.call("notes", "pid", {}, context)
        assert after.status == "ok", after
        assert int(after.text) != int(first.text)
        assert (
            "stopped: exited between calls" in after.meta["notice"] and "leaving between calls" in after.meta["notice"]
        )
        assert "started again" in after.meta["notice"]
    finally:
        box.close()
