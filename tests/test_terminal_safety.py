"""Untrusted text (the model's, a tool's, the task, history records) reaches a terminal shown, never obeyed.

The bytes are captured where it matters: through a pseudo-terminal for the
outputs that change when they are a terminal, through pipes and files for the
ones that must stay exact. What counts as unsafe is written out here on its
own, not taken from the code under test.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.textutil import for_terminal, one_line, safe_json, safe_json_text
from tests.conftest import REPO_ROOT, cli_env, run_cli, tool_call, write_replay

NO_TOOLS = {"APPLIANCE_TOOLS_ENABLED": ""}
# What an attacker would plant: cursor moves, screen clears, OSC 52 (clipboard), OSC 8 links,
# backspaces, a C1 CSI, bidi overrides and isolates.
HOSTILE = "\x1b[2J\x1b[H \x1b]52;c;ZXZpbA==\x07 \x1b]8;;https://evil.example\x07link\x1b]8;;\x07 \x08\x08 \x9b31m"
BIDI = "\u202eevil\u202c \u2066iso\u2069"
ANSWER = "Wrong\rRight " + BIDI


def unsafe_characters(text: str) -> list[str]:
    """Characters a terminal would act on: C0 but newline and tab, DEL, C1, bidi embeddings/overrides/isolates."""
    return [
        c
        for c in text
        if (ord(c) < 0x20 and c not in "\n\t")
        or 0x7F <= ord(c) <= 0x9F
        or 0x202A <= ord(c) <= 0x202E
        or 0x2066 <= ord(c) <= 0x2069
    ]


def terminal_text(data: bytes) -> str:
    """What a program wrote to a pty: the line discipline turns each \\n into \\r\\n, and only that."""
    return data.replace(b"\r\n", b"\n").decode("utf-8")


def run_on_terminal(args: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[int, str, str]:
    """`python -m appliance ARGS` with stdout and stderr each on a pseudo-terminal of its own."""
    out_master, out_slave = pty.openpty()
    err_master, err_slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=out_slave,
        stderr=err_slave,
        env=cli_env(env),
        cwd=REPO_ROOT,
    )
    os.close(out_slave)
    os.close(err_slave)
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(stdin.encode())
        process.stdin.close()
    captured: dict[int, bytearray] = {out_master: bytearray(), err_master: bytearray()}
    open_fds = set(captured)
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [], 120)
        assert ready, "the command went quiet for two minutes"
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side is closed
                chunk = b""
            if chunk:
                captured[fd] += chunk
            else:
                open_fds.discard(fd)
    code = process.wait(timeout=60)
    for fd in captured:
        os.close(fd)
    return code, terminal_text(bytes(captured[out_master])), terminal_text(bytes(captured[err_master]))


def test_for_terminal_shows_every_control_and_drops_nothing() -> None:
    assert for_terminal("\\boxed{Wrong\rRight}") == "\\boxed{Wrong\\rRight}"
    shown = for_terminal(HOSTILE + BIDI + "\udcff tab\tnew\nline\r\n")
    assert unsafe_characters(shown) == []
    assert "\\x1b[2J" in shown and "\\x9b31m" in shown and "\\u202eevil" in shown and "\\udcff" in shown
    assert shown.endswith("tab\tnew\nline\n")  # tabs and newlines are kept; CRLF is a newline
    assert "ZXZpbA==" in shown and "https://evil.example" in shown  # the payloads are visible, not removed
    assert one_line("a\rb\n\x1b[1mc") == "a\\rb \\x1b[1mc"
    assert for_terminal(shown) == shown  # showing it again changes nothing


def test_json_escapes_what_a_terminal_acts_on_and_decodes_to_the_exact_text() -> None:
    value = {"answer": ANSWER + HOSTILE + "\u2028", "n": 1}
    text = safe_json(value)
    assert unsafe_characters(text) == [] and "\u2028" not in text
    assert json.loads(text) == value
    tool_json = json.dumps(value, ensure_ascii=False)
    assert json.loads(safe_json_text(tool_json)) == value and unsafe_characters(safe_json_text(tool_json)) == []


@pytest.fixture
def hostile_run(appliance_home: Path, tmp_path: Path) -> dict[str, str]:
    """A recorded run whose task, thinking, tool call, tool result and answer all carry controls."""
    script = write_replay(
        tmp_path / "hostile.jsonl",
        [
            tool_call("nowhere" + HOSTILE, "lookup" + BIDI, {"q": "x" + HOSTILE}, thinking="I " + HOSTILE + BIDI),
            "Some text " + HOSTILE,
            "\\boxed{" + ANSWER + "}",
        ],
    )
    task = "Task " + HOSTILE + BIDI
    code, out, err = run_on_terminal(["--task", task, "--replay", str(script), "--verbose"], NO_TOOLS)
    assert code == 0, err
    listed = run_cli(["history", "list", "--json"], env=NO_TOOLS)
    return {"out": out, "err": err, "run_id": json.loads(listed.stdout)["run_id"], "task": task}


def test_headless_output_on_a_terminal(hostile_run: dict[str, str]) -> None:
    out, err = hostile_run["out"], hostile_run["err"]
    assert unsafe_characters(out) == [] and unsafe_characters(err) == []
    assert out == "Wrong\\rRight \\u202eevil\\u202c \\u2066iso\\u2069\n"  # both words, every character accounted for
    # --verbose streams the model's text; the progress lines name the call and why it failed.
    assert "I \\x1b[2J\\x1b[H" in err and "Some text \\x1b[2J" in err
    assert "[turn 1] nowhere\\x1b[2J" in err
    failed = next(line for line in err.splitlines() if line.startswith("    -> "))
    assert failed.startswith("    -> unknown_server in ") and ": Tool call to lookup\\u202eevil" in failed


def test_json_on_a_terminal_is_escaped_json(appliance_home: Path, tmp_path: Path) -> None:
    script = write_replay(tmp_path / "a.jsonl", ["Thinking.", "\\boxed{" + ANSWER + "}"])
    code, out, err = run_on_terminal(["--task", "-", "--replay", str(script), "--json"], NO_TOOLS, stdin="Q?")
    assert code == 0, err
    assert unsafe_characters(out) == []
    assert json.loads(out)["answer"] == ANSWER  # the exact text, through JSON escapes


def test_history_commands_on_a_terminal(hostile_run: dict[str, str]) -> None:
    run_id = hostile_run["run_id"]
    for args in (
        ["history", "list"],
        ["history", "show", run_id, "--full"],
        ["history", "search", "Wrong"],
        ["history", "export", run_id, "--format", "markdown"],
        ["history", "export", run_id],
        ["history", "list", "--json"],
        ["history", "show", run_id, "--json"],
    ):
        code, out, err = run_on_terminal(args, NO_TOOLS)
        assert code == 0, (args, err)
        assert unsafe_characters(out) == [] and unsafe_characters(err) == [], args
        if ("--json" not in args and args[1] != "export") or "markdown" in args:
            assert "Wrong\\rRight" in out.replace("[Wrong]", "Wrong"), (args, out)  # search marks the match


def test_exports_to_a_file_or_a_pipe_keep_the_exact_text(hostile_run: dict[str, str], tmp_path: Path) -> None:
    run_id = hostile_run["run_id"]
    report = tmp_path / "report.md"
    written = run_cli(["history", "export", run_id, "--format", "markdown", "-o", str(report)], env=NO_TOOLS)
    assert written.returncode == 0, written.stderr
    exact = report.read_bytes()  # bytes: reading text would turn the CR into a newline
    assert ANSWER.encode() in exact and hostile_run["task"].encode() in exact
    piped = subprocess.run(
        [sys.executable, "-m", "appliance", "history", "export", run_id, "--format", "markdown"],
        capture_output=True, env=cli_env(NO_TOOLS), cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert piped.stdout == exact
    trajectory = json.loads(run_cli(["history", "export", run_id], env=NO_TOOLS).stdout)
    assert trajectory["messages"][-1]["content"] == "\\boxed{" + ANSWER + "}"
    again = run_cli(["history", "export", run_id, "--format", "markdown", "-o", str(report)], env=NO_TOOLS)
    assert again.returncode == 2 and "--force" in again.stderr
    assert report.read_bytes() == exact


def test_errors_with_untrusted_text_are_shown_not_obeyed(appliance_home: Path) -> None:
    code, out, err = run_on_terminal(["history", "show", "nope" + HOSTILE], NO_TOOLS)
    assert code in (2, 3) and unsafe_characters(err) == []
    code, out, err = run_on_terminal(["--max-turns", "x" + HOSTILE, "--task", "t", "--json"], NO_TOOLS)
    assert code == 2 and unsafe_characters(out + err) == []
    assert json.loads(out)["status"] == "error"


def test_sandbox_exec_output_is_made_visible_on_a_terminal_and_exact_in_a_pipe(appliance_home: Path) -> None:
    command = ["sandbox", "exec", "--", "printf", "a\\033[2Jb\\rc\\342\\200\\256d\\377e\\n"]
    code, out, err = run_on_terminal(command, {})
    assert code == 0, err
    assert unsafe_characters(out) == []
    assert out == "a\\x1b[2Jb\\rc\\u202ed\\udcffe\n"  # an undecodable byte shows as its escape too
    piped = subprocess.run(
        [sys.executable, "-m", "appliance", *command], capture_output=True, env=cli_env(), cwd=REPO_ROOT, timeout=120
    )
    assert piped.returncode == 0 and piped.stdout == b"a\x1b[2Jb\rc\xe2\x80\xaed\xffe\n"
