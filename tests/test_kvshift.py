"""The `shift` eviction mode: the exact last-K view, with evicted results spliced out of llama.cpp's KV cache."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.agent import runtime
from appliance.agent.context import OMITTED, build_view
from appliance.agent.events import AgentEvent, Notice, ObservationAdded, RunFinished, RunStarted, TurnEnded
from appliance.agent.loop import Agent
from appliance.agent.runtime import build_toolbox, prepare_run
from appliance.agent.state import new_state
from appliance.config import AgentSettings
from appliance.llm.base import ChatMessage, Completion
from appliance.llm.factory import build_backend
from appliance.llm.kvshift import Splice, apply_splice, plan_splice, plan_splices
from appliance.llm.llamacpp import LlamaCppBackend, clear_model_cache
from appliance.protocol.prompt import render_system_prompt, render_task_message
from appliance.protocol.tooldefs import ToolSpec
from appliance.store import History, open_history
from appliance.tools.base import CallContext, ToolBox, ToolOutput, ToolServer
from tests.store_support import resume_in_process, settings_for, simulate_dead_owner

END = 0  # the boundary token in the pure tests


def is_end(token: int) -> bool:
    return token == END


# ------------------------------------------------------------------ planning (pure)


def test_a_shrunk_span_is_spliced_and_the_tokens_after_it_kept() -> None:
    cached = [1, 2, 3, 10, 11, 12, 13, 14, END, 5, 6, 7, 8, 9]
    wanted = [1, 2, 3, 20, END, 5, 6, 7, 8, 9, 30, 31]
    splice = plan_splice(cached, wanted, is_end)
    assert splice == Splice(start=3, removed=5, inserted=(20,), kept=6)
    assert splice.shift == -4 and splice.end == 10
    assert apply_splice(cached, splice) == [1, 2, 3, 20, END, 5, 6, 7, 8, 9]


def test_no_splice_when_it_would_not_pay_or_cannot_be_bounded() -> None:
    # The prompt only grows: a prefix cache already handles it.
    assert plan_splice([1, 2, 3], [1, 2, 3, 4], is_end) is None
    # The new span is not shorter than the old one (nothing was evicted).
    assert plan_splice([1, 2, END, 5, 6, 7], [1, 9, 9, END, 5, 6, 7], is_end) is None
    # Fewer tokens kept after the span than tokens to evaluate in its place.
    assert plan_splice([1, 7, 7, 7, 7, END, 5], [1, 8, 8, END, 5], is_end) is None
    # No boundary after the difference (a reply re-tokenized at the end of the cache).
    assert plan_splice([1, 2, 3, 4], [1, 2, 9, 9, 9], is_end) is None


def test_several_changed_spans_are_spliced_left_to_right() -> None:
    cached = [1, 10, 10, 10, 10, END, 2, 2, 2, 11, 11, 11, 11, END, 3, 3, 3]
    wanted = [1, 20, END, 2, 2, 2, 21, END, 3, 3, 3, 4]
    splices = plan_splices(cached, wanted, is_end)
    assert [s.start for s in splices] == [1, 6]
    record = cached
    for splice in splices:
        record = apply_splice(record, splice)
    assert record == wanted[:-1]


# ------------------------------------------------------------------ llama.cpp, tiny GGUF

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda"]


def filler(seed: int, words: int) -> str:
    return " ".join(f"{WORDS[(seed * 7 + i) % len(WORDS)]}{(seed + i) % 13}" for i in range(words))


def run_turn(backend: LlamaCppBackend, view: list[ChatMessage]) -> Completion:
    completion = None
    for event in backend.stream_chat(view, max_tokens=1):
        if isinstance(event, Completion):
            completion = event
    assert completion is not None
    return completion


def held_tokens(backend: LlamaCppBackend) -> list[int]:
    return [int(t) for t in backend.llm.input_ids[: backend.llm.n_tokens]]


def llama_positions(backend: LlamaCppBackend) -> tuple[int, int]:
    import llama_cpp

    memory = llama_cpp.llama_get_memory(backend.llm._ctx.ctx)
    return int(llama_cpp.llama_memory_seq_pos_min(memory, 0)), int(llama_cpp.llama_memory_seq_pos_max(memory, 0))


@pytest.fixture
def shifting(tiny_gguf: Path) -> LlamaCppBackend:
    clear_model_cache()
    return LlamaCppBackend(tiny_gguf, context_length=32768, temperature=0.0, seed=5, kv_shift=True)


def test_forty_turns_hold_the_exact_view_and_evaluate_only_new_tokens(
    shifting: LlamaCppBackend, tmp_path: Path
) -> None:
    keep = 3
    system = ChatMessage("system", "You are a researcher. " * 40)
    messages = [ChatMessage("user", "Task: " + filler(0, 60))]
    previous: list[int] = []
    spliced_turns = 0
    for turn in range(40):
        view = [system, *build_view(messages, keep, "shift")]
        assert view == [system, *build_view(messages, keep, "exact")]  # what the model is shown is exact last-K
        completion = run_turn(shifting, view)
        fresh = shifting.render_tokens(view)
        # What llama.cpp holds is the exact view, token for token, at consecutive positions.
        assert held_tokens(shifting) == fresh
        assert llama_positions(shifting) == (0, len(fresh) - 1)
        assert not completion.kv_shift_fallback
        # Evaluated: only what the previous prompt did not hold (the placeholder is new, the evicted result gone).
        results = [i for i, m in enumerate(messages) if m.role == "user"][1:]
        evicted = results[-keep - 1] if len(results) > keep else None
        evicted_tokens = shifting.count_tokens(messages[evicted].content) if evicted is not None else 0
        expected = len(fresh) - (len(previous) - evicted_tokens) if previous else len(fresh)
        assert completion.evaluated_tokens == expected, turn
        spliced_turns += evicted is not None
        previous = fresh
        messages += [
            ChatMessage("assistant", f"<think>{filler(100 + turn, 12)}</think> call {turn}"),
            ChatMessage("user", f"result {turn}: {filler(200 + turn, 40 + turn % 7)}"),
        ]
    assert spliced_turns == 40 - keep - 1
    assert [m.content for m in build_view(messages, keep, "exact")].count(OMITTED) == 40 - keep

    # A KV checkpoint of the shifted cache restores in a fresh process and the next turn is still only new tokens.
    checkpoint = tmp_path / "kv-cache.bin"
    assert shifting.save_checkpoint(checkpoint, max_bytes=1 << 30)
    clear_model_cache()
    restored = LlamaCppBackend(shifting.model_path, context_length=32768, temperature=0.0, seed=5, kv_shift=True)
    assert restored.load_checkpoint(checkpoint) == len(previous)
    assert llama_positions(restored) == (0, len(previous) - 1)
    view = [system, *build_view(messages, keep, "shift")]
    completion = run_turn(restored, view)
    fresh = restored.render_tokens(view)
    assert held_tokens(restored) == fresh and not completion.kv_shift_fallback
    evicted = [i for i, m in enumerate(messages) if m.role == "user"][1:][-keep - 1]
    assert completion.evaluated_tokens == len(fresh) - len(previous) + restored.count_tokens(messages[evicted].content)


def test_a_cache_that_disagrees_with_its_record_falls_back_to_a_full_evaluation(shifting: LlamaCppBackend) -> None:
    import llama_cpp

    messages = [ChatMessage("user", "Task: " + filler(1, 40))]
    for turn in range(3):
        messages += [ChatMessage("assistant", f"reply {turn}"), ChatMessage("user", filler(300 + turn, 80))]
    run_turn(shifting, [*build_view(messages, 3, "shift")])
    # Damage llama.cpp's cache behind the record's back: its last positions are gone.
    memory = llama_cpp.llama_get_memory(shifting.llm._ctx.ctx)
    llama_cpp.llama_memory_seq_rm(memory, 0, shifting.llm.n_tokens - 5, -1)
    messages += [ChatMessage("assistant", "reply 3"), ChatMessage("user", filler(400, 80))]
    view = build_view(messages, 3, "shift")
    completion = run_turn(shifting, view)
    assert completion.kv_shift_fallback
    assert completion.evaluated_tokens == completion.prompt_tokens  # evaluated again, from scratch
    assert held_tokens(shifting) == shifting.render_tokens(view)
    assert llama_positions(shifting) == (0, completion.prompt_tokens - 1)


@pytest.mark.parametrize("wrong", ["replacement left at the end", "tail moved one too few"])
def test_a_wrong_surgery_is_caught_by_the_check_and_evaluated_again(
    shifting: LlamaCppBackend, monkeypatch: pytest.MonkeyPatch, wrong: str
) -> None:
    import llama_cpp

    messages = [ChatMessage("user", "Task: " + filler(2, 40))]
    for turn in range(3):
        messages += [ChatMessage("assistant", f"reply {turn}"), ChatMessage("user", filler(500 + turn, 80))]
    run_turn(shifting, build_view(messages, 3, "shift"))
    moves: list[tuple[int, int, int]] = []
    right_move = llama_cpp.llama_memory_seq_add

    def wrong_move(memory: Any, seq: int, p0: int, p1: int, delta: int) -> None:
        # The splice's two moves: the tail after the removed result, then the replacement evaluated at the end.
        moves.append((p0, p1, delta))
        if wrong == "replacement left at the end" and p1 == -1:
            return
        right_move(memory, seq, p0, p1, delta + (1 if wrong == "tail moved one too few" and p1 != -1 else 0))

    monkeypatch.setattr(llama_cpp, "llama_memory_seq_add", wrong_move)
    messages += [ChatMessage("assistant", "reply 3"), ChatMessage("user", filler(600, 80))]
    view = build_view(messages, 3, "shift")
    completion = run_turn(shifting, view)
    assert len(moves) == 2  # one splice happened, and went wrong
    assert completion.kv_shift_fallback
    assert completion.evaluated_tokens == completion.prompt_tokens
    assert held_tokens(shifting) == shifting.render_tokens(view)
    assert llama_positions(shifting) == (0, completion.prompt_tokens - 1)


# ------------------------------------------------------------------ the loop, interrupted and resumed

REPEAT_CALL = (
    "<use_mcp_tool>\n<server_name>test-tools</server_name>\n<tool_name>repeat</tool_name>\n<arguments>\n"
    '{"text": "\' [a-h] [a-h] [a-h] [a-h] \' ", "times": 40}\n</arguments>\n</use_mcp_tool>'
)


@pytest.fixture
def history(appliance_home: Path, monkeypatch: pytest.MonkeyPatch) -> History:
    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")
    store = open_history(appliance_home / "history.db")
    yield store  # type: ignore[misc]
    store.close()


def test_a_shifted_run_resumes_in_the_same_process_evaluating_only_new_tokens(
    history: History, tiny_gguf: Path, tmp_path: Path
) -> None:
    # Every turn calls `repeat` with four letters the (random, greedy) model picks: results differ from turn to turn.
    grammar = tmp_path / "turn.gbnf"
    prefix, suffix = REPEAT_CALL.split("' [a-h] [a-h] [a-h] [a-h] '")
    grammar.write_text(f"root ::= {json.dumps(prefix)} [a-h] [a-h] [a-h] [a-h] {json.dumps(suffix)}\n")
    summary = tmp_path / "summary.gbnf"
    summary.write_text('root ::= "\\\\boxed{42}"\n')
    clear_model_cache()
    settings = settings_for(
        tmp_path / "unused.jsonl",
        **{
            "model.backend": "llamacpp", "model.path": str(tiny_gguf), "model.context_length": 16384,
            "model.max_tokens": 200, "model.temperature": 0.0, "model.seed": 5, "model.grammar": str(grammar),
            "model.summary_grammar": str(summary), "agent.eviction": "shift", "agent.max_turns": 12,
            "agent.attempts": 0,  # one run that answers when its turns are spent (attempts are tested elsewhere)
        },
    )  # fmt: skip
    # The first process stops (as if killed) right after the results of turn 6.
    backend = build_backend(settings)
    toolbox = build_toolbox(settings, lambda: backend)
    agent, state = prepare_run(settings, "Repeat things.", backend=backend, toolbox=toolbox, run_id="shift-run")
    recorder, first = history.recorder(), list[AgentEvent]()
    events = agent.run(state)
    for event in events:
        recorder(event)
        first.append(event)
        if isinstance(event, ObservationAdded) and event.turn == 6:
            events.close()
            break
    toolbox.close()
    assert isinstance(first[0], RunStarted) and first[0].backend["kv_shift"] is True  # recorded with the run
    assert first[0].backend["kv_cache_type"] == "f16" and first[0].backend["prompt_lookup"] == 0
    simulate_dead_owner(history, "shift-run")
    resumed = resume_in_process(history, "shift-run")
    done = resumed[-1]
    assert isinstance(done, RunFinished) and (done.status, done.answer) == ("answered", "42"), done
    assert not [e for e in first + resumed if isinstance(e, Notice) and "KV cache" in e.message]
    turns = [e for e in first + resumed if isinstance(e, TurnEnded) and e.kind == "turn"]
    assert len(turns) == 12
    # Greedy decoding makes every reply and result the same length, so every turn adds the same new tokens;
    # from turn 4 on (K=2) each also shows one more placeholder, and evaluates nothing else, resumed or not.
    placeholder = backend.count_tokens(OMITTED)
    assert [t.evaluated_tokens for t in turns[1:3]] == [turns[1].evaluated_tokens] * 2
    assert [t.evaluated_tokens for t in turns[3:]] == [turns[1].evaluated_tokens + placeholder] * 9
    # Exact last-K would evaluate the K kept results and replies again on every turn.
    assert turns[1].evaluated_tokens + placeholder < 2 * turns[1].evaluated_tokens


# ------------------------------------------------------------------ measuring it: eval --compare


def test_eval_compare_runs_the_same_tasks_under_each_mode(appliance_home: Path, tiny_gguf: Path) -> None:
    from appliance.eval.runner import load_results
    from tests.conftest import run_cli

    env = {"APPLIANCE_MODEL_MAX_TOKENS": "48", "APPLIANCE_MODEL_CONTEXT_LENGTH": "16384",
           "APPLIANCE_SUMMARY_RETRIES": "1"}  # fmt: skip
    # One run per task (--attempts 0): the random model never answers, and the comparison is about eviction.
    args = ["eval", "--sample", "--backend", "llamacpp", "--model", str(tiny_gguf), "--max-turns", "2", "--limit", "2",
            "--attempts", "0"]  # fmt: skip
    result = run_cli([*args, "--compare", "exact,shift"], env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {
        line.split()[0]: line.split()
        for line in result.stdout.splitlines()
        if line.split()[:1] in (["exact"], ["shift"])
    }
    assert set(rows) == {"exact", "shift"}
    assert "avg@1" in result.stdout and "s/run" in result.stdout
    for mode in ("exact", "shift"):
        results = load_results(appliance_home / "evals" / "sample" / mode)
        assert [r.task_id for r in results] == ["sample-01", "sample-02"]
        assert all(r.status in ("answered", "no_answer") for r in results)
    history = open_history(appliance_home / "history.db")
    try:
        shifted = history.list_runs(limit=10, tag="eval:sample-shift")
        assert len(shifted) == 2
        assert history.get_run(shifted[0].run_id).settings["agent"]["eviction"] == "shift"
    finally:
        history.close()

    bad = run_cli([*args, "--compare", "exact,shfit"], env=env)
    assert bad.returncode == 2 and "--compare" in bad.stderr and "exact, blocks, shift" in bad.stderr


# ------------------------------------------------------------------ a failed check in a run is recorded


class Saboteur(ToolServer):
    """A tool whose third call removes the last tokens from llama.cpp's cache behind the backend's back."""

    name = "test-tools"

    def __init__(self, backend: LlamaCppBackend) -> None:
        self.backend = backend
        self.calls = 0

    def tools(self) -> Sequence[ToolSpec]:
        return (ToolSpec("echo", "Return the text.", {"type": "object", "properties": {"text": {"type": "string"}}}),)

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        import llama_cpp

        self.calls += 1
        if self.calls == 3:
            memory = llama_cpp.llama_get_memory(self.backend.llm._ctx.ctx)
            llama_cpp.llama_memory_seq_rm(memory, 0, self.backend.llm.n_tokens - 5, -1)
        return ToolOutput(f"call {self.calls}: " + filler(self.calls, 60))


def test_a_failed_shift_check_in_a_run_is_a_recorded_notice(tiny_gguf: Path, tmp_path: Path) -> None:
    call = ("<use_mcp_tool>\n<server_name>test-tools</server_name>\n<tool_name>echo</tool_name>\n<arguments>\n"
            '{"text": "x"}\n</arguments>\n</use_mcp_tool>')  # fmt: skip
    grammar = tmp_path / "turn.gbnf"
    grammar.write_text(f"root ::= {json.dumps(call)}\n")
    clear_model_cache()
    backend = LlamaCppBackend(tiny_gguf, context_length=16384, temperature=0.0, seed=5, grammar=str(grammar),
                              kv_shift=True)  # fmt: skip
    toolbox = ToolBox([Saboteur(backend)])
    ctx = CallContext("run-shift", tmp_path, tmp_path / "ws", tmp_path / "out", timeout=30)
    agent = Agent(backend, toolbox, AgentSettings(keep_last=2, eviction="shift", max_turns=5), ctx, max_tokens=100)
    state = new_state("run-shift", "Echo.", render_task_message("Echo."),
                      render_system_prompt(dt.date(2025, 1, 1), toolbox.server_specs()))  # fmt: skip
    events = list(agent.run(state))
    notices = [e for e in events if isinstance(e, Notice) and "KV cache after the shift" in e.message]
    # Turn 4 is the first to evict a result (K=2): its splice meets the damaged cache.
    assert [n.message.split(":")[0] for n in notices] == ["turn 4"]
    turns = {e.turn: e for e in events if isinstance(e, TurnEnded) and e.kind == "turn"}
    assert turns[4].evaluated_tokens == turns[4].prompt_tokens  # evaluated again from scratch
    assert turns[5].evaluated_tokens < turns[5].prompt_tokens // 4  # and spliced again the turn after
    assert isinstance(events[-1], RunFinished) and events[-1].status in ("answered", "no_answer")
