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
        ["--task", "What is six times seven?", "--backend", "llamacpp", "--model", str(tiny_gguf), "--max-turns", "2",
         "--json"],
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
