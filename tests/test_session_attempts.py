"""A task's attempts through the run session: each attempt its own run in the history, linked to the first.

The scenarios drive the reference's decision table end to end (agent/attempts.py)
on the replay backend, the real recorder and a real SQLite history: turns run
out, no box after the summary, every attempt fails and the final one falls
back, a missing failure summary, Ctrl-C stopping all attempts, and attempts
off being one run as before.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from appliance.agent import runtime
from appliance.agent.events import (
    AgentEvent,
    AttemptStarted,
    Notice,
    RunFinished,
    SummaryStarted,
    ToolCallStarted,
    TurnRolledBack,
)
from appliance.eval.report import first_attempt_only, scores
from appliance.eval.runner import RunResult, load_results
from appliance.protocol.failure import FAILURE_SUMMARY_ASSISTANT_PREFIX, render_enhanced_task
from appliance.session import Backends, resume_session, start_session
from appliance.store import open_history
from tests.conftest import run_cli
from tests.store_support import call, env_for, run_store_cli, settings_for, store_cli, write_script
from tests.test_cli import JSON_KEYS
from tests.test_store_crash import wait_for

TASK = "How many moons has Mars?"


@pytest.fixture(autouse=True)
def scripted_tools(monkeypatch: pytest.MonkeyPatch, appliance_home: Path) -> None:
    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")


def failure(text: str) -> dict[str, Any]:
    """A scripted failure-summary reply: it continues the reference's assistant prefix."""
    return {"content": text, "prefix": FAILURE_SUMMARY_ASSISTANT_PREFIX}


def run_task(
    tmp_path: Path, turns: list[str | dict[str, Any]], *, cancel_on_tool: bool = False, **overrides: Any
) -> tuple[list[RunFinished], list[AgentEvent], list[dict[str, Any]], str]:
    """Drive TASK through a session; (each attempt's end, every event, the runs table, the session's run)."""
    script = write_script(tmp_path / "script.jsonl", turns)
    settings = settings_for(script, **overrides)
    seen: list[AgentEvent] = []
    db = tmp_path / "history.db"
    with (
        open_history(db) as history,
        Backends() as backends,
        start_session(history, settings, TASK, backends=backends) as session,
    ):

        def watch(event: AgentEvent) -> None:
            seen.append(event)
            if cancel_on_tool and isinstance(event, ToolCallStarted):
                session.cancel()

        last = session.drive(watch)
        results, run_id = session.attempt_results, session.run_id
        assert results[-1] == last
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        query = "SELECT run_id, task, status, answer, task_root, attempt FROM runs ORDER BY id"
        rows = [dict(r) for r in conn.execute(query)]
    return results, seen, rows, run_id


def test_turns_run_out_then_attempt_two_answers_as_its_own_linked_run(tmp_path: Path) -> None:
    summary = "Failure type: incomplete\nWhat happened: two searches.\nUseful findings: none."
    turns: list[str | dict[str, Any]] = [
        call("google_search", q="mars moons"), call("google_search", q="phobos"),  # attempt 1 spends its turns
        failure(summary),
        "Mars has \\boxed{2} moons.", "\\boxed{2}",  # attempt 2 answers
    ]  # fmt: skip
    results, events, rows, run_id = run_task(tmp_path, turns, **{"agent.max_turns": 2, "agent.attempts": 2})
    assert [(r.status, r.answer) for r in results] == [("no_answer", None), ("answered", "2")]
    assert results[0].failure_summary == summary
    first, second = rows
    assert (first["attempt"], first["task_root"], first["status"], first["task"]) == (1, None, "no_answer", TASK)
    # Attempt 2 is a run of its own, linked to the first, whose task is the enhanced task.
    assert (second["attempt"], second["task_root"], second["answer"]) == (2, first["run_id"], "2")
    assert second["task"] == render_enhanced_task(TASK, [summary])
    # The session ends on the answering run; the faces hear the attempt start.
    assert run_id == second["run_id"]
    assert [e.line for e in events if isinstance(e, AttemptStarted)] == [
        "attempt 2/3: starting again with 1 failure summary"
    ]


def test_the_context_fills_then_attempt_two_starts_from_the_enhanced_task(tmp_path: Path) -> None:
    # In a 4,096-token window (the tools' system prompt is half of it) the second result leaves no room.
    small, large = (call("repeat", text=f"line {n} of the archive ", times=n) for n in (20, 120))
    summary = "Failure type: context_full\nWhat happened: read two archives."
    turns: list[str | dict[str, Any]] = [small, large, failure(summary), "\\boxed{2}", "\\boxed{2}"]
    results, events, rows, run_id = run_task(
        tmp_path, turns, **{"agent.attempts": 1, "agent.keep_last": 5, "model.context_length": 4096,
                            "model.max_tokens": 256}
    )  # fmt: skip
    assert [(r.status, r.answer) for r in results] == [("no_answer", None), ("answered", "2")]
    first_events = events[: next(i for i, e in enumerate(events) if isinstance(e, AttemptStarted))]
    # Not the final attempt and out of room: no answer turn is asked for (a guess), the failure summary is.
    assert any(isinstance(e, TurnRolledBack) and e.reason == "context_full" for e in first_events)
    assert not any(isinstance(e, SummaryStarted) for e in first_events)
    assert any(isinstance(e, Notice) and "ran out of turns or context" in e.message for e in first_events)
    assert results[0].failure_summary == summary
    assert rows[1]["task"] == render_enhanced_task(TASK, [summary]) and run_id == rows[1]["run_id"]


def test_no_box_after_the_summary_retries_and_no_earlier_box_is_used(tmp_path: Path) -> None:
    turns: list[str | dict[str, Any]] = [
        "I think it is \\boxed{3}.", "The answer is three.", "Still three.", "Three.",
        failure("Failure type: format_missed"),
        "\\boxed{2} it is", "\\boxed{2}",
    ]  # fmt: skip
    results, _, rows, _ = run_task(tmp_path, turns, **{"agent.attempts": 1})
    assert [r.answer for r in results] == [None, "2"]
    assert [r["answer"] for r in rows] == [None, "2"]
    assert rows[1]["task"] == render_enhanced_task(TASK, ["Failure type: format_missed"])


def test_every_attempt_fails_and_the_final_one_falls_back(tmp_path: Path) -> None:
    no_box = ["Maybe \\boxed{3}.", "No idea.", "No idea.", "No idea."]
    turns: list[str | dict[str, Any]] = [
        *no_box, failure("Failure type: misdirected"), *no_box, failure("Failure type: blocked"), *no_box,
    ]  # fmt: skip
    results, events, rows, run_id = run_task(tmp_path, turns, **{"agent.attempts": 2})
    assert [r.answer for r in results] == [None, None, "3"]
    assert [(r["attempt"], r["task_root"]) for r in rows] == [(1, None), (2, rows[0]["run_id"]), (3, rows[0]["run_id"])]
    assert rows[2]["task"] == render_enhanced_task(TASK, ["Failure type: misdirected", "Failure type: blocked"])
    assert run_id == rows[2]["run_id"]
    assert [e.line for e in events if isinstance(e, AttemptStarted)] == [
        "attempt 2/3: starting again with 1 failure summary",
        "attempt 3/3: starting again with 2 failure summaries",
    ]


def test_a_missing_failure_summary_starts_the_next_attempt_without_it(tmp_path: Path) -> None:
    turns: list[str | dict[str, Any]] = [call("google_search", q="mars"), failure(""), "\\boxed{2}", "\\boxed{2}"]
    results, events, rows, _ = run_task(tmp_path, turns, **{"agent.max_turns": 1, "agent.attempts": 1})
    assert [r.answer for r in results] == [None, "2"] and results[0].failure_summary is None
    assert rows[1]["task"] == TASK  # nothing to add: the task starts again unchanged
    assert [e.line for e in events if isinstance(e, AttemptStarted)] == [
        "attempt 2/2: starting again with no failure summary"
    ]


def test_a_corrupt_failure_summary_is_used_as_written_and_the_task_goes_on(tmp_path: Path) -> None:
    # A reply that ignores the requested format: the reference keeps whatever text came.
    garbage = "\x00 ### ]]] not the format at all"
    turns: list[str | dict[str, Any]] = [call("google_search", q="mars"), failure(garbage), "\\boxed{2}", "\\boxed{2}"]
    results, _, rows, _ = run_task(tmp_path, turns, **{"agent.max_turns": 1, "agent.attempts": 1})
    assert [r.answer for r in results] == [None, "2"]
    assert results[0].failure_summary is not None
    assert rows[1]["task"] == render_enhanced_task(TASK, [results[0].failure_summary])


def test_a_corrupt_recorded_failure_summary_leaves_it_out_of_the_resumed_tasks_next_attempt(tmp_path: Path) -> None:
    turns: list[str | dict[str, Any]] = [
        "Maybe.", "No idea.", "No idea.", "No idea.", failure("Failure type: first"),  # attempt 1
        call("google_search", q="mars"), "Nothing found.", "No idea.", "No idea.", "No idea.",  # attempt 2
        failure("Failure type: second"),
        "\\boxed{2}", "\\boxed{2}",  # attempt 3
    ]  # fmt: skip
    results, _, rows, _ = run_task(tmp_path, turns, cancel_on_tool=True, **{"agent.attempts": 2})
    assert [r.status for r in results] == ["no_answer", "interrupted"]
    first, second = rows[0]["run_id"], rows[1]["run_id"]
    with sqlite3.connect(tmp_path / "history.db") as conn:  # attempt 1's record of its summary is damaged
        conn.execute("UPDATE events SET data = '{not json' WHERE run_id = ? AND type = 'RunFinished'", (first,))
    with (
        open_history(tmp_path / "history.db") as history,
        Backends() as backends,
        resume_session(history, second, backends=backends) as session,
    ):
        last = session.drive()
        assert [r.attempt for r in session.attempt_results] == [2, 3] and last.answer == "2"
        third = history.get_run(session.run_id)
    # The resumed attempt 2 keeps the task it was given; attempt 3 starts without the unreadable summary.
    assert rows[1]["task"] == render_enhanced_task(TASK, ["Failure type: first"])
    assert (third.attempt, third.task_root) == (3, first)
    assert third.task == render_enhanced_task(TASK, ["Failure type: second"])


def test_cancel_stops_every_attempt(tmp_path: Path) -> None:
    turns: list[str | dict[str, Any]] = [call("google_search", q="mars"), failure("x"), "\\boxed{2}", "\\boxed{2}"]
    results, _, rows, _ = run_task(tmp_path, turns, cancel_on_tool=True, **{"agent.attempts": 3})
    assert [r.status for r in results] == ["interrupted"]
    assert len(rows) == 1 and rows[0]["status"] == "interrupted"


def test_attempts_off_is_one_run_as_before(tmp_path: Path) -> None:
    turns: list[str | dict[str, Any]] = ["Maybe \\boxed{3}.", "No idea.", "No idea.", "No idea."]
    results, events, rows, run_id = run_task(tmp_path, turns, **{"agent.attempts": 0})
    assert [r.answer for r in results] == ["3"]  # the single run falls back to the earlier box
    assert [(r["attempt"], r["task_root"]) for r in rows] == [(1, None)] and run_id == rows[0]["run_id"]
    assert not any(isinstance(e, AttemptStarted) for e in events)
    assert not any(isinstance(e, Notice) and e.message.startswith("attempt ") for e in events)


def test_headless_says_each_attempt_and_json_lists_them(tmp_path: Path) -> None:
    turns: list[str | dict[str, Any]] = [
        "I think it is \\boxed{3}.", "Three.", "Three.", "Three.", failure("Failure type: format_missed"),
        "\\boxed{2}", "\\boxed{2}",
    ]  # fmt: skip
    script = write_script(tmp_path / "script.jsonl", turns)
    args = ["--task", TASK, "--replay", str(script), "--attempts", "2", "--json"]
    result = run_cli(args, env={"APPLIANCE_TOOLS_ENABLED": ""})
    assert result.returncode == 0, result.stderr
    assert "attempt 2/3: starting again with 1 failure summary" in result.stderr.splitlines()
    payload = json.loads(result.stdout)
    assert list(payload) == JSON_KEYS  # every key a single run had stays, and the attempts
    first, second = payload["attempts"]
    assert (first["attempt"], first["status"], first["answer"], first["failure_summary"]) == (
        1,
        "no_answer",
        None,
        True,
    )
    assert (second["attempt"], second["status"], second["answer"], second["failure_summary"]) == (
        2,
        "answered",
        "2",
        False,
    )
    # The top-level run is the one whose answer is final.
    assert (payload["run_id"], payload["answer"]) == (second["run_id"], "2") and first["run_id"] != second["run_id"]


def test_json_of_a_single_run_lists_one_attempt(tmp_path: Path) -> None:
    script = write_script(tmp_path / "script.jsonl", ["\\boxed{2}", "\\boxed{2}"])
    result = run_cli(["--task", TASK, "--replay", str(script), "--json"], env={"APPLIANCE_TOOLS_ENABLED": ""})
    payload = json.loads(result.stdout)
    assert payload["attempts"] == [
        {"attempt": 1, "run_id": payload["run_id"], "status": "answered", "answer": "2", "failure_summary": False}
    ]
    assert "attempt" not in result.stderr


@pytest.mark.slow
def test_a_process_killed_in_attempt_three_resumes_attempt_three_with_both_summaries(
    tmp_path: Path, appliance_home: Path
) -> None:
    turns: list[str | dict[str, Any]] = [
        call("google_search", q="mars"), failure("Failure type: first"),
        call("google_search", q="phobos"), failure("Failure type: second"),
        call("wait", seconds=60, marker="waiting", release="go"), "\\boxed{2}",  # attempt 3 (final)
    ]  # fmt: skip
    script = write_script(tmp_path / "script.jsonl", turns)
    ws = tmp_path / "ws"
    ws.mkdir()
    env = env_for(appliance_home, APPLIANCE_MAX_TURNS="1")
    proc = store_cli(["--task", TASK, "--replay", str(script), "--attempts", "2", "--workspace", str(ws)], env)
    try:
        wait_for(lambda: (ws / "waiting").exists())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with open_history(appliance_home / "history.db") as history:
        runs = sorted(history.list_runs(limit=0), key=lambda r: r.started_at)
        assert len(runs) == 3
        third = history.get_run(runs[-1].run_id)
        assert (third.attempt, third.task_root, third.status) == (3, runs[0].run_id, "interrupted")
    (ws / "go").write_text("")
    done = run_store_cli(["resume", third.run_id, "--json"], env)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert (payload["run_id"], payload["answer"]) == (third.run_id, "2")
    assert [(a["attempt"], a["status"]) for a in payload["attempts"]] == [(3, "answered")]
    with open_history(appliance_home / "history.db") as history:
        after = history.list_runs(limit=0)
        assert len(after) == 3  # nothing redone: attempts 1 and 2 stand, attempt 3 finished in place
        resumed = history.get_run(third.run_id)
        assert resumed.task == render_enhanced_task(TASK, ["Failure type: first", "Failure type: second"])
        assert [c.tool for s in resumed.steps for c in s.calls] == ["wait"]
        assert history.failure_summaries(runs[0].run_id, 3) == ["Failure type: first", "Failure type: second"]


@pytest.mark.slow
def test_a_process_killed_in_attempt_two_resumes_it_and_goes_on_to_attempt_three(
    tmp_path: Path, appliance_home: Path
) -> None:
    turns: list[str | dict[str, Any]] = [
        call("google_search", q="mars"), failure("Failure type: first"),  # attempt 1
        call("wait", seconds=60, marker="waiting", release="go"), failure("Failure type: second"),  # attempt 2
        "\\boxed{2}", "\\boxed{2}",  # attempt 3 (final)
    ]  # fmt: skip
    script = write_script(tmp_path / "script.jsonl", turns)
    ws = tmp_path / "ws"
    ws.mkdir()
    env = env_for(appliance_home, APPLIANCE_MAX_TURNS="1")
    proc = store_cli(["--task", TASK, "--replay", str(script), "--attempts", "2", "--workspace", str(ws)], env)
    try:
        wait_for(lambda: (ws / "waiting").exists())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    with open_history(appliance_home / "history.db") as history:
        first, second = sorted(history.list_runs(limit=0), key=lambda r: r.started_at)
        assert (history.get_run(second.run_id).attempt, history.get_run(second.run_id).status) == (2, "interrupted")
    (ws / "go").write_text("")
    done = run_store_cli(["resume", second.run_id, "--json"], env)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    # resume --json lists the attempts this command ran: attempt 2 (resumed) and attempt 3 (new).
    assert [(a["attempt"], a["status"]) for a in payload["attempts"]] == [(2, "no_answer"), (3, "answered")]
    assert payload["attempts"][0]["run_id"] == second.run_id and payload["answer"] == "2"
    assert "attempt 3/3: starting again with 2 failure summaries" in done.stderr
    with open_history(appliance_home / "history.db") as history:
        runs = history.task_attempts(first.run_id)
        assert [r.attempt for r in runs] == [1, 2, 3] and runs[2].run_id == payload["run_id"]
        assert [c.tool for s in runs[0].steps for c in s.calls] == ["google_search"]  # attempt 1 not redone
        assert runs[1].task == render_enhanced_task(TASK, ["Failure type: first"])  # resumed with its summary
        assert [c.tool for s in runs[1].steps for c in s.calls] == ["wait"]
        assert runs[2].task == render_enhanced_task(TASK, ["Failure type: first", "Failure type: second"])


def test_history_show_and_export_carry_every_attempt_of_the_task(tmp_path: Path) -> None:
    no_box = ["Maybe \\boxed{3}.", "No idea.", "No idea.", "No idea."]
    turns: list[str | dict[str, Any]] = [*no_box, failure("Failure type: misdirected"), "\\boxed{2}", "\\boxed{2}"]
    _, _, rows, _ = run_task(tmp_path, turns, **{"agent.attempts": 1})
    first, second = (r["run_id"] for r in rows)
    db = ["history", "--db", str(tmp_path / "history.db")]
    shown = run_cli([*db, "show", second])
    assert shown.returncode == 0, shown.stderr
    assert f"# Attempt 1 of 2 (run {first}, no_answer)" in shown.stdout
    assert f"# Attempt 2 of 2 (run {second}, answered)" in shown.stdout
    assert shown.stdout.index("Attempt 1 of 2") < shown.stdout.index("Attempt 2 of 2")
    payload = json.loads(run_cli([*db, "show", first, "--json"]).stdout)
    assert [(a["attempt"], a["run_id"], a["answer"]) for a in payload["attempts"]] == [
        (1, first, None),
        (2, second, "2"),
    ]
    # Naming either attempt exports both, each its own ChatML sample tied to the first.
    exported = run_cli([*db, "export", second])
    samples = [json.loads(line)["metadata"] for line in exported.stdout.splitlines()]
    assert [(m["run_id"], m["attempt"], m["task_root"]) for m in samples] == [(first, 1, first), (second, 2, first)]
    assert samples[1]["task"] == render_enhanced_task(TASK, ["Failure type: misdirected"])


def test_eval_counts_a_tasks_attempts_as_one_task_and_reports_both_accuracies(
    appliance_home: Path, tmp_path: Path
) -> None:
    replays = tmp_path / "replays"
    replays.mkdir()
    no_box = ["Maybe.", "No idea.", "No idea.", "No idea."]
    scripts: dict[str, list[str | dict[str, Any]]] = {
        "a": ["\\boxed{2}", "\\boxed{2}"],  # right on attempt 1
        "b": [*no_box, failure("Failure type: format_missed"), "\\boxed{4}", "\\boxed{4}"],  # right on attempt 2
    }
    rows = [
        json.dumps({"task_id": "a", "Question": "1 + 1?", "Final answer": "2"}),
        json.dumps({"task_id": "b", "Question": "2 + 2?", "Final answer": "4"}),
    ]
    for name, turns in scripts.items():
        write_script(replays / f"{name}.jsonl", turns)
    dataset = tmp_path / "mini.jsonl"
    dataset.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["eval", str(dataset), "--backend", "replay", "--replay", str(replays), "--attempts", "1"]
    result = run_cli(args, env={"APPLIANCE_TOOLS_ENABLED": ""})
    assert result.returncode == 0, result.stderr
    results = {r.task_id: r for r in load_results(appliance_home / "evals" / "mini")}
    assert sorted(results) == ["a", "b"]  # two tasks, three runs in the history
    assert (results["a"].attempts, results["b"].attempts) == (1, 2)
    assert results["a"].correct and results["b"].correct
    report = (appliance_home / "evals" / "mini" / "report.md").read_text(encoding="utf-8")
    assert "| avg@1 | 100.0% |" in report
    assert "| runs that needed more than one attempt | 1 of 2 |" in report
    assert "| avg@1 with only the first attempt | 50.0% |" in report


def test_first_attempt_only_counts_a_retried_task_as_not_answered() -> None:
    base = RunResult("t", 1, "r", "1", "x", "x", "answered", True, None, True, 1, 0, 1, 1, 1.0)
    again = RunResult("u", 1, "s", "1", "y", "y", "answered", True, None, True, 1, 0, 1, 1, 1.0, attempts=3)
    assert (scores([base, again]).avg_at_k, scores(first_attempt_only([base, again])).avg_at_k) == (100.0, 50.0)


@pytest.mark.asyncio
async def test_the_tui_shows_each_attempt_its_failure_summary_and_which_attempt_answered(tmp_path: Path) -> None:
    from appliance.tui.app import ApplianceApp
    from appliance.tui.transcript import Transcript
    from appliance.tui.widgets import AnswerPanel, NoteView, TurnView
    from tests.tui_support import wait_for as wait_until

    no_box = ["Maybe.", "No idea.", "No idea.", "No idea."]
    turns: list[str | dict[str, Any]] = [
        *no_box,
        failure("Failure type: format_missed \x1b[31mred"),
        "\\boxed{2}",
        "\\boxed{2}",
    ]
    script = write_script(tmp_path / "script.jsonl", turns)
    options = {"backend": "replay", "replay": script, "db": tmp_path / "history.db", "attempts": 1, "tools_enabled": ""}
    app = ApplianceApp(options)
    async with app.run_test(size=(100, 60)) as pilot:
        await pilot.click("#task")
        await pilot.press(*"Mars moons?")
        await pilot.press("ctrl+s")
        await wait_until(lambda: app.main.phase == "done", what="the task to finish")
        await pilot.pause()
        transcript = app.main.query_one(Transcript)
        notes = [str(n.render()) for n in transcript.query(NoteView)]
        summary = next(n for n in notes if n.startswith("Failure summary of attempt 1:"))
        assert "format_missed" in summary and "\x1b" not in summary
        assert "Attempt 2/2: starting again with 1 failure summary." in notes
        assert "The final answer comes from attempt 2." in notes
        # Attempt 2's section comes after attempt 1's summary, and its turns start at 1 again.
        assert notes.index(summary) < notes.index("Attempt 2/2: starting again with 1 failure summary.")
        assert [t.turn for t in transcript.query(TurnView) if t.kind == "turn"][-1] == 1
        panels = list(transcript.query(AnswerPanel))
        assert len(panels) == 1 and panels[0].answer == "2"


@pytest.mark.asyncio
async def test_the_tui_replaying_an_old_attempt_shows_only_that_attempt(tmp_path: Path) -> None:
    from appliance.tui.app import ApplianceApp
    from appliance.tui.transcript import Transcript
    from appliance.tui.widgets import AnswerPanel, NoteView, TurnView
    from tests.tui_support import wait_for as wait_until

    turns: list[str | dict[str, Any]] = [
        "Maybe.", "No idea.", "No idea.", "No idea.", failure("Failure type: format_missed"),
        "Two, I think.", "\\boxed{2}",
    ]  # fmt: skip
    _, _, rows, _ = run_task(tmp_path, turns, **{"agent.attempts": 1})
    first, second = (r["run_id"] for r in rows)
    app = ApplianceApp({"db": tmp_path / "history.db", "backend": "replay", "tools_enabled": ""})
    async with app.run_test(size=(100, 60)) as pilot:
        shown: dict[str, tuple[list[str], list[str], list[str | None]]] = {}
        for run_id in (first, second):
            await app.main.open_run(run_id)
            await wait_until(lambda: app.main.phase == "done", what="the replay to finish")
            await pilot.pause()
            transcript = app.main.query_one(Transcript)
            shown[run_id] = (
                [str(n.render()) for n in transcript.query(NoteView)],
                [t.said.strip() for t in transcript.query(TurnView) if t.kind == "turn"],
                [p.answer for p in transcript.query(AnswerPanel)],
            )
    notes, replies, answers = shown[first]
    assert any(n.startswith("Failure summary of attempt 1:") for n in notes)
    assert not any(n.startswith("Attempt 2") for n in notes) and answers == [None]
    assert replies == ["Maybe."]
    notes, replies, answers = shown[second]
    assert "Attempt 2/2: starting again with 1 failure summary." in notes
    assert "The final answer comes from attempt 2." in notes
    assert not any(n.startswith("Failure summary") for n in notes)
    assert replies == ["Two, I think."] and answers == ["2"]
