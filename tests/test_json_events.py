"""`--json-events`: the live event stream of a headless run (subprocesses of `python -m appliance`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from appliance.agent.events import TextDelta, TurnEnded, TurnStarted
from appliance.eventstream import JsonEventStream
from appliance.store import open_history
from tests.conftest import REPO_ROOT, cli_env, run_cli, tool_call, write_replay

NO_TOOLS = {"APPLIANCE_TOOLS_ENABLED": ""}
VARYING = ("run_id", "elapsed_s")  # differ between two runs of the same script


def stable(result: dict[str, Any]) -> dict[str, Any]:
    """A --json object without what differs between two runs of the same script (ids, times)."""
    kept = {k: v for k, v in result.items() if k not in VARYING}
    kept["attempts"] = [{k: v for k, v in a.items() if k != "run_id"} for a in result.get("attempts", [])]
    return kept


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_every_line_parses_and_the_types_follow_the_run(appliance_home: Path, tmp_path: Path) -> None:
    replay = write_replay(
        tmp_path / "r.jsonl",
        [tool_call("nowhere", "lookup", {"q": "x"}), "Two moons.", "The answer is \\boxed{2}"],
    )
    result = run_cli(["--task", "Moons of Mars?", "--replay", str(replay), "--json-events"], env=NO_TOOLS)
    assert result.returncode == 0, result.stderr
    records = lines(result.stdout)
    types = [r["type"] for r in records]
    turn = ["turn_started", "text_delta", "turn_ended", "turn_kept"]
    assert types == [
        "run_started",
        *turn, "tool_call_started", "tool_call_finished",
        *turn,
        "summary_started", "turn_started", "text_delta", "turn_ended",
        "run_finished",
    ]  # fmt: skip
    started, finished = records[0], records[-1]
    run_id = finished["result"]["run_id"]
    assert started["run_id"] == run_id and started["task"] == "Moons of Mars?"
    ended = [r for r in records if r["type"] == "turn_ended"]
    assert [(r["turn"], r["kind"]) for r in ended] == [(1, "turn"), (2, "turn"), (3, "summary")]
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in ended)
    call = next(r for r in records if r["type"] == "tool_call_finished")
    assert call["tool"] == "lookup" and call["status"] == "unknown_server"
    assert "Server 'nowhere' not found" in call["result_preview"]
    texts = "".join(r["text"] for r in records if r["type"] == "text_delta" and r["turn"] == 2)
    assert texts == "Two moons."
    assert "[turn 1] nowhere/lookup" in result.stderr  # progress still goes to stderr

    plain = run_cli(["--task", "Moons of Mars?", "--replay", str(replay), "--json"], env=NO_TOOLS)
    expected = json.loads(plain.stdout)
    got = finished["result"]
    assert list(got) == list(expected)
    assert stable(got) == stable(expected)
    assert [a["run_id"] for a in got["attempts"]] == [run_id]


def test_the_task_from_stdin_and_untrusted_text_escaped(appliance_home: Path, tmp_path: Path) -> None:
    replay = write_replay(tmp_path / "r.jsonl", ["Red\x1b[2J\u202eflag", "\\boxed{x}"])
    result = run_cli(["--task", "-", "--replay", str(replay), "--json-events"], env=NO_TOOLS, input="Why\x1b]0;t\x07?")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout and "\x07" not in result.stdout
    records = lines(result.stdout)
    assert records[0]["task"] == "Why\x1b]0;t\x07?"  # escaped on the wire, exact once decoded
    assert "".join(r["text"] for r in records if r["type"] == "text_delta" and r["turn"] == 1) == (
        "Red\x1b[2J\u202eflag"
    )
    assert records[-1]["result"]["answer"] == "x"


def test_a_reader_closing_the_pipe_ends_the_run_as_interrupted(appliance_home: Path, tmp_path: Path) -> None:
    slow = tmp_path / "slow.jsonl"
    slow.write_text(json.dumps({"content": "thinking " * 200, "delay": 60}) + "\n", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--task", "x", "--replay", str(slow), "--json-events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(NO_TOOLS), cwd=REPO_ROOT,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    first = json.loads(process.stdout.readline())
    assert first["type"] == "run_started"
    process.stdout.close()  # like `| head -n 1`
    stderr = process.stderr.read()
    assert process.wait(timeout=30) == 130, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    with open_history(appliance_home / "history.db") as history:
        assert history.get_run(first["run_id"]).status == "interrupted"


def test_bad_input_ends_the_stream_with_the_error(appliance_home: Path) -> None:
    result = run_cli(["--task", "x", "--backend", "ollama", "--json-events"])
    assert result.returncode == 2
    last = lines(result.stdout)[-1]
    assert last["type"] == "run_finished" and last["result"]["status"] == "error"
    assert "unknown backend 'ollama'" in last["result"]["error"]
    both = run_cli(["--task", "x", "--json", "--json-events"])
    assert both.returncode == 2 and "--json and --json-events were both given" in both.stderr
    no_task = run_cli(["--json-events"])
    assert no_task.returncode == 2 and "--json-events needs a task" in no_task.stderr


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_text_deltas_are_batched_by_time_and_by_turn() -> None:
    clock, sink = _Clock(), _Sink()
    stream = JsonEventStream(sink, cancel=lambda: None, clock=clock)  # type: ignore[arg-type]
    stream(TurnStarted(turn=1, kind="turn", prompt_tokens=10))
    for piece in ("a", "b", "c"):
        stream(TextDelta(turn=1, text=piece))
    clock.now = 0.2
    stream(TextDelta(turn=1, text="d"))  # the batch is old enough: written with this piece
    stream(TextDelta(turn=1, text="e"))
    stream(TurnEnded(1, "turn", "abcde", "stop", 10, 5, 10, 0.2, 0))  # ends the turn: the rest goes out first
    records = lines(sink.text)
    assert [(r["type"], r.get("text")) for r in records] == [
        ("turn_started", None),
        ("text_delta", "abcd"),
        ("text_delta", "e"),
        ("turn_ended", None),
    ]
