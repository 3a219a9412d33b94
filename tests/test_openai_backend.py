"""The `openai` backend against a real OpenAI-compatible server: llama-cpp-python's own server
serving the tiny GGUF on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.agent.events import ObservationAdded, RunFinished
from appliance.errors import ComponentUnavailable
from appliance.llm.base import ChatMessage, Completion, TextChunk
from appliance.llm.openai import OpenAIBackend, ServerWentAway
from tests.conftest import run_cli
from tests.scripted import ScriptedPython, make_agent
from tests.test_llamacpp import CALL_TEXT, gbnf_literal, grammar_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    def __init__(self, model: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", "8192", "--verbose", "false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("llama_cpp.server did not start in 60 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def server(tiny_gguf: Path) -> Iterator[LlamaServer]:
    instance = LlamaServer(tiny_gguf)
    yield instance
    instance.stop()


def backend_for(url: str, **kwargs: object) -> OpenAIBackend:
    return OpenAIBackend(url, temperature=0.0, retries=1, backoff=0.05, **kwargs)  # type: ignore[arg-type]


def test_streams_a_turn_and_reports_server_usage(server: LlamaServer) -> None:
    backend = backend_for(server.base_url, grammar=gbnf_literal(CALL_TEXT))
    assert backend.model  # discovered from /v1/models
    chunks, completion = [], None
    for event in backend.stream_chat([ChatMessage("user", "Use a tool.")], max_tokens=400):
        if isinstance(event, TextChunk):
            chunks.append(event.text)
        else:
            completion = event
    assert isinstance(completion, Completion)
    assert "".join(chunks) == completion.text == CALL_TEXT
    assert len(chunks) > 5  # really streamed
    assert completion.prompt_tokens > 0 and completion.completion_tokens > 0
    # The server's tokenizer is used for counting.
    assert backend.count_tokens("hello world") > 0 and backend.tokenizer == "server"


def test_headless_run_through_the_server(server: LlamaServer, tmp_path: Path, appliance_home: Path) -> None:
    env = grammar_env(tmp_path, CALL_TEXT, "\\boxed{42}")
    result = run_cli(
        ["--task", "6 x 7?", "--backend", "openai", "--base-url", server.base_url, "--max-turns", "1", "--json"],
        env=env,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (payload["status"], payload["answer"], payload["tool_calls"]) == ("answered", "42", 1)


def test_unreachable_server_is_component_unavailable(appliance_home: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ComponentUnavailable) as info:
        backend_for(url)
    assert "unreachable" in info.value.one_line() and "llama-server" in info.value.one_line()
    result = run_cli(["--task", "x", "--backend", "openai", "--base-url", url], env={"APPLIANCE_RETRIES": "0"})
    assert result.returncode == 3 and "is unreachable" in result.stderr


def test_server_going_away_mid_run_ends_it_with_a_clear_error(tiny_gguf: Path, tmp_path: Path) -> None:
    own = LlamaServer(tiny_gguf)
    try:
        backend = backend_for(own.base_url, grammar=gbnf_literal(CALL_TEXT), context_length=8192)
        agent, state, _ = make_agent([], [ScriptedPython()], tmp_path, max_tokens=500)
        agent.backend = backend
        events = []
        for event in agent.run(state):
            events.append(event)
            if isinstance(event, ObservationAdded):
                own.stop()  # the server dies between turns
    finally:
        own.stop()
    done = events[-1]
    assert isinstance(done, RunFinished)
    assert (done.status, done.exit_code, done.turns) == ("error", 3, 1)
    assert "unreachable" in (done.error or "")


def test_stream_cut_off_mid_turn_raises_server_went_away() -> None:
    """A peer that sends half an SSE stream and closes the connection."""
    port = free_port()
    ready = threading.Event()

    def half_stream() -> None:
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen()
            ready.set()
            conn, _ = listener.accept()
            if conn.recv(65536).startswith(b"GET"):  # the backend asks /v1/models what server this is
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                conn.close()
                conn, _ = listener.accept()
                conn.recv(65536)
            with conn:
                chunk = json.dumps({"choices": [{"delta": {"content": "partial"}, "finish_reason": None}]})
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + f"{len(chunk) + 8:x}\r\ndata: {chunk}\n\n\r\n".encode()
                )
                time.sleep(0.2)

    thread = threading.Thread(target=half_stream, daemon=True)
    thread.start()
    ready.wait(5)
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", model="m", retries=0)
    seen = []
    with pytest.raises(ServerWentAway) as info:
        for event in backend.stream_chat([ChatMessage("user", "hi")], max_tokens=10):
            seen.append(event)
    assert [e.text for e in seen if isinstance(e, TextChunk)] == ["partial"]
    assert "resume" in info.value.one_line()
    thread.join(5)


# ---------------------------------------------------------------- continuation


def test_llama_cpp_python_server_continues_an_assistant_message(server: LlamaServer) -> None:
    from appliance.llm.openai import render_chatml_continuation

    letters = "root ::= [a-z ]{40}"  # ASCII only: streamed and whole texts decode alike
    backend = backend_for(server.base_url, repeat_penalty=1.0, grammar=letters)
    # Its chat endpoint always opens a new turn: the backend uses /v1/completions with the ChatML prefix.
    assert backend.continuation_mode() == "completions"
    chat = [ChatMessage("system", "S"), ChatMessage("user", "Sum up."), ChatMessage("assistant", "<think>\nplan\n")]
    prompt = render_chatml_continuation(chat)
    assert prompt.endswith("<|im_start|>assistant\n<think>\nplan\n")
    chunks, completion = [], None
    for event in backend.stream_chat(chat, max_tokens=12):
        if isinstance(event, TextChunk):
            chunks.append(event.text)
        else:
            completion = event
    assert isinstance(completion, Completion) and "".join(chunks) == completion.text
    # Greedy: what the server generates after exactly that prompt, asked directly.
    direct = httpx.post(
        f"{server.base_url}/completions",
        json={"prompt": prompt, "max_tokens": 12, "temperature": 0.0, "repeat_penalty": 1.0, "grammar": letters},
        timeout=60,
    ).json()["choices"][0]["text"]
    assert direct and completion.text == direct
    # A new assistant turn after the prefix (what the chat endpoint would do) is another prompt.
    reopened = httpx.post(
        f"{server.base_url}/completions",
        json={"prompt": prompt + "<|im_end|>\n<|im_start|>assistant\n", "max_tokens": 12, "temperature": 0.0,
              "repeat_penalty": 1.0, "grammar": letters},
        timeout=60,
    ).json()["choices"][0]["text"]  # fmt: skip
    assert reopened != direct


def test_continue_final_message_is_what_vllm_and_sglang_get() -> None:
    backend = OpenAIBackend("http://127.0.0.1:9/v1", model="m")
    backend._owned_by = "vllm"  # what its /v1/models says
    assert backend.continuation_mode() == "continue_final_message"
    fresh = backend._payload([ChatMessage("user", "q")], 10, "turn")
    assert "continue_final_message" not in fresh and "add_generation_prompt" not in fresh
    cont = backend._payload([ChatMessage("user", "q"), ChatMessage("assistant", "<think>")], 10, "turn")
    assert cont["continue_final_message"] is True and cont["add_generation_prompt"] is False
    assert cont["messages"][-1] == {"role": "assistant", "content": "<think>"}
    # vLLM's own sampling defaults are the reference's: only the penalty is said, under both names.
    assert "top_k" not in cont and cont["repetition_penalty"] == cont["repeat_penalty"] == 1.05


def test_llama_cpp_servers_are_told_every_sampling_value() -> None:
    backend = OpenAIBackend("http://127.0.0.1:9/v1", model="m", repeat_penalty=1.0)
    backend._owned_by = "llamacpp"  # llama-server: prefills an assistant message on its chat endpoint
    assert backend.continuation_mode() == "continue_final_message"
    payload = backend._payload([ChatMessage("user", "q")], 10, "turn")
    assert (payload["top_k"], payload["min_p"], payload["typical_p"]) == (0, 0.0, 1.0)
    # Its defaults would apply a penalty (1.1 in llama-cpp-python) over a 64-token window.
    assert (payload["repeat_penalty"], payload["repeat_last_n"]) == (1.0, -1)
