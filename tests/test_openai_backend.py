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
            with conn:
                conn.recv(65536)
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
