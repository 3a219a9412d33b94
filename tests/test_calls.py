"""One model call as the reference makes it: the repetition resend and the continuation of a cut reply,
on every kind of call (turns, the summary, the failure summary), and what the history records of them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from appliance.agent import runtime
from appliance.agent.attempts import run_failure_summary
from appliance.agent.calls import CALL_TRIES, call_model, reply_limit
from appliance.agent.events import AgentEvent, ReplyContinued, RunFinished, TurnEnded, TurnRolledBack
from appliance.llm.base import ChatMessage
from appliance.llm.replay import ReplayTurn
from appliance.protocol.failure import FAILURE_SUMMARY_ASSISTANT_PREFIX
from appliance.protocol.parsing import is_degenerate
from appliance.store import open_history
from tests.conftest import tool_call
from tests.scripted import RecordingReplay, ScriptedSearch, make_agent, run_all
from tests.store_support import call, run_in_process, settings_for, write_script

LOOPING = "<think>" + "I should check again. " * 20
assert is_degenerate(LOOPING)


def search(q: str) -> str:
    return tool_call("search_and_scrape_webpage", "google_search", {"q": q})


def rolled_back(events: list[AgentEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.reason) for e in events if isinstance(e, TurnRolledBack)]


def test_a_repeating_turn_is_sent_again_without_spending_a_rollback(tmp_path: Path) -> None:
    results = {"mars": [{"title": "t", "link": "l"}]}
    turns = [LOOPING, LOOPING, search("mars"), "Two moons.", "\\boxed{2}"]
    agent, state, backend = make_agent(turns, [ScriptedSearch(results)], tmp_path, max_rollbacks=1)
    events = run_all(agent, state)
    assert rolled_back(events) == [("turn", "repetition_resend")] * 2
    # With max_rollbacks=1 a loop rollback would have ended the run; resends do not count.
    done = events[-1]
    assert isinstance(done, RunFinished) and done.answer == "2" and done.turns == 2
    # Sent again: the same prompt each time.
    assert backend.prompts[0] == backend.prompts[1] == backend.prompts[2]
    # Every try is paid for.
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert done.completion_tokens == sum(e.completion_tokens for e in ended)


def test_the_tenth_try_is_accepted_and_the_loops_own_rollback_follows(tmp_path: Path) -> None:
    turns = [LOOPING] * CALL_TRIES + ["Done.", "\\boxed{2}"]
    agent, state, _ = make_agent(turns, [], tmp_path)
    events = run_all(agent, state)
    reasons = [reason for _, reason in rolled_back(events)]
    assert reasons == ["repetition_resend"] * (CALL_TRIES - 1) + ["repetition"]
    assert isinstance(events[-1], RunFinished) and events[-1].answer == "2"


def test_a_repeating_summary_is_sent_again(tmp_path: Path) -> None:
    agent, state, _ = make_agent(["Done.", LOOPING, "\\boxed{2}"], [], tmp_path)
    events = run_all(agent, state)
    assert rolled_back(events) == [("summary", "repetition_resend")]
    assert isinstance(events[-1], RunFinished) and events[-1].answer == "2"


def collect(generator: object) -> tuple[list[AgentEvent], object]:
    events: list[AgentEvent] = []
    while True:
        try:
            events.append(next(generator))  # type: ignore[call-overload]
        except StopIteration as stop:
            return events, stop.value


def test_a_repeating_failure_summary_is_sent_again() -> None:
    backend = RecordingReplay(
        [
            ReplayTurn("Failure type: " + "again and again " * 30, prefix=FAILURE_SUMMARY_ASSISTANT_PREFIX),
            ReplayTurn("Failure type: blocked", prefix=FAILURE_SUMMARY_ASSISTANT_PREFIX),
        ]
    )
    events, summary = collect(
        run_failure_summary(backend, [ChatMessage("system", "s"), ChatMessage("user", "t")], turn=3, max_tokens=500)
    )
    assert rolled_back(events) == [("failure_summary", "repetition_resend")]
    assert summary == "Failure type: blocked"


def test_a_cut_reply_is_continued_until_it_ends(tmp_path: Path) -> None:
    long_turn = search("mars") + "\n" + " ".join(f"w{i}" for i in range(60))
    backend = RecordingReplay([long_turn])
    events, reply = collect(
        call_model(
            backend, [ChatMessage("user", "t")], turn=1, kind="turn", prompt_tokens=5, max_tokens=100, purpose="turn"
        )
    )
    continued = [e for e in events if isinstance(e, ReplyContinued)]
    assert reply.text == long_turn and reply.finish_reason == "stop"  # type: ignore[attr-defined]
    # One continuation may add up to the reference's largest limit less what was generated.
    assert [(c.round, c.generated_tokens, c.max_tokens) for c in continued] == [(1, 100, 235 - 100)]
    # The continuation sends the reply so far as the assistant's message and gets the rest.
    assert [p[-1].role for p in backend.prompts] == ["user", "assistant"]
    assert long_turn.startswith(backend.prompts[1][-1].content)


def test_a_continuation_stops_when_the_context_is_full() -> None:
    long_turn = " ".join(f"w{i}" for i in range(400))
    backend = RecordingReplay([long_turn], context_length=300)
    events, reply = collect(
        call_model(
            backend, [ChatMessage("user", "t")], turn=1, kind="turn", prompt_tokens=10, max_tokens=100, purpose="turn"
        )
    )
    assert reply.finish_reason == "length"  # type: ignore[attr-defined]
    for prompt in backend.prompts:
        assert backend.count_messages(prompt) < 300
    assert len([e for e in events if isinstance(e, ReplyContinued)]) >= 1


@pytest.fixture
def tools_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")


def test_the_history_records_continuations_and_resends_with_their_reply(
    appliance_home: Path, tmp_path: Path, tools_registered: None
) -> None:
    long_echo = call("echo", " ".join(f"thought{i}" for i in range(80)), text="hello")
    script = write_script(tmp_path / "s.jsonl", [LOOPING, long_echo, "Done.", "\\boxed{hello}"])
    settings = settings_for(script, **{"model.max_tokens": 200})
    with open_history(appliance_home / "history.db") as history:
        events = run_in_process(history, settings, "Say hello", "cont")
    assert isinstance(events[-1], RunFinished) and events[-1].answer == "hello"
    db = sqlite3.connect(appliance_home / "history.db")
    rows = db.execute(
        "SELECT e.data, m.state, m.content FROM events e JOIN messages m ON m.id = e.message_id "
        "WHERE e.run_id = 'cont' AND e.type = 'ReplyContinued' ORDER BY e.seq"
    ).fetchall()
    # The looping reply was itself cut and continued before it was sent again; both are on record.
    assert [(state, content) for _, state, content in rows] == [("rolled_back", LOOPING), ("kept", long_echo)]
    assert json.loads(rows[1][0]) == {"round": 1, "generated_tokens": 200, "max_tokens": reply_limit(200) - 200}
    resent = db.execute("SELECT rollback_reason FROM messages WHERE run_id = 'cont' AND content = ?", (LOOPING,))
    assert resent.fetchall() == [("repetition_resend",)]
    # The continued reply's call ran; two turns (the echo, then "Done.").
    assert db.execute("SELECT turns, tool_calls FROM runs WHERE run_id = 'cont'").fetchone() == (2, 1)
