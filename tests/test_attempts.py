"""Attempts above a single run: the reference's strings (golden), its decision table, failure summaries.

tests/golden/attempts/ was rendered by the reference's own prompt_utils.py and
parsing_utils.py (MiroMindAI/MiroThinker 370f983; see tests/golden/README.md).
The scenarios drive attempts the way the run session will: one Agent run per
attempt over one backend (an unanswered run writes its failure summary before
RunFinished), then TaskAttempts.finish with what RunFinished says.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from appliance.agent.attempts import (
    AnswerPlan,
    TaskAttempts,
    answer_plan,
    failure_summary_messages,
    ran_out_of_room,
    run_failure_summary,
)
from appliance.agent.events import AgentEvent, Notice, RunFinished, SummaryStarted, TurnEnded, TurnRolledBack
from appliance.agent.loop import Agent
from appliance.agent.state import new_state
from appliance.config import AgentSettings
from appliance.errors import ConfigError
from appliance.llm.base import ChatMessage
from appliance.llm.replay import ReplayTurn
from appliance.protocol.failure import (
    FAILURE_SUMMARY_ASSISTANT_PREFIX,
    FAILURE_SUMMARY_PROMPT,
    FORMAT_ERROR_MESSAGE,
    extract_failure_summary,
    render_enhanced_task,
)
from appliance.protocol.prompt import render_system_prompt, render_task_message
from appliance.tools.base import CallContext, ToolBox
from tests.conftest import tool_call
from tests.scripted import RecordingReplay, ScriptedSearch

GOLDEN = Path(__file__).parent / "golden" / "attempts"
TASK = "How many moons does Mars have? Answer with a number."
SUMMARIES = [
    "Failure type: incomplete\nWhat happened: searched NASA pages, ran out of turns.\n"
    "Useful findings: Phobos is one moon.",
    "Failure type: format_missed\nWhat happened: found the answer (2) but did not box it.\n"
    "Useful findings: Phobos and Deimos.",
]


def golden(name: str) -> str:
    return (GOLDEN / name).read_text(encoding="utf-8")


# ---------------------------------------------------------------- the reference's strings


def test_failure_summary_prompt_and_prefix_are_the_references() -> None:
    assert golden("failure_summary_prompt.txt") == FAILURE_SUMMARY_PROMPT
    assert golden("failure_summary_prefix.txt") == FAILURE_SUMMARY_ASSISTANT_PREFIX
    assert golden("format_error_message.txt") == FORMAT_ERROR_MESSAGE


@pytest.mark.parametrize("count", [1, 2])
def test_enhanced_task_and_its_message_are_the_references(count: int) -> None:
    enhanced = render_enhanced_task(TASK, SUMMARIES[:count])
    assert enhanced == golden(f"enhanced_task_{count}.txt")
    # The task message of the next attempt: the enhanced task through the usual task rendering.
    assert render_task_message(enhanced) == golden(f"enhanced_task_message_{count}.txt")


def test_no_summaries_leave_the_task_unchanged() -> None:
    assert render_enhanced_task(TASK, []) == TASK


def test_failure_summary_extraction_agrees_with_the_reference() -> None:
    cases = json.loads(golden("failure_summary_extraction.json"))
    assert len(cases) >= 8
    for case in cases:
        assert extract_failure_summary(case["text"]) == case["summary"], case["text"][:80]


# ---------------------------------------------------------------- the decision table


@pytest.mark.parametrize(
    ("attempts", "final", "out_of_room", "expected"),
    [
        (0, True, False, (True, True, False)),
        (0, True, True, (True, True, False)),
        (5, True, False, (True, True, False)),
        (5, True, True, (True, True, False)),
        (5, False, False, (True, False, True)),
        (5, False, True, (False, False, True)),
    ],
)
def test_answer_plan_is_the_references_table(
    attempts: int, final: bool, out_of_room: bool, expected: tuple[bool, bool, bool]
) -> None:
    plan = answer_plan(attempts=attempts, retry_with_summary=True, final_attempt=final, out_of_room=out_of_room)
    assert (plan.generate_answer, plan.fallback_to_intermediate, plan.failure_summary_when_unboxed) == expected


def test_retry_without_summary_never_writes_one() -> None:
    for out_of_room in (False, True):
        plan = answer_plan(attempts=5, retry_with_summary=False, final_attempt=False, out_of_room=out_of_room)
        assert not plan.failure_summary_when_unboxed and not plan.fallback_to_intermediate


def test_which_endings_count_as_out_of_room() -> None:
    assert ran_out_of_room("max_turns") and ran_out_of_room("context_full")
    assert not any(ran_out_of_room(r) for r in ("no_tool_call", "rollbacks", "resumed", None))


def test_task_attempts_bookkeeping() -> None:
    attempts = TaskAttempts(TASK, attempts=2)
    assert (attempts.total, attempts.number, attempts.is_final) == (3, 1, False)
    assert attempts.progress_line() == "attempt 1/3"
    assert attempts.finish(None, SUMMARIES[0]) is True
    assert attempts.progress_line() == "attempt 2/3: starting again with 1 failure summary"
    assert attempts.task_text() == golden("enhanced_task_1.txt")
    # A missing or blank summary: the next attempt starts without it.
    assert attempts.finish(None, "  \n") is True
    assert attempts.is_final and attempts.failure_summaries == [SUMMARIES[0]]
    assert attempts.progress_line() == "attempt 3/3: starting again with 1 failure summary"
    assert attempts.finish(None, "ignored: no attempt follows") is False
    assert attempts.answer is None and [r.number for r in attempts.results] == [1, 2, 3]
    assert attempts.failure_summaries == [SUMMARIES[0]]


def test_an_answer_ends_the_attempts() -> None:
    attempts = TaskAttempts(TASK, attempts=5)
    assert attempts.finish("2") is False
    assert attempts.answer == "2" and attempts.number == 1


def test_attempts_off_is_one_run() -> None:
    attempts = TaskAttempts(TASK, attempts=0)
    assert attempts.is_final and attempts.plan(out_of_room=True) == AnswerPlan.single_run()
    assert attempts.finish(None) is False


def test_failure_summary_messages_drop_a_trailing_user_message() -> None:
    conversation = [ChatMessage("system", "s"), ChatMessage("user", "task"), ChatMessage("assistant", "a"),
                    ChatMessage("user", "tool result")]  # fmt: skip
    messages = failure_summary_messages(conversation)
    assert [m.content for m in messages] == ["s", "task", "a", FAILURE_SUMMARY_PROMPT]


# ---------------------------------------------------------------- scenarios on the replay backend

SEARCH = "search_and_scrape_webpage"


def search(q: str) -> str:
    return tool_call(SEARCH, "google_search", {"q": q})


def failure(text: str) -> dict[str, Any]:
    """A scripted failure-summary reply: it must continue the reference's assistant prefix."""
    return {"content": text, "prefix": FAILURE_SUMMARY_ASSISTANT_PREFIX}


def drive(
    turns: list[str | dict[str, Any]], tmp_path: Path, *, attempts: int = 2, retry_with_summary: bool = True,
    context_length: int = 262_144, max_tokens: int = 4096, **agent: Any,
) -> tuple[TaskAttempts, list[AgentEvent], RecordingReplay]:  # fmt: skip
    """Run a task's attempts as the session does, over one scripted backend: one run per attempt."""
    script = [ReplayTurn(t) if isinstance(t, str) else ReplayTurn(t["content"], prefix=t["prefix"]) for t in turns]
    backend = RecordingReplay(script, context_length=context_length)
    results = {f"q{i}": [{"title": f"t{i}", "link": f"https://example.org/{i}"}] for i in range(40)}
    toolbox = ToolBox([ScriptedSearch(results)])
    settings = AgentSettings(attempts=attempts, retry_with_summary=retry_with_summary, **agent)
    task = TaskAttempts(TASK, attempts=settings.attempts, retry_with_summary=settings.retry_with_summary)
    system = render_system_prompt(dt.date(2025, 1, 1), toolbox.server_specs())
    events: list[AgentEvent] = []
    while True:
        ctx = CallContext(f"run-{task.number}", tmp_path, tmp_path / "ws", tmp_path / "out", timeout=30)
        run = Agent(backend, toolbox, settings, ctx, max_tokens=max_tokens)
        text = task.task_text()
        state = new_state(f"run-{task.number}", text, render_task_message(text), system)
        state.attempt, state.attempts_total = task.number, task.total
        events.extend(run.run(state))
        done = events[-1]
        assert isinstance(done, RunFinished)
        if not task.finish(done.answer, done.failure_summary):
            return task, events, backend


def collect(generator: Generator[AgentEvent, None, str | None]) -> tuple[list[AgentEvent], str | None]:
    events: list[AgentEvent] = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return events, stop.value


def finishes(events: list[AgentEvent]) -> list[RunFinished]:
    return [e for e in events if isinstance(e, RunFinished)]


def test_turns_run_out_then_boxed_on_attempt_two(tmp_path: Path) -> None:
    turns: list[str | dict[str, Any]] = [
        search("q1"), search("q2"),  # attempt 1 spends its two turns: no answer turn, a failure summary
        failure("Failure type: incomplete\nWhat happened: two searches.\nUseful findings: t1, t2."),
        search("q3"), "Mars has \\boxed{2} moons.", "\\boxed{2}",  # attempt 2 answers
    ]  # fmt: skip
    task, events, backend = drive(turns, tmp_path, max_turns=2)
    assert task.answer == "2" and [r.answer for r in task.results] == [None, "2"]
    first, second = finishes(events)
    assert (first.status, first.answer, first.turns) == ("no_answer", None, 2)
    # Out of turns on a non-final attempt: no summary turn at all (a guess would cost accuracy).
    assert [e.reason for e in events if isinstance(e, SummaryStarted)] == ["no_tool_call"]
    # The failure summary continued the prefix after the prompt, the last tool result dropped.
    failure_prompt = backend.prompts[2]
    assert failure_prompt[-2:] == [
        ChatMessage("user", FAILURE_SUMMARY_PROMPT),
        ChatMessage("assistant", FAILURE_SUMMARY_ASSISTANT_PREFIX),
    ]
    assert failure_prompt[-3].role == "assistant" and "q2" in failure_prompt[-3].content
    ended = [e for e in events if isinstance(e, TurnEnded) and e.kind == "failure_summary"]
    assert len(ended) == 1 and ended[0].content.startswith(FAILURE_SUMMARY_ASSISTANT_PREFIX)
    # Attempt 2's task is the reference's enhanced task, in the task message and the summary prompt.
    expected = render_enhanced_task(
        TASK, ["Failure type: incomplete\nWhat happened: two searches.\nUseful findings: t1, t2."]
    )
    assert backend.prompts[3][1].content == render_task_message(expected)
    assert second.status == "answered"


def test_context_full_counts_as_out_of_turns(tmp_path: Path) -> None:
    big = {f"q{i}": [{"title": "x" * 3000, "link": f"https://example.org/{i}"}] for i in range(3)}
    turns: list[str | dict[str, Any]] = [search("q0"), search("q1"), failure("Failure type: blocked"),
                                         search("q2"), "\\boxed{2}", "\\boxed{2}"]  # fmt: skip
    backend = RecordingReplay([ReplayTurn(t) if isinstance(t, str) else ReplayTurn(t["content"], prefix=t["prefix"])
                               for t in turns], context_length=4200)  # fmt: skip
    toolbox = ToolBox([ScriptedSearch(big)])
    settings = AgentSettings(attempts=1)
    ctx = CallContext("run-1", tmp_path, tmp_path / "ws", tmp_path / "out", timeout=30)
    run = Agent(backend, toolbox, settings, ctx, max_tokens=600)
    system = render_system_prompt(dt.date(2025, 1, 1), toolbox.server_specs())
    state = new_state("run-1", TASK, render_task_message(TASK), system)
    state.attempts_total = 2
    events = list(run.run(state))
    assert state.summary_reason == "context_full"
    assert not any(isinstance(e, SummaryStarted) for e in events)
    assert finishes(events)[0].answer is None
    assert run.answer_plan(state).failure_summary_when_unboxed


def test_no_box_after_the_summary_writes_a_failure_summary_and_no_fallback(tmp_path: Path) -> None:
    turns: list[str | dict[str, Any]] = [
        "I think it is \\boxed{3}.",  # no tool call: the loop ends; an intermediate box
        "The answer is three.", "Still three.", "Three.",  # three summary tries, none boxed
        failure("Failure type: format_missed\nWhat happened: forgot the box."),
        "\\boxed{2} it is", "\\boxed{2}",
    ]  # fmt: skip
    task, events, _ = drive(turns, tmp_path, attempts=1)
    first, second = finishes(events)
    # Not the final attempt: the earlier \boxed{3} is not used to paper over the failure.
    assert first.answer is None
    assert [e.reason for e in events if isinstance(e, TurnRolledBack)] == ["no_boxed", "no_boxed"]
    assert task.failure_summaries == ["Failure type: format_missed\nWhat happened: forgot the box."]
    assert second.answer == "2"


def test_every_attempt_fails_and_only_the_final_one_falls_back(tmp_path: Path) -> None:
    no_box = ["Maybe \\boxed{3}.", "No idea.", "No idea.", "No idea."]
    turns: list[str | dict[str, Any]] = [
        *no_box, failure("Failure type: misdirected"),
        *no_box, failure("Failure type: blocked"),
        *no_box,  # the final attempt: the summary has no box, the intermediate \boxed{3} is used
    ]  # fmt: skip
    task, events, backend = drive(turns, tmp_path, attempts=2)
    assert [f.answer for f in finishes(events)] == [None, None, "3"]
    assert task.failure_summaries == ["Failure type: misdirected", "Failure type: blocked"]
    assert any(isinstance(e, Notice) and "last answer the model boxed" in e.message for e in events)
    assert backend.position == len(turns)


def test_retry_with_summary_off_restarts_the_task_unchanged(tmp_path: Path) -> None:
    turns: list[str | dict[str, Any]] = [search("q1"), search("q2"), search("q3"), "\\boxed{2}", "\\boxed{2}"]
    task, events, backend = drive(turns, tmp_path, attempts=1, retry_with_summary=False, max_turns=2)
    assert task.answer == "2" and task.failure_summaries == []
    assert backend.prompts[2][1].content == render_task_message(TASK)
    assert not any(isinstance(e, TurnEnded) and e.kind == "failure_summary" for e in events)


def test_a_missing_failure_summary_starts_the_next_attempt_without_it(tmp_path: Path) -> None:
    # An empty reply: no summary; the replay's next line is attempt 2's first turn.
    turns: list[str | dict[str, Any]] = [search("q1"), failure(""), "\\boxed{2}", "\\boxed{2}"]
    task, events, backend = drive(turns, tmp_path, attempts=1, max_turns=1)
    assert task.answer == "2" and task.failure_summaries == []
    assert backend.prompts[2][1].content == render_task_message(TASK)
    assert any(isinstance(e, Notice) and "failure summary is empty" in e.message for e in events)


def test_a_failed_failure_summary_call_gives_no_summary(tmp_path: Path) -> None:
    # The scripted line expects another prefix: the call fails with a clear error; no summary, no crash.
    backend = RecordingReplay([ReplayTurn("x", prefix="<think>other")])
    conversation = [ChatMessage("system", "s"), ChatMessage("user", "t")]
    events, summary = collect(run_failure_summary(backend, conversation, turn=1, max_tokens=100))
    assert summary is None
    assert any(isinstance(e, Notice) and "expects to continue" in e.message for e in events)


def test_a_replay_line_with_a_prefix_refuses_a_fresh_reply(tmp_path: Path) -> None:
    backend = RecordingReplay([ReplayTurn("x", prefix="<think>")])
    with pytest.raises(ConfigError, match="expects to continue"):
        list(backend.stream_chat([ChatMessage("user", "hi")], max_tokens=10))


def test_prepare_run_starts_the_current_attempt(tmp_path: Path, appliance_home: Path) -> None:
    from appliance.agent.runtime import build_toolbox, prepare_run
    from appliance.config import load_settings

    settings = load_settings(overrides={"model.backend": "replay", "tools.enabled": []})
    backend = RecordingReplay(["\\boxed{2}"])
    toolbox = build_toolbox(settings, lambda: backend)
    attempts = TaskAttempts(TASK, attempts=settings.agent.attempts)
    assert attempts.finish(None, SUMMARIES[0])
    agent, state = prepare_run(settings, TASK, backend=backend, toolbox=toolbox, attempts=attempts)
    assert state.task_message == golden("enhanced_task_message_1.txt")
    assert state.task == golden("enhanced_task_1.txt")  # the summary prompt repeats it, as the reference's does
    assert (state.attempt, state.attempts_total) == (2, 6)
    assert agent.answer_plan(state) == AnswerPlan(True, False, True)
    toolbox.close()


def test_the_history_keeps_the_failure_summary_with_its_run(
    tmp_path: Path, appliance_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from appliance.agent import runtime
    from appliance.llm.factory import build_backend
    from appliance.store import open_history
    from tests.store_support import call, settings_for, write_script

    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")
    written = "Failure type: incomplete\nWhat happened: one echo.\nUseful findings: none."
    lines = [call("echo", text="one"), {"content": written, "prefix": FAILURE_SUMMARY_ASSISTANT_PREFIX}]
    script = write_script(tmp_path / "s.jsonl", lines)
    settings = settings_for(script, **{"agent.max_turns": 1})
    backend = build_backend(settings)
    toolbox = runtime.build_toolbox(settings, lambda: backend)
    attempts = TaskAttempts(TASK, attempts=settings.agent.attempts)
    agent, state = runtime.prepare_run(settings, TASK, backend=backend, toolbox=toolbox, run_id="a1", attempts=attempts)
    with open_history(appliance_home / "history.db") as history:
        recorder = history.recorder()
        events = []
        for event in agent.run(state):
            recorder(event)
            events.append(event)
    toolbox.close()
    done = events[-1]
    assert isinstance(done, RunFinished) and (done.status, done.answer) == ("no_answer", None)
    assert done.failure_summary == written
    assert attempts.finish(done.answer, done.failure_summary) and attempts.failure_summaries == [written]
    db = sqlite3.connect(appliance_home / "history.db")
    rows = db.execute("SELECT kind, state, content FROM messages WHERE run_id = 'a1' ORDER BY seq").fetchall()
    assert rows[-1] == ("failure_summary", "kept", FAILURE_SUMMARY_ASSISTANT_PREFIX + written)
    # One function derives the summary from what was stored.
    assert extract_failure_summary(rows[-1][2]) == written
