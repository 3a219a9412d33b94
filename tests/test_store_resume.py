"""Crash-safe resume: a run stopped after any event resumes to the same answer, every step recorded once.

The sweep runs in process (fast enough to stop after every event): a run is
abandoned after event N, which is what a killed process looks like to the
database, its owner is made a dead pid, and a resumed session (appliance.session) continues it. The
result is compared with an uninterrupted run of the same script. The
subprocess tests in test_store_crash.py do the same with real SIGKILLs.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from appliance.agent import runtime
from appliance.agent.events import (
    ObservationAdded,
    RunFinished,
    ToolCallStarted,
    TurnEnded,
    TurnKept,
    TurnRolledBack,
)
from appliance.store import History, StoreError, open_history
from tests.store_support import (
    call,
    comparable,
    finished,
    kill_points,
    resume_in_process,
    run_in_process,
    settings_for,
    simulate_dead_owner,
    write_script,
)

TASK = "What is the capital of France?"

MAIN_SCRIPT = [
    call("google_search", q="capital of france"),
    "<think>try</think><use_mcp_tool><server_name>test-tools</server_name> broken",  # format: rolled back
    call("google_search", q="capital of france"),  # duplicate: rolled back
    call("no_such_tool", x=1),  # unknown tool: the call runs, then the turn is rolled back
    call("write_file", "A draft answer: \\boxed{Lyon}", path="notes.txt", content="Paris"),
    call("read_file", path="notes.txt")
    + "\n"
    + call("scrape_and_extract_info", url="https://example.org/fr", info_to_extract="capital"),
    call("echo", text="more context"),
    "<think>I know it now.</think> It is Paris.",  # no tool call: the summary follows
    "Summary without a box.",  # no \boxed{}: sampled again
    "The capital of France is \\boxed{Paris}.",
]  # fmt: skip

# Three replies in a row fail: with max_rollbacks=3 the third one stands and ends the loop.
STREAK_SCRIPT = [
    call("google_search", q="streak"),
    "<use_mcp_tool>bad one",
    "<use_mcp_tool>bad two",
    "<use_mcp_tool>bad three",
    "Answer: \\boxed{streak}",
]

MAX_TURNS_SCRIPT = [
    call("echo", text="one"),
    call("echo", text="two"),
    "Answer: \\boxed{two}",
]

CONTEXT_SCRIPT = [
    call("echo", text="short"),
    call("repeat", text="filler ", times=600),  # fills the context: this turn is dropped before the summary
    "Answer: \\boxed{short}",
]

# Each scenario is one run (the ones that run out of room answer at once with attempts off;
# a task's attempts across runs are tested in test_session_attempts.py).
SCENARIOS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "main": (MAIN_SCRIPT, {}),
    "streak": (STREAK_SCRIPT, {"agent.max_rollbacks": 3}),
    "max_turns": (MAX_TURNS_SCRIPT, {"agent.max_turns": 2, "agent.attempts": 0}),
    "context_full": (
        CONTEXT_SCRIPT,
        {"model.context_length": 3600, "model.max_tokens": 300, "agent.attempts": 0},
    ),
}


@pytest.fixture
def tools_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")


@pytest.fixture
def history(appliance_home: Path, tools_registered: None) -> History:
    store = open_history(appliance_home / "history.db")
    yield store  # type: ignore[misc]
    store.close()


def _reference(history: History, tmp_path: Path, name: str) -> tuple[dict[str, Any], list[Any], Any]:
    script, overrides = SCENARIOS[name]
    settings = settings_for(write_script(tmp_path / f"{name}.jsonl", script), **overrides)
    events = run_in_process(history, settings, TASK, f"ref-{name}", workspace=tmp_path / f"ws-ref-{name}")
    return comparable(history, f"ref-{name}"), events, settings


def test_scenarios_cover_the_paths_they_claim(history: History, tmp_path: Path) -> None:
    reasons, answers = {}, {}
    for name in SCENARIOS:
        _, events, _ = _reference(history, tmp_path, name)
        assert finished(events).status == "answered", name
        reasons[name] = {e.reason for e in events if isinstance(e, TurnRolledBack)}
        answers[name] = finished(events).answer
    assert {"format", "duplicate", "tool_error", "no_boxed"} <= reasons["main"]
    assert reasons["streak"] == {"format"}
    assert "context_full" in reasons["context_full"]
    run = history.get_run("ref-max_turns")
    assert run.summary_reason == "max_turns" and run.turns == 2
    assert answers == {"main": "Paris", "streak": "streak", "max_turns": "two", "context_full": "short"}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_stopped_after_any_event_resumes_to_the_same_record(history: History, tmp_path: Path, name: str) -> None:
    expected, events, settings = _reference(history, tmp_path, name)
    answer = finished(events).answer
    for point in kill_points(events):
        run_id = f"{name}-{point}"
        workspace = tmp_path / f"ws-{run_id}"
        partial = run_in_process(history, settings, TASK, run_id, workspace=workspace, stop_after=point)
        assert len(partial) == point
        simulate_dead_owner(history, run_id)
        assert history.get_run(run_id).status == "interrupted"
        rest = resume_in_process(history, run_id)
        assert finished(rest).answer == answer, f"stopped after event {point} ({type(events[point - 1]).__name__})"
        assert comparable(history, run_id) == expected, (
            f"stopped after event {point} ({type(events[point - 1]).__name__})"
        )


def test_two_crashes_in_a_row(history: History, tmp_path: Path) -> None:
    expected, events, settings = _reference(history, tmp_path, "main")
    starts = [i for i, e in enumerate(events, 1) if isinstance(e, ToolCallStarted)]
    run_in_process(history, settings, TASK, "twice", workspace=tmp_path / "ws-twice", stop_after=starts[1])
    simulate_dead_owner(history, "twice")
    resume_in_process(history, "twice", stop_after=6)
    simulate_dead_owner(history, "twice")
    rest = resume_in_process(history, "twice")
    assert finished(rest).answer == "Paris"
    assert comparable(history, "twice") == expected
    assert history.get_run("twice").resumes == 2


def _live_states(history: History, settings: Any, run_id: str) -> tuple[list[Any], list[dict[str, Any]]]:
    """A run's events, and the loop's whole state (every field) right after each of them."""
    from appliance.agent.runtime import build_toolbox, prepare_run
    from appliance.llm.factory import build_backend

    backend = build_backend(settings)
    toolbox = build_toolbox(settings, lambda: backend)
    agent, state = prepare_run(settings, TASK, backend=backend, toolbox=toolbox, run_id=run_id)
    recorder = history.recorder()
    events, states = [], []
    try:
        for event in agent.run(state):
            recorder(event)
            events.append(event)
            states.append(copy.deepcopy(dataclasses.asdict(state)))
            # The history's running counters are the loop's own, after every event.
            row = history.db.conn.execute(
                "SELECT turns, tool_calls, prompt_tokens, completion_tokens FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            assert tuple(row) == (state.turn, state.tool_calls, state.prompt_tokens, state.completion_tokens)
    finally:
        toolbox.close()
        backend.close()
    return events, states


def _last_committed(events: list[Any]) -> list[int]:
    """For a kill after each event, the index of the event whose state a resume must start from.

    Not committed as a step: a reply not yet kept or rolled back (it is sampled
    again), and a turn's calls before its results are in (they run again).
    """
    committed, pending_since, calls_since = [], None, None
    for i, event in enumerate(events):
        if isinstance(event, TurnEnded):
            pending_since = i - 1
        elif isinstance(event, (TurnKept, TurnRolledBack, RunFinished)):
            pending_since = None
        if isinstance(event, ToolCallStarted) and calls_since is None:
            calls_since = i - 1
        elif isinstance(event, (ObservationAdded, TurnRolledBack)):
            calls_since = None
        held = [p for p in (pending_since, calls_since) if p is not None]
        committed.append(min(held) if held else i)
    return committed


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_rebuilt_state_is_the_live_state_after_a_kill_at_every_event(
    history: History, tmp_path: Path, name: str
) -> None:
    """The whole RunState a resume starts from equals, field for field, the loop's own after its last step."""
    script, overrides = SCENARIOS[name]
    settings = settings_for(write_script(tmp_path / "s.jsonl", script), **overrides)
    events, states = _live_states(history, settings, "live")
    starts = _last_committed(events)
    compared = set()
    for point in kill_points(events):
        run_id = f"state-{name}-{point}"
        run_in_process(history, settings, TASK, run_id, stop_after=point)
        simulate_dead_owner(history, run_id)
        rebuilt = history.load_resume(run_id).state
        # A resumed run counts as resumed, with the time the run had already taken.
        expected = {**states[starts[point - 1]], "run_id": run_id, "resumed": True}
        expected["elapsed_before"] = history.get_run(run_id).elapsed_s
        where = f"killed after event {point} ({type(events[point - 1]).__name__})"
        assert dataclasses.asdict(rebuilt) == expected, where
        compared.add(type(events[point - 1]).__name__)
    if name == "main":
        assert {"TurnEnded", "TurnKept", "ToolCallFinished", "ObservationAdded", "TurnRolledBack"} <= compared
    # Between turns nothing is held back: there the rebuilt state is the live one.
    between = [i for i, e in enumerate(events) if isinstance(e, ObservationAdded)]
    assert between and all(starts[i] == i for i in between)
    last = states[between[-1]]
    assert last["messages"] and last["turn"] >= 1 and last["tool_calls"] >= 1


def test_resume_refuses_finished_and_live_runs(history: History, tmp_path: Path) -> None:
    _reference(history, tmp_path, "max_turns")
    with pytest.raises(StoreError, match="already finished"):
        history.load_resume("ref-max_turns")
    script, overrides = SCENARIOS["main"]
    settings = settings_for(write_script(tmp_path / "m.jsonl", script), **overrides)
    run_in_process(history, settings, TASK, "alive", stop_after=5)
    # Recorded as running by this (live) process: nobody may resume it.
    assert history.get_run("alive").status == "running"
    with pytest.raises(StoreError, match="still running"):
        history.load_resume("alive")


def test_resume_keeps_budget_and_flags_override(history: History, tmp_path: Path) -> None:
    script = [call("echo", text=str(i)) for i in range(5)] + ["\\boxed{done}"]
    settings = settings_for(write_script(tmp_path / "b.jsonl", script), **{"agent.max_turns": 3, "agent.attempts": 0})
    events = run_in_process(history, settings, TASK, "budget", stop_after=12)
    assert not isinstance(events[-1], RunFinished)
    simulate_dead_owner(history, "budget")
    point = history.load_resume("budget")
    assert point.settings["agent"]["max_turns"] == 3
    rest = resume_in_process(history, "budget", overrides={"agent.max_turns": 5})
    done = finished(rest)
    assert done.turns == 5 and done.answer == "done"


def test_one_recorder_records_runs_one_after_another(history: History, tmp_path: Path) -> None:
    from appliance.agent.runtime import build_toolbox, prepare_run
    from appliance.llm.factory import build_backend

    script = write_script(tmp_path / "r.jsonl", [call("echo", text="x"), "done", "\\boxed{1}"])
    recorder = history.recorder()
    for run_id in ("first", "second"):
        settings = settings_for(script)
        backend = build_backend(settings)
        toolbox = build_toolbox(settings, lambda backend=backend: backend)  # type: ignore[misc]
        agent, state = prepare_run(settings, TASK, backend=backend, toolbox=toolbox, run_id=run_id)
        for event in agent.run(state):
            recorder(event)
        toolbox.close()
    assert comparable(history, "first") == comparable(history, "second")
    assert [s.calls[0].result for s in history.get_run("second").kept_steps if s.calls] == ["x"]


def test_ctrl_c_during_a_write_is_delivered_after_the_commit(
    history: History, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    from appliance.agent.events import Notice
    from appliance.store.recorder import Recorder

    script = write_script(tmp_path / "r.jsonl", ["\\boxed{1}", "\\boxed{1}"])
    run_in_process(history, settings_for(script, **{"tools.enabled": []}), TASK, "sig", stop_after=1)
    recorder = history.recorder()
    recorder.run_id = "sig"
    recorder._seq = 1  # continue the run's event numbering
    original = Recorder._touch

    def interrupted_touch(self: Recorder) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the transaction
        original(self)

    monkeypatch.setattr(Recorder, "_touch", interrupted_touch)
    with pytest.raises(KeyboardInterrupt):
        recorder(Notice("warning", "written despite the interrupt"))
    notes = history.get_run("sig").notices
    assert notes == (("warning", "written despite the interrupt"),)
