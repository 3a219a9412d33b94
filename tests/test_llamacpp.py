"""The real llama.cpp path with a tiny random-weight GGUF generated at test time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import ComponentUnavailable
from appliance.llm.base import ChatMessage, Completion, TextChunk
from appliance.llm.llamacpp import LlamaCppBackend, clear_model_cache
from tests.conftest import run_cli

CALL_TEXT = (
    "<think>\nI should run a command.\n</think>\n\n<use_mcp_tool>\n<server_name>tool-python</server_name>\n"
    '<tool_name>run_command</tool_name>\n<arguments>\n{"command": "echo hi", "sandbox_id": "s1"}\n'
    "</arguments>\n</use_mcp_tool>"
)


def gbnf_literal(text: str) -> str:
    """A GBNF grammar whose only sentence is `text`."""
    return "root ::= " + json.dumps(text)


def grammar_env(tmp_path: Path, turn: str, summary: str, *, tools: str = "", context: int = 4096) -> dict[str, str]:
    """Settings (as environment) for a CLI run whose turns and summary are forced by literal grammars."""
    (tmp_path / "turn.gbnf").write_text(gbnf_literal(turn), encoding="utf-8")
    (tmp_path / "summary.gbnf").write_text(gbnf_literal(summary), encoding="utf-8")
    return {
        "APPLIANCE_TOOLS_ENABLED": tools,
        "APPLIANCE_MODEL_GRAMMAR": str(tmp_path / "turn.gbnf"),
        "APPLIANCE_MODEL_SUMMARY_GRAMMAR": str(tmp_path / "summary.gbnf"),
        "APPLIANCE_MODEL_CONTEXT_LENGTH": str(context),
        "APPLIANCE_MODEL_MAX_TOKENS": "300",
    }


@pytest.fixture
def backend(tiny_gguf: Path, tmp_path: Path) -> LlamaCppBackend:
    grammar = tmp_path / "turn.gbnf"
    grammar.write_text(gbnf_literal(CALL_TEXT), encoding="utf-8")
    summary = tmp_path / "summary.gbnf"
    summary.write_text(gbnf_literal("The answer is \\boxed{42}"), encoding="utf-8")
    clear_model_cache()
    return LlamaCppBackend(
        tiny_gguf, context_length=4096, temperature=0.0, seed=7, grammar=str(grammar), summary_grammar=str(summary)
    )


def collect(
    backend: LlamaCppBackend, messages: list[ChatMessage], max_tokens: int = 400, **kwargs: object
) -> tuple[str, Completion]:
    chunks, completion = [], None
    for event in backend.stream_chat(messages, max_tokens=max_tokens, **kwargs):  # type: ignore[arg-type]
        if isinstance(event, TextChunk):
            chunks.append(event.text)
        else:
            completion = event
    assert completion is not None
    return "".join(chunks), completion


def test_chat_template_comes_from_the_gguf(backend: LlamaCppBackend) -> None:
    assert backend.template_source == "gguf"
    assert backend.eos_token == "<|im_end|>"
    tokens = backend.render_tokens([ChatMessage("system", "S"), ChatMessage("user", "hi")])
    text = backend.llm.detokenize(tokens, special=True).decode()
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert backend.message_overhead > 0
    assert backend.count_tokens("hello world") == len(backend.llm.tokenize(b"hello world", add_bos=False))


def test_grammar_forces_the_reply_and_streaming_matches_the_completion(backend: LlamaCppBackend) -> None:
    text, completion = collect(backend, [ChatMessage("user", "Use a tool.")])
    assert text == CALL_TEXT == completion.text
    assert completion.finish_reason == "stop"
    assert completion.prompt_tokens == len(backend.render_tokens([ChatMessage("user", "Use a tool.")]))
    # Grammar-constrained sampling may pick other token splits than the tokenizer would.
    assert abs(completion.completion_tokens - backend.count_tokens(CALL_TEXT)) <= 0.2 * backend.count_tokens(CALL_TEXT)
    summary, _ = collect(backend, [ChatMessage("user", "Answer.")], purpose="summary")
    assert summary == "The answer is \\boxed{42}"


def test_kv_cache_prefix_is_reused_across_turns(backend: LlamaCppBackend) -> None:
    history = [ChatMessage("system", "You are a test. " * 40), ChatMessage("user", "first question " * 20)]
    _, first = collect(backend, history)
    assert first.evaluated_tokens == first.prompt_tokens  # cold cache (different prompt before)
    history += [ChatMessage("assistant", first.text), ChatMessage("user", "a short tool result")]
    _, second = collect(backend, history)
    new_tokens = second.prompt_tokens - first.prompt_tokens
    # Only the new messages (plus at most the tail the template re-renders) are evaluated.
    assert second.evaluated_tokens <= new_tokens + 2
    assert second.evaluated_tokens < second.prompt_tokens / 3
    # Changing the middle of the prompt forces everything after the change to be evaluated again.
    changed = [history[0], ChatMessage("user", "FIRST QUESTION " * 20), *history[2:]]
    _, third = collect(backend, changed)
    unchanged_prefix = len(backend.render_tokens(history[:1], generation_prompt=False))
    # (the next message header "<|im_start|>user\n" is shared too)
    assert (
        third.prompt_tokens - unchanged_prefix - 6 <= third.evaluated_tokens <= third.prompt_tokens - unchanged_prefix
    )


def test_cancel_stops_generation(backend: LlamaCppBackend) -> None:
    import threading

    cancel = threading.Event()
    cancel.set()
    _, completion = collect(backend, [ChatMessage("user", "go")], cancel=cancel)
    assert completion.finish_reason == "cancelled"
    assert len(completion.text) < len(CALL_TEXT)


def test_a_corrupt_gguf_is_component_unavailable(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ComponentUnavailable) as info:
        LlamaCppBackend(broken)
    assert "could not load" in info.value.one_line() and "sha256" in info.value.one_line()


def test_headless_run_end_to_end_on_llama_cpp(tiny_gguf: Path, tmp_path: Path, appliance_home: Path) -> None:
    env = grammar_env(tmp_path, CALL_TEXT, "\\boxed{42}")
    result = run_cli(
        # One attempt: the grammar calls a tool every turn, so the turns always run out (the answer turn answers).
        ["--task", "What is six times seven?", "--backend", "llamacpp", "--model", str(tiny_gguf), "--max-turns", "2",
         "--json", "--attempts", "0"],
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (payload["status"], payload["answer"], payload["turns"], payload["tool_calls"]) == ("answered", "42", 2, 2)
    assert payload["prompt_tokens"] > 1000  # the system prompt and the task were really tokenized
    assert result.stderr.count("tool-python/run_command") == 2


def test_kv_checkpoint_lets_a_new_process_skip_the_prefix(tiny_gguf: Path, tmp_path: Path) -> None:
    history = [ChatMessage("system", "Checkpoint test. " * 60), ChatMessage("user", "the task " * 30)]
    clear_model_cache()
    first = LlamaCppBackend(tiny_gguf, context_length=4096, temperature=0.0, seed=3)
    _, done = collect(first, history, max_tokens=30)
    checkpoint = tmp_path / "kv-cache.bin"
    assert not first.save_checkpoint(checkpoint, max_bytes=1024)  # too big for the budget: nothing written
    assert not checkpoint.exists()
    assert first.save_checkpoint(checkpoint, max_bytes=1 << 30)
    cached_tokens = int(first.llm.n_tokens)

    clear_model_cache()  # as if the process had died: a fresh model with an empty cache
    second = LlamaCppBackend(tiny_gguf, context_length=4096, temperature=0.0, seed=3)
    assert second.load_checkpoint(checkpoint) == cached_tokens
    history += [ChatMessage("assistant", done.text), ChatMessage("user", "a new result")]
    _, resumed = collect(second, history, max_tokens=30)
    assert resumed.evaluated_tokens <= resumed.prompt_tokens - done.prompt_tokens + 3

    clear_model_cache()
    cold = LlamaCppBackend(tiny_gguf, context_length=4096, temperature=0.0, seed=3)
    _, baseline = collect(cold, history, max_tokens=30)
    assert baseline.evaluated_tokens == baseline.prompt_tokens
    assert resumed.text == baseline.text  # the restored cache gives the same greedy output


def test_a_foreign_or_broken_checkpoint_restores_nothing(tiny_gguf: Path, tmp_path: Path) -> None:
    clear_model_cache()
    backend = LlamaCppBackend(tiny_gguf, context_length=4096, temperature=0.0)
    collect(backend, [ChatMessage("user", "hello " * 50)], max_tokens=10)
    checkpoint = tmp_path / "kv.bin"
    assert backend.save_checkpoint(checkpoint, max_bytes=1 << 30)
    clear_model_cache()
    other_context = LlamaCppBackend(tiny_gguf, context_length=2048, temperature=0.0)
    assert other_context.load_checkpoint(checkpoint) == 0
    checkpoint.write_bytes(b"garbage")
    clear_model_cache()
    same = LlamaCppBackend(tiny_gguf, context_length=4096, temperature=0.0)
    assert same.load_checkpoint(checkpoint) == 0
    _, completion = collect(same, [ChatMessage("user", "hello " * 50)], max_tokens=10)
    assert completion.evaluated_tokens == completion.prompt_tokens  # a clean, empty cache


SLOW_CALL = (
    # A stateless run_python_code (no sandbox id) that takes a few seconds inside the real sandbox.
    "<use_mcp_tool>\n<server_name>tool-python</server_name>\n<tool_name>run_python_code</tool_name>\n"
    '<arguments>\n{"code_block": "import time; time.sleep(4); print(6 * 7)"}\n</arguments>\n</use_mcp_tool>'
)


def interrupt_mid_call(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run `appliance ARGS`, press Ctrl-C while its tool call runs; (exit code, stdout, stderr)."""
    import signal
    import subprocess
    import sys
    import threading

    from tests.conftest import REPO_ROOT, cli_env

    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=cli_env(env),
    )  # fmt: skip
    calling = threading.Event()
    lines: list[str] = []

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "tool-python/run_python_code" in line:
                calling.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert calling.wait(60), "".join(lines)
    process.send_signal(signal.SIGINT)  # in the middle of the tool call
    stdout = process.stdout.read() if process.stdout else ""
    process.wait(60)
    reader.join(10)
    return process.returncode, stdout, "".join(lines)


def test_interrupted_run_keeps_its_kv_cache_for_resume(tiny_gguf: Path, tmp_path: Path, appliance_home: Path) -> None:
    settings_env = grammar_env(tmp_path, SLOW_CALL, "\\boxed{42}", tools="tool-python", context=8192)
    args = ["--backend", "llamacpp", "--model", str(tiny_gguf), "--max-turns", "1", "--json"]
    code, stdout, stderr = interrupt_mid_call(
        ["--task", "Wait, then answer.", *args], {"APPLIANCE_HOME": str(appliance_home), **settings_env}
    )
    assert code == 130, stderr
    run_id = json.loads(stdout)["run_id"]
    checkpoint = appliance_home / "runs" / run_id / "kv-cache.bin"
    assert checkpoint.is_file() and "kept the model's cache" in stderr

    resumed = run_cli(["resume", run_id, *args], env=settings_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "restored the model's cache" in resumed.stderr
    assert json.loads(resumed.stdout)["answer"] == "42"
    assert not checkpoint.exists()  # used once


def test_an_interrupted_resume_keeps_its_kv_cache_too(tiny_gguf: Path, tmp_path: Path, appliance_home: Path) -> None:
    settings_env = grammar_env(tmp_path, SLOW_CALL, "\\boxed{42}", tools="tool-python", context=8192)
    env = {"APPLIANCE_HOME": str(appliance_home), **settings_env}
    args = ["--backend", "llamacpp", "--model", str(tiny_gguf), "--max-turns", "1", "--json"]
    code, stdout, stderr = interrupt_mid_call(["--task", "Wait, then answer.", *args], env)
    assert code == 130, stderr
    run_id = json.loads(stdout)["run_id"]
    checkpoint = appliance_home / "runs" / run_id / "kv-cache.bin"

    # The resumed run runs the interrupted call again, and is interrupted in it once more.
    code, stdout, stderr = interrupt_mid_call(["resume", run_id, *args], env)
    assert code == 130, stderr
    assert "restored the model's cache" in stderr and "kept the model's cache" in stderr
    assert json.loads(stdout)["status"] == "interrupted" and checkpoint.is_file()

    resumed = run_cli(["resume", run_id, *args], env=settings_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "restored the model's cache" in resumed.stderr
    assert json.loads(resumed.stdout)["answer"] == "42"
    assert not checkpoint.exists()


# ---------------------------------------------------------------- continuation and sampling


def letters_backend(tiny_gguf: Path, tmp_path: Path, **kwargs: object) -> LlamaCppBackend:
    """Greedy, no penalty, replies of 400 lowercase letters and spaces (random weights may end at once otherwise)."""
    grammar = tmp_path / "letters.gbnf"
    grammar.write_text("root ::= [a-z ]{400}", encoding="utf-8")
    clear_model_cache()
    options: dict[str, object] = {"context_length": 2048, "temperature": 0.0, "seed": 7, "repeat_penalty": 1.0}
    options.update(kwargs)
    return LlamaCppBackend(tiny_gguf, grammar=str(grammar), **options)  # type: ignore[arg-type]


def test_a_cut_reply_continues_exactly_where_it_stopped(tiny_gguf: Path, tmp_path: Path) -> None:
    backend = letters_backend(tiny_gguf, tmp_path)
    chat = [ChatMessage("system", "You are a test."), ChatMessage("user", "Write something.")]
    whole, in_one_piece = collect(backend, chat, max_tokens=40)
    backend.llm.reset()
    first, cut = collect(backend, chat, max_tokens=20)
    assert cut.finish_reason == "length" and in_one_piece.finish_reason == "length"
    cache_after_cut = [int(t) for t in backend.llm.input_ids[: backend.llm.n_tokens]]
    continuation_prompt = backend.continuation_tokens([*chat, ChatMessage("assistant", first)])
    # The continuation prompt is the cut reply's prompt and its sampled tokens, as they are in the cache.
    assert continuation_prompt[: len(cache_after_cut)] == cache_after_cut
    rest, continued = collect(backend, [*chat, ChatMessage("assistant", first)], max_tokens=20)
    # Only the last sampled token (never evaluated when the reply was cut) is evaluated again.
    assert continued.evaluated_tokens <= 2
    assert [int(t) for t in backend.llm.input_ids[: len(cache_after_cut)]] == cache_after_cut
    # Greedy: the cut reply and its continuation are the reply generated in one piece.
    assert first + rest == whole


def test_continuation_renders_without_the_generation_prompt_or_the_end_of_turn(tiny_gguf: Path, tmp_path: Path) -> None:
    backend = letters_backend(tiny_gguf, tmp_path)
    prefix = "<think>\nplan\n</think>\n\n"
    tokens = backend.continuation_tokens([ChatMessage("user", "hi"), ChatMessage("assistant", prefix)])
    text = backend.llm.detokenize(tokens, special=True).decode()
    assert text == f"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n{prefix}"


def test_the_sampler_llama_cpp_gets_is_the_references(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read the samplers llama.cpp is given: no top-k, no min-p, the penalty over the whole context."""
    from llama_cpp import _internals

    added: dict[str, tuple[object, ...]] = {}
    for name in ("add_top_k", "add_min_p", "add_typical", "add_top_p", "add_temp", "add_penalties"):
        real = getattr(_internals.LlamaSampler, name)

        def spy(self: object, *args: object, _real: object = real, _name: str = name, **kw: object) -> object:
            added[_name] = args + tuple(kw.values())
            return _real(self, *args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(_internals.LlamaSampler, name, spy)
    clear_model_cache()
    backend = LlamaCppBackend(tiny_gguf, context_length=2048, temperature=1.0, top_p=0.95, repeat_penalty=1.05, seed=3)
    collect(backend, [ChatMessage("user", "go")], max_tokens=3)
    assert added["add_top_k"][0] == 0  # llama.cpp: k <= 0 keeps every token
    assert added["add_min_p"][0] == 0.0
    assert added["add_typical"][0] == 1.0
    assert added["add_top_p"][0] == 0.95
    assert added["add_temp"][0] == 1.0
    _vocab, last_n, repeat, freq, present = added["add_penalties"]
    assert (last_n, repeat, freq, present) == (2048, 1.05, 0.0, 0.0)


def test_the_loop_continues_a_turn_cut_by_max_tokens(tiny_gguf: Path, tmp_path: Path) -> None:
    from appliance.agent.events import ReplyContinued, RunFinished, TurnEnded
    from appliance.agent.loop import Agent
    from appliance.agent.state import new_state
    from appliance.config import AgentSettings
    from appliance.tools.base import CallContext, ToolBox

    (tmp_path / "turn.gbnf").write_text("root ::= [a-z ]{100}", encoding="utf-8")
    (tmp_path / "summary.gbnf").write_text(gbnf_literal("\\boxed{42}"), encoding="utf-8")
    clear_model_cache()
    grammars = {"grammar": str(tmp_path / "turn.gbnf"), "summary_grammar": str(tmp_path / "summary.gbnf")}
    backend = LlamaCppBackend(tiny_gguf, context_length=2048, temperature=0.0, seed=7, **grammars)
    ctx = CallContext("run-llama", tmp_path, tmp_path / "ws", tmp_path / "out", timeout=30)
    agent = Agent(backend, ToolBox([]), AgentSettings(), ctx, max_tokens=30)
    events = list(agent.run(new_state("run-llama", "t", "Write.", "You are a test.")))
    turn = next(e for e in events if isinstance(e, TurnEnded) and e.kind == "turn")
    continued = [e for e in events if isinstance(e, ReplyContinued)]
    # Cut at 30 tokens, continued until the reply ended by itself, in one turn. (A grammar starts
    # again with each request: the continuation writes its own 100 characters after the cut ones.)
    assert continued and continued[0].generated_tokens in (30, 31)  # llama.cpp may count one more
    assert turn.finish_reason == "stop" and 100 < len(turn.content) <= 200 and turn.completion_tokens > 31
    # The tokens generated before the cut were not evaluated again: the prompt once, then a token or two.
    assert turn.evaluated_tokens <= turn.prompt_tokens + 2 * len(continued)
    done = events[-1]
    assert isinstance(done, RunFinished) and done.answer == "42"
