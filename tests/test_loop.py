"""The ReAct loop driven by scripted model turns (replay backend)."""

from __future__ import annotations

import threading
from pathlib import Path

from appliance.agent.calls import reply_limit
from appliance.agent.context import OMITTED, build_view
from appliance.agent.events import (
    ObservationAdded,
    ReplyContinued,
    RunFinished,
    RunStarted,
    SummaryStarted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    ToolResultOmitted,
    TurnEnded,
    TurnRolledBack,
    TurnStarted,
)
from appliance.llm.base import ChatMessage
from appliance.tools.base import TRUNCATION_MARK
from tests.conftest import tool_call
from tests.scripted import ScriptedPython, ScriptedSearch, make_agent, run_all

SEARCH = "search_and_scrape_webpage"
ANSWER = "<think>\nDone.\n</think>\n\nMars has two moons: Phobos and Deimos."
SUMMARY = "Based on the search results, the answer is \\boxed{2}"


def search(q: str) -> str:
    return tool_call(SEARCH, "google_search", {"q": q})


def command(cmd: str) -> str:
    return tool_call("tool-python", "run_command", {"command": cmd, "sandbox_id": "sbx-test"})


def of_type(events: list[object], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


def finished(events: list[object]) -> RunFinished:
    last = events[-1]
    assert isinstance(last, RunFinished)
    return last


def test_multi_turn_run_with_tool_calls(tmp_path: Path) -> None:
    results = {"mars moons": [{"title": "Moons of Mars", "link": "https://example.org/mars", "snippet": "two moons"}]}
    search_server = ScriptedSearch(results)
    agent, state, backend = make_agent(
        [tool_call("tool-python", "create_sandbox", {}), search("mars moons"), ANSWER, SUMMARY],
        [ScriptedPython(), search_server],
        tmp_path,
    )
    events = run_all(agent, state)
    done = finished(events)
    assert (done.status, done.answer, done.turns, done.tool_calls, done.exit_code) == ("answered", "2", 3, 2, 0)
    assert isinstance(events[0], RunStarted)
    assert [type(e).__name__ for e in events[1:5]][:2] == ["TurnStarted", "TextDelta"]
    assert search_server.calls == [{"q": "mars moons"}]
    # Each tool turn: the reply kept, then started, finished, observation, in that order.
    names = [type(e).__name__ for e in events if not isinstance(e, (TextDelta, TurnStarted))]
    assert names == [
        "RunStarted",
        "TurnEnded", "TurnKept", "ToolCallStarted", "ToolCallFinished", "ObservationAdded",
        "TurnEnded", "TurnKept", "ToolCallStarted", "ToolCallFinished", "ObservationAdded",
        "TurnEnded", "TurnKept", "SummaryStarted", "TurnEnded", "RunFinished",
    ]  # fmt: skip
    streamed = "".join(e.text for e in of_type(events, TextDelta) if e.turn == 2)
    assert streamed == search("mars moons")
    # The model saw the system prompt, the task, its own turns and the results.
    final_prompt = backend.prompts[-1]
    assert final_prompt[0].role == "system" and "Today is: 2025-01-01" in final_prompt[0].content
    assert "Sandbox created with sandbox_id: sbx-test" in final_prompt[3].content
    assert '"link": "https://example.org/mars"' in final_prompt[5].content
    assert final_prompt[-1].content.startswith("Summarize the above conversation")
    assert backend.purposes == ["turn", "turn", "turn", "summary"]


def test_only_the_last_k_results_stay_in_context(tmp_path: Path) -> None:
    turns = [command(f"echo {i}") for i in range(1, 6)] + [ANSWER, SUMMARY]
    agent, state, backend = make_agent(turns, [ScriptedPython()], tmp_path, keep_last=2)
    events = run_all(agent, state)
    assert finished(events).status == "answered"
    # Prompt of turn 6: task, (assistant, result) x 5; results 1-3 replaced, 4-5 kept.
    prompt = backend.prompts[5]
    results = [m.content for m in prompt[1:] if m.role == "user"][1:]
    assert results == [OMITTED, OMITTED, OMITTED, "ran: echo 4", "ran: echo 5"]
    assistants = [m.content for m in prompt if m.role == "assistant"]
    assert assistants == turns[:5]  # every assistant turn is kept, thinking included
    assert prompt[1].content == state.task_message  # the task is never omitted
    # The summary prompt takes one of the K places, as in the reference.
    summary_prompt = backend.prompts[-1]
    tail = [m.content for m in summary_prompt if m.role == "user"][-2:]
    assert tail[0] == OMITTED or tail[0] == "ran: echo 5"
    omitted = [e.turn for e in of_type(events, ToolResultOmitted)]
    assert omitted == [1, 2, 3]


def test_keep_last_0_hides_every_result_but_never_the_summary_prompt(tmp_path: Path) -> None:
    turns = [command("echo 1"), command("echo 2"), ANSWER, SUMMARY]
    agent, state, backend = make_agent(turns, [ScriptedPython()], tmp_path, keep_last=0)
    events = run_all(agent, state)
    assert finished(events).answer == "2"
    (summary,) = of_type(events, SummaryStarted)
    last_prompt = backend.prompts[-1]
    assert last_prompt[-1] == ChatMessage("user", summary.prompt)  # the model is asked for its answer
    results = [m.content for m in last_prompt if m.role == "user"][1:-1]
    assert results == [OMITTED, OMITTED]


def test_view_matches_the_reference_rule_for_every_k() -> None:
    messages = [ChatMessage("user", "task")]
    for i in range(6):
        messages += [ChatMessage("assistant", f"a{i}"), ChatMessage("user", f"r{i}")]
    for k in (-1, 0, 1, 3, 6, 10):
        view = build_view(messages, k)
        results = [m.content for m in view if m.role == "user"][1:]
        kept = 6 if k == -1 else min(k, 6)
        assert results == [OMITTED] * (6 - kept) + [f"r{i}" for i in range(6 - kept, 6)], k
        assert view[0].content == "task"


def test_blocks_eviction_keeps_between_k_and_2k_minus_1(tmp_path: Path) -> None:
    messages = [ChatMessage("user", "task")]
    previous_prefix: list[str] | None = None
    changes = 0
    for i in range(20):
        messages += [ChatMessage("assistant", f"a{i}"), ChatMessage("user", f"r{i}")]
        results = [m.content for m in build_view(messages, 5, "blocks", 5) if m.role == "user"][1:]
        kept = sum(1 for r in results if r != OMITTED)
        assert kept == len(results) if len(results) < 5 else 5 <= kept <= 9
        prefix = [m.content for m in build_view(messages, 5, "blocks", 5)][: 2 * (i + 1)]
        if previous_prefix is not None and prefix[: len(previous_prefix)] != previous_prefix:
            changes += 1
        previous_prefix = prefix
    assert changes == 3  # the prefix changes once per block of 5, not on every turn


def test_long_results_are_truncated_with_the_reference_mark(tmp_path: Path) -> None:
    python = ScriptedPython(lambda command: "x" * 150_000)
    agent, state, backend = make_agent([command("flood"), ANSWER, SUMMARY], [python], tmp_path, result_max_chars=1000)
    events = run_all(agent, state)
    (done_call,) = of_type(events, ToolCallFinished)
    assert done_call.truncated and done_call.raw_chars == 150_000
    assert done_call.result == "x" * 1000 + TRUNCATION_MARK
    assert backend.prompts[1][-1].content.endswith("... [Result truncated]")


def test_malformed_call_is_sampled_again(tmp_path: Path) -> None:
    unclosed = "<think>search</think>\n<use_mcp_tool>\n<server_name>search_and_scrape_webpage</server_name>\n"
    bad_args = tool_call(SEARCH, "google_search", {}).replace("{}", "this is not json")
    turns = [unclosed, bad_args, search("mars moons"), ANSWER, SUMMARY]
    results = {"mars moons": [{"title": "t", "link": "https://e.org"}]}
    agent, state, backend = make_agent(turns, [ScriptedSearch(results)], tmp_path)
    events = run_all(agent, state)
    rolled = of_type(events, TurnRolledBack)
    assert [(r.turn, r.reason) for r in rolled] == [(1, "format"), (1, "bad_arguments")]
    assert finished(events).turns == 2
    # The discarded replies never reach the model's context.
    assert all(unclosed not in m.content and bad_args not in m.content for m in backend.prompts[-1])
    # A retry does not count as a turn: TurnStarted reports attempts 1, 2, 3 for turn 1.
    starts = [(e.turn, e.attempt) for e in of_type(events, TurnStarted) if e.kind == "turn"]
    assert starts[:3] == [(1, 1), (1, 2), (1, 3)]


def test_malformed_call_after_the_rollback_cap_gets_an_error_result(tmp_path: Path) -> None:
    bad_args = tool_call(SEARCH, "google_search", {}).replace("{}", "still not json")
    agent, state, _backend = make_agent([bad_args] * 5 + [ANSWER, SUMMARY], [ScriptedSearch()], tmp_path)
    events = run_all(agent, state)
    assert len(of_type(events, TurnRolledBack)) == 4  # the 5th attempt stands
    (call,) = of_type(events, ToolCallFinished)
    assert call.status == "bad_arguments"
    assert "arguments are invalid" in call.result and "still not json" in call.result
    assert finished(events).status == "answered"


def test_a_repeated_query_is_refused(tmp_path: Path) -> None:
    results = {"mars moons": [{"title": "t", "link": "https://e.org"}]}
    search_server = ScriptedSearch(results)
    turns = [search("mars moons")] + [search("mars moons")] * 5 + [ANSWER, SUMMARY]
    agent, state, _ = make_agent(turns, [search_server], tmp_path)
    events = run_all(agent, state)
    duplicates = [r for r in of_type(events, TurnRolledBack) if r.reason == "duplicate"]
    assert len(duplicates) == 4
    calls = of_type(events, ToolCallFinished)
    assert [c.status for c in calls] == ["ok", "duplicate"]
    assert "already made earlier in this run" in calls[1].result
    assert len(search_server.calls) == 1  # the tool never ran twice for the same query


def test_empty_search_and_unknown_tool_are_sampled_again(tmp_path: Path) -> None:
    turns = [
        search("nothing matches"),
        tool_call(SEARCH, "bing_search", {"q": "x"}),
        search("mars moons"),
        ANSWER,
        SUMMARY,
    ]
    search_server = ScriptedSearch({"mars moons": [{"title": "t", "link": "https://e.org"}]})
    agent, state, backend = make_agent(turns, [search_server], tmp_path)
    events = run_all(agent, state)
    assert [r.reason for r in of_type(events, TurnRolledBack)] == ["empty_search", "tool_error"]
    assert finished(events).turns == 2
    history = [m.content for m in backend.prompts[-1]]
    assert not any("nothing matches" in c or "bing_search" in c for c in history)


def test_unknown_server_and_crashing_tool_give_error_results(tmp_path: Path) -> None:
    turns = [
        tool_call("no-such-server", "run", {"x": 1}),
        command("crash"),
        ANSWER,
        SUMMARY,
    ]
    agent, state, _ = make_agent(turns, [ScriptedPython()], tmp_path)
    events = run_all(agent, state)
    calls = of_type(events, ToolCallFinished)
    assert calls[0].result == "Tool call to run on no-such-server failed. Error: Server 'no-such-server' not found."
    assert calls[1].status == "failed"
    assert calls[1].result.startswith("Tool call to run_command on tool-python failed. Error: Tool execution failed:")
    assert "the server broke" in calls[1].result
    assert finished(events).status == "answered"


def test_slow_tool_times_out(tmp_path: Path) -> None:
    agent, state, _ = make_agent([command("sleep 30"), ANSWER, SUMMARY], [ScriptedPython()], tmp_path, tool_timeout=0.3)
    events = run_all(agent, state)
    (call,) = of_type(events, ToolCallFinished)
    assert call.status == "timeout"
    assert "timed out after 0.3 seconds" in call.result
    assert call.duration_s < 5


def test_turn_budget_forces_the_summary(tmp_path: Path) -> None:
    turns = [command("a"), command("b"), SUMMARY]
    agent, state, backend = make_agent(turns, [ScriptedPython()], tmp_path, max_turns=2)
    events = run_all(agent, state)
    (summary,) = of_type(events, SummaryStarted)
    assert summary.reason == "max_turns"
    # As in the reference, the last tool result is dropped before the summary prompt.
    assert summary.dropped_observation_of_turn == 2
    summary_prompt = backend.prompts[-1]
    assert summary_prompt[-2].role == "assistant" and summary_prompt[-2].content == turns[1]
    assert summary_prompt[-1].content.startswith("Summarize the above conversation")
    done = finished(events)
    assert (done.status, done.answer, done.turns) == ("answered", "2", 2)


def test_answer_without_boxed_is_no_answer(tmp_path: Path) -> None:
    agent, state, backend = make_agent([ANSWER, "It is two.", "Two moons.", "I think 2."], [], tmp_path)
    events = run_all(agent, state)
    done = finished(events)
    assert (done.status, done.answer, done.exit_code) == ("no_answer", None, 1)
    assert done.final_text == "I think 2."
    assert [r.reason for r in of_type(events, TurnRolledBack)] == ["no_boxed", "no_boxed"]
    assert backend.purposes == ["turn", "summary", "summary", "summary"]


def test_a_boxed_answer_from_an_earlier_turn_is_the_fallback(tmp_path: Path) -> None:
    turns = ["<think>easy</think> The answer is \\boxed{2}.", "I am not sure.", "No idea.", "Hmm."]
    agent, state, _ = make_agent(turns, [], tmp_path)
    done = finished(run_all(agent, state))
    assert (done.status, done.answer) == ("answered", "2")


def test_context_limit_forces_the_summary(tmp_path: Path) -> None:
    python = ScriptedPython(lambda command: "word " * 3000)
    turns = [command("a"), command("b"), SUMMARY]
    agent, state, backend = make_agent(turns, [python], tmp_path, context_length=12_000, max_tokens=1000, keep_last=-1)
    events = run_all(agent, state)
    rolled = of_type(events, TurnRolledBack)
    assert [(r.turn, r.reason) for r in rolled] == [(2, "context_full")]
    (summary,) = of_type(events, SummaryStarted)
    assert summary.reason == "context_full"
    done = finished(events)
    assert done.status == "answered"
    # Every prompt the model got fitted the window with room for its reply.
    for prompt in backend.prompts:
        assert backend.count_messages(prompt) + 1000 <= 12_000
    # The dropped turn and its result are gone from the summary's context.
    assert all(turns[1] != m.content for m in backend.prompts[-1])


def test_refusal_is_sampled_again(tmp_path: Path) -> None:
    turns = ["I'm sorry, I cannot solve this.", search("mars moons"), ANSWER, SUMMARY]
    agent, state, _ = make_agent(turns, [ScriptedSearch({"mars moons": [{"title": "t", "link": "l"}]})], tmp_path)
    events = run_all(agent, state)
    assert [r.reason for r in of_type(events, TurnRolledBack)] == ["refusal"]
    assert finished(events).answer == "2"


def test_a_reply_cut_by_max_tokens_is_continued_up_to_the_references_largest_limit(tmp_path: Path) -> None:
    long_turn = "<think>" + " ".join(f"step{i}" for i in range(500)) + "</think> \\boxed{2}"
    agent, state, backend = make_agent([long_turn, SUMMARY], [], tmp_path, max_tokens=50)
    events = run_all(agent, state)
    first = of_type(events, TurnEnded)[0]
    # Continued where it stopped (not sampled again), until the reference's last limit: 50 x 1.1^9.
    assert first.finish_reason == "length"
    assert first.completion_tokens == reply_limit(50) == 117
    assert long_turn.startswith(first.content) and len(first.content) < len(long_turn)
    continued = of_type(events, ReplyContinued)
    assert [c.round for c in continued] == [1] and continued[0].generated_tokens == 50
    # The continuation request carried the reply so far as the assistant's message.
    assert backend.prompts[1][-1].role == "assistant" and long_turn.startswith(backend.prompts[1][-1].content)


def test_cancel_ends_the_run_as_interrupted(tmp_path: Path) -> None:
    agent, state, _ = make_agent([command("sleep 30"), ANSWER, SUMMARY], [ScriptedPython()], tmp_path)
    events = []
    for event in agent.run(state):
        events.append(event)
        if isinstance(event, ToolCallStarted):
            threading.Timer(0.2, agent.cancel).start()
    done = finished(events)
    assert (done.status, done.exit_code) == ("interrupted", 130)
    assert not of_type(events, ToolCallFinished)


def test_resumed_state_runs_the_pending_calls_of_its_last_reply(tmp_path: Path) -> None:
    python = ScriptedPython()
    agent, state, backend = make_agent([ANSWER, SUMMARY], [python], tmp_path)
    state.messages.append(ChatMessage("assistant", command("echo pending")))
    state.turn = 1
    state.resumed = True
    events = run_all(agent, state)
    assert python.calls == [("run_command", {"command": "echo pending", "sandbox_id": "sbx-test"})]
    (observation,) = of_type(events, ObservationAdded)
    assert observation.turn == 1 and observation.content == "ran: echo pending"
    assert backend.prompts[0][-1].content == "ran: echo pending"  # no new sample before the results
    assert finished(events).turns == 2


def test_replay_that_ends_early_is_a_clear_error(tmp_path: Path) -> None:
    agent, state, _ = make_agent([command("a")], [ScriptedPython()], tmp_path)
    done = finished(run_all(agent, state))
    assert done.status == "error" and done.exit_code == 2
    assert "ended after 1 turns" in (done.error or "") and "add more lines" in (done.error or "")


def test_blocks_default_to_2k_and_keep_k_to_k_plus_block_minus_1() -> None:
    messages = [ChatMessage("user", "task")]
    for i in range(30):
        messages += [ChatMessage("assistant", f"a{i}"), ChatMessage("user", f"r{i}")]
        kept = [m.content for m in build_view(messages, 5, "blocks") if m.role == "user"][1:]
        assert kept == [m.content for m in build_view(messages, 5, "blocks", 10) if m.role == "user"][1:]
        visible = [r for r in kept if r != OMITTED]
        n = i + 1
        assert len(visible) == (n if n < 15 else 5 + (n - 5) % 10)
        assert visible == [f"r{j}" for j in range(n - len(visible), n)]  # always the newest ones


def test_the_loop_uses_the_configured_eviction_mode(tmp_path: Path) -> None:
    turns = [command(f"echo {i}") for i in range(1, 12)] + [ANSWER, SUMMARY]
    agent, state, backend = make_agent(
        turns, [ScriptedPython()], tmp_path, keep_last=3, eviction="blocks", eviction_block=3
    )
    events = run_all(agent, state)
    assert finished(events).status == "answered"
    # With K=3 and blocks of 3, 3..5 results are visible, and the prompt of each turn
    # extends the previous one except at a block boundary.
    boundaries = 0
    for before, after in zip(backend.prompts, backend.prompts[1:11], strict=False):
        visible = [m for m in after[2:] if m.role == "user" and m.content != OMITTED]
        assert 1 <= len(visible) <= 5
        if after[: len(before)] != before:
            boundaries += 1
    assert boundaries == 2  # when the 6th and the 9th result arrive
    # After 11 results the first two blocks (turns 1-6) are out of the context.
    assert [e.turn for e in of_type(events, ToolResultOmitted)] == list(range(1, 7))


def test_a_summary_that_would_not_fit_drops_the_latest_turns_first(tmp_path: Path) -> None:
    long_reply = "<think>" + " ".join(f"thought{i}" for i in range(2500)) + "</think> I think I know."
    agent, state, backend = make_agent([long_reply, SUMMARY], [], tmp_path, context_length=9000, max_tokens=20_000)
    events = run_all(agent, state)
    rolled = of_type(events, TurnRolledBack)
    assert [(r.turn, r.reason) for r in rolled] == [(1, "context_full")]
    (summary,) = of_type(events, SummaryStarted)
    assert summary.reason == "context_full"
    done = finished(events)
    assert (done.status, done.answer, done.turns) == ("answered", "2", 0)
    assert all(long_reply != m.content for m in backend.prompts[-1])
    assert backend.count_messages(backend.prompts[-1]) + 1125 <= 9000  # room for the answer (context / 8)
