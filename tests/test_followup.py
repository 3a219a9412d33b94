"""Follow-up questions on a finished run (issue 19): a new run linked to its parent.

On the replay backend, the real recorder and a real SQLite history: the
follow-up starts from the parent's conversation as the model last saw it (its
own last-K view), or from its report when that would not leave room for work;
a follow-up of a follow-up; resume, attempts and export of a follow-up; the
parent never changes. The command line (`appliance ask`, `--continue`) and its
refusals. The llama.cpp KV prefix reuse is in test_followup_llamacpp.py.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from appliance.agent import runtime
from appliance.agent.context import OMITTED
from appliance.agent.events import AgentEvent, Notice, RunFinished, ToolCallStarted
from appliance.agent.followup import REPLIES_OF_ROOM, fits_conversation
from appliance.llm.base import ChatMessage
from appliance.protocol.prompt import TASK_SUFFIX, render_summary_prompt
from appliance.session import Backends, followup_session, resume_session, start_session
from appliance.store import open_history
from appliance.store.db import RunNotFound, StoreUsageError
from appliance.store.followup import parent_conversation
from appliance.store.history import History
from tests.store_support import call, env_for, settings_for, store_cli, write_script

TASK = "Which city is the capital of France?"
PARENT_TURNS: list[str | dict[str, Any]] = [
    call("echo", text="first result"),
    call("echo", text="second result"),
    call("echo", text="third result"),
    "Paris it is.",
    "The capital is \\boxed{Paris}",
]


@pytest.fixture(autouse=True)
def scripted_tools(monkeypatch: pytest.MonkeyPatch, appliance_home: Path) -> None:
    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")


def run_parent(history: History, tmp_path: Path, turns: list[str | dict[str, Any]] = PARENT_TURNS, **kw: Any) -> str:
    settings = settings_for(write_script(tmp_path / "parent.jsonl", turns), **{"agent.attempts": 0, **kw})
    with Backends() as backends, start_session(history, settings, TASK, backends=backends) as session:
        finished = session.drive()
    assert finished.status == "answered", finished
    return finished.run_id


def ask(
    history: History,
    tmp_path: Path,
    parent: str,
    question: str,
    turns: list[str | dict[str, Any]],
    *,
    name: str = "followup",
    cancel_on_tool: bool = False,
    **overrides: Any,
) -> tuple[RunFinished, list[AgentEvent], Any]:
    script = write_script(tmp_path / f"{name}.jsonl", turns)
    seen: list[AgentEvent] = []
    options = {"model.replay": str(script), "agent.attempts": 0, **overrides}
    with Backends() as backends, followup_session(history, parent, question, options, backends=backends) as session:

        def watch(event: AgentEvent) -> None:
            seen.append(event)
            if cancel_on_tool and isinstance(event, ToolCallStarted):
                session.cancel()

        finished = session.drive(watch)
        state = session.state
    return finished, seen, state


def runs_row(db: Path, run_id: str) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone())


# ------------------------------------------------------------------ the rule


def test_room_for_work_is_two_full_replies() -> None:
    assert fits_conversation(1000, 1000 + REPLIES_OF_ROOM * 300, 300)
    assert not fits_conversation(1001, 1000 + REPLIES_OF_ROOM * 300, 300)


# ------------------------------------------------------------------ conversation


def test_a_followup_continues_the_conversation_as_the_model_last_saw_it(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    with open_history(db) as history:
        parent_id = run_parent(history, tmp_path)
        before, row_before = history.get_run(parent_id), runs_row(db, parent_id)
        seen_by_parent = parent_conversation(history, before)
        finished, events, state = ask(
            history, tmp_path, parent_id[:10], "And of Germany?",
            [call("echo", text="fourth result"), "Berlin.", "\\boxed{Berlin}"],
        )  # fmt: skip
        child = history.get_run(finished.run_id)
        # The parent is only read.
        assert history.get_run(parent_id) == before and runs_row(db, parent_id) == row_before

    assert (finished.status, finished.answer) == ("answered", "Berlin")
    assert (child.parent_run, child.context_mode) == (parent_id, "conversation")
    assert child.task == "And of Germany?" and child.task_message == "And of Germany?" + TASK_SUFFIX
    # The parent's conversation as its last call saw it (keep_last 2: its first result was the placeholder),
    # then its final answer turn; the system prompt is the parent's own.
    assert child.system_prompt == before.system_prompt == seen_by_parent[0].content
    assert list(child.context) == seen_by_parent[1:] == list(state.context)
    assert child.context[0] == ChatMessage("user", before.task_message)
    assert child.context[-2] == ChatMessage("user", render_summary_prompt(TASK))
    assert child.context[-1] == ChatMessage("assistant", "The capital is \\boxed{Paris}")
    results = [m.content for m in child.context if m.role == "user"][1:-1]
    assert results[0] == OMITTED and "third result" in results[-1]
    assert sum(m.role == "assistant" for m in child.context) == 5  # every assistant turn, the answer too
    # It says how it started, and the notice is recorded with the run.
    assert any(isinstance(e, Notice) and "continuing its conversation" in e.message for e in events)
    assert any("continuing its conversation" in message for _, message in child.notices)


def test_a_followup_of_a_followup_starts_from_the_whole_thread(tmp_path: Path) -> None:
    with open_history(tmp_path / "history.db") as history:
        parent_id = run_parent(history, tmp_path)
        first, _, _ = ask(history, tmp_path, parent_id, "And of Germany?", ["Berlin.", "\\boxed{Berlin}"], name="a")
        second, _, _ = ask(history, tmp_path, first.run_id, "And of Italy?", ["Rome.", "\\boxed{Rome}"], name="b")
        child, grandchild = history.get_run(first.run_id), history.get_run(second.run_id)
    assert grandchild.parent_run == child.run_id and grandchild.context_mode == "conversation"
    # The grandchild sees the child's context, then the child's own question, reply, summary and answer.
    n = len(child.context)
    assert grandchild.context[:n] == child.context
    assert grandchild.context[n] == ChatMessage("user", "And of Germany?" + TASK_SUFFIX)
    assert grandchild.context[-1] == ChatMessage("assistant", "\\boxed{Berlin}")
    assert second.answer == "Rome"


def test_a_parent_that_nearly_filled_the_window_gives_a_followup_from_its_report(tmp_path: Path) -> None:
    # The parent's one result fills most of a 16K window: the parent still answers, but its
    # conversation plus two full replies (2 x 2048) would not fit.
    big = [call("repeat", text="filler words ", times=1800), "Paris.", "\\boxed{Paris}"]
    settings = {"model.context_length": 16384, "model.max_tokens": 2048}
    with open_history(tmp_path / "history.db") as history:
        parent_id = run_parent(history, tmp_path, big, **settings)
        finished, events, state = ask(history, tmp_path, parent_id, "And of Germany?", ["\\boxed{Berlin}"] * 2)
        child = history.get_run(finished.run_id)
    assert finished.answer == "Berlin" and child.context_mode == "report"
    assert [m.role for m in child.context] == ["user", "assistant"]
    assert child.context[0].content == TASK + TASK_SUFFIX
    report = child.context[1].content
    assert "Answer: \\boxed{Paris}" in report and "Findings:" in report and "Sources:" in report
    assert "filler" not in report  # the long result is what did not fit
    warned = [e.message for e in events if isinstance(e, Notice) and e.level == "warning"]
    assert any("starts from its report" in m and "16384-token" in m for m in warned)
    assert state.context_mode == "report"


# ------------------------------------------------------------------ like any run


def test_an_interrupted_followup_resumes_with_its_context(tmp_path: Path) -> None:
    with open_history(tmp_path / "history.db") as history:
        parent_id = run_parent(history, tmp_path)
        turns: list[str | dict[str, Any]] = [call("echo", text="x"), "Berlin.", "\\boxed{Berlin}"]
        stopped, _, _ = ask(history, tmp_path, parent_id, "And of Germany?", turns, cancel_on_tool=True)
        assert stopped.status == "interrupted"
        # A follow-up of an interrupted run is refused with the fix.
        with pytest.raises(StoreUsageError) as refused:
            ask(history, tmp_path, stopped.run_id, "Why?", ["\\boxed{x}"], name="refused")
        assert f"resume it first: appliance resume {stopped.run_id}" in refused.value.one_line()
        recorded = history.get_run(stopped.run_id)
        options = {"model.replay": str(tmp_path / "followup.jsonl")}
        with Backends() as backends, resume_session(history, stopped.run_id, options, backends=backends) as session:
            assert session.state.context == list(recorded.context) and session.state.parent_run == parent_id
            finished = session.drive()
        resumed = history.get_run(stopped.run_id)
    assert (finished.status, finished.answer) == ("answered", "Berlin")
    assert resumed.context == recorded.context and resumed.parent_run == parent_id


def test_a_followups_attempts_are_its_own_task_and_start_from_the_same_context(tmp_path: Path) -> None:
    from appliance.protocol.failure import FAILURE_SUMMARY_ASSISTANT_PREFIX

    turns: list[str | dict[str, Any]] = [
        "I do not know.",
        "No idea.",  # the summary, unboxed: attempt 1 fails
        {"content": "Tried nothing useful.", "prefix": FAILURE_SUMMARY_ASSISTANT_PREFIX},
        "Berlin.",
        "\\boxed{Berlin}",
    ]
    with open_history(tmp_path / "history.db") as history:
        parent_id = run_parent(history, tmp_path)
        finished, _, _ = ask(
            history, tmp_path, parent_id, "And of Germany?", turns, **{"agent.attempts": 1, "agent.summary_retries": 1}
        )
        last = history.get_run(finished.run_id)
        first = history.get_run(last.task_root or "")
    assert finished.answer == "Berlin" and last.attempt == 2
    assert first.task_root is None and first.parent_run == last.parent_run == parent_id  # a task of its own
    assert first.context == last.context and first.context_mode == last.context_mode == "conversation"
    assert last.task_message.startswith("And of Germany?") and "Tried nothing useful." in last.task_message


def test_an_unknown_parent_is_refused(tmp_path: Path) -> None:
    with open_history(tmp_path / "history.db") as history, pytest.raises(RunNotFound) as refused:
        ask(history, tmp_path, "nope", "Why?", ["\\boxed{x}"])
    assert "no run 'nope'" in refused.value.one_line()


# ------------------------------------------------------------------ the command line


def cli_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def appliance(args: list[str], tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real CLI with the store tests' tool server (the runs here were recorded with it)."""
    proc = store_cli(args, env_for(tmp_path / "home"), stdin=subprocess.PIPE)
    out, err = proc.communicate(stdin, timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ask_streams_json_events_and_ends_with_the_json_object(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    with open_history(db) as history:
        parent_id = run_parent(history, tmp_path)
    script = write_script(tmp_path / "ask.jsonl", ["Berlin.", "\\boxed{Berlin}"])
    base = ["--db", str(db), "--replay", str(script), "--attempts", "0"]
    streamed = appliance(["ask", parent_id, "And of Germany?", *base, "--json-events"], tmp_path)
    assert streamed.returncode == 0, streamed.stderr
    lines = cli_lines(streamed.stdout)
    started = lines[0]
    assert started["type"] == "run_started" and started["task"] == "And of Germany?"
    assert (started["parent_run"], started["context_mode"]) == (parent_id, "conversation")
    assert any(line["type"] == "notice" and "continuing its conversation" in line["message"] for line in lines)
    assert lines[-1]["type"] == "run_finished" and lines[-1]["result"]["answer"] == "Berlin"
    plain = appliance(["ask", parent_id, "And of Germany?", *base, "--json"], tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert set(json.loads(plain.stdout)) == set(lines[-1]["result"])
    assert f"follow-up of run {parent_id} as run " in plain.stderr


def test_continue_follows_up_the_latest_finished_run(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    script = write_script(tmp_path / "ask.jsonl", ["Berlin.", "\\boxed{Berlin}"])
    base = ["--db", str(db), "--replay", str(script), "--attempts", "0", "--json"]
    nothing = appliance(["--continue", "And of Germany?", *base], tmp_path)
    assert nothing.returncode == 2 and "no finished run to continue" in nothing.stderr
    assert 'Fix: start one with --task "..."' in nothing.stderr
    with open_history(db) as history:
        older = run_parent(history, tmp_path)
        latest = run_parent(history, tmp_path)
    result = appliance(["--continue", "-", *base], tmp_path, "And of Germany?\n")
    assert result.returncode == 0, result.stderr
    with open_history(db) as history:
        child = history.get_run(json.loads(result.stdout)["run_id"])
    assert child.parent_run == latest != older and child.task == "And of Germany?\n"


def test_resume_and_rerun_stream_json_events_too(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    turns: list[str | dict[str, Any]] = [call("echo", text="x"), "Berlin.", "\\boxed{Berlin}"]
    with open_history(db) as history:
        parent_id = run_parent(history, tmp_path)
        stopped, _, _ = ask(history, tmp_path, parent_id, "And of Germany?", turns, cancel_on_tool=True)
    script = str(tmp_path / "followup.jsonl")
    resumed = appliance(["resume", stopped.run_id, "--db", str(db), "--replay", script, "--json-events"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    lines = cli_lines(resumed.stdout)
    assert lines[0]["type"] == "run_started" and lines[0]["resumed"] is True
    assert lines[0]["parent_run"] == parent_id and lines[-1]["result"]["answer"] == "Berlin"
    again = write_script(tmp_path / "again.jsonl", ["Paris.", "\\boxed{Paris}"])
    rerun = appliance(["rerun", parent_id, "--db", str(db), "--replay", str(again), "--json-events"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    lines = cli_lines(rerun.stdout)
    assert lines[0]["type"] == "run_started" and lines[0]["parent_run"] is None
    assert lines[-1]["type"] == "run_finished" and lines[-1]["result"]["answer"] == "Paris"


def test_history_shows_the_thread_and_exports_follow_the_chain(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    with open_history(db) as history:
        parent_id = run_parent(history, tmp_path)
        first, _, _ = ask(history, tmp_path, parent_id, "And of Germany?", ["Berlin.", "\\boxed{Berlin}"], name="a")
        second, _, _ = ask(history, tmp_path, first.run_id, "And of Italy?", ["Rome.", "\\boxed{Rome}"], name="b")
        assert [r.run_id for r in history.thread(second.run_id)] == [parent_id, first.run_id, second.run_id]
    listed = appliance(["history", "--db", str(db), "list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert f"↳ {first.run_id[-6:]}: And of Italy?" in rows[second.run_id]
    assert f"↳ {parent_id[-6:]}: And of Germany?" in rows[first.run_id] and "↳" not in rows[parent_id]
    as_json = appliance(["history", "--db", str(db), "list", "--json"], tmp_path)
    parents = {r["run_id"]: r["parent_run"] for r in map(json.loads, as_json.stdout.splitlines())}
    assert parents == {parent_id: None, first.run_id: parent_id, second.run_id: first.run_id}

    shown = appliance(["history", "--db", str(db), "show", second.run_id], tmp_path)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.index(f"question 1 of 3 (run {parent_id}") < text.index(f"question 2 of 3 (run {first.run_id}")
    assert text.index(f"Follow-up of:** run {first.run_id} (started from its conversation)") > text.index(
        f"question 2 of 3 (run {first.run_id}"
    )
    payload = json.loads(appliance(["history", "--db", str(db), "show", second.run_id, "--json"], tmp_path).stdout)
    assert [r["run_id"] for r in payload["thread"]] == [parent_id, first.run_id]
    assert payload["metadata"]["parent_run"] == first.run_id
    # The trajectory is what the model read: the system prompt, the whole thread, then this run's own turns.
    contents = [m["content"] for m in payload["messages"]]
    assert contents[1].startswith(TASK) and "And of Germany?" + TASK_SUFFIX in contents
    assert contents[-1] == "\\boxed{Rome}"

    exported = appliance(["history", "--db", str(db), "export", second.run_id], tmp_path)
    assert exported.returncode == 0, exported.stderr
    samples = [json.loads(line)["metadata"] for line in exported.stdout.splitlines()]
    assert [s["run_id"] for s in samples] == [parent_id, first.run_id, second.run_id]
    assert [s["parent_run"] for s in samples] == [None, parent_id, first.run_id]
