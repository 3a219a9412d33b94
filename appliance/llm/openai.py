"""Any OpenAI-compatible chat server: llama-server, llama-cpp-python's server, vLLM, SGLang.

This is the path to bigger GPUs and many machines: the appliance stays the
client and the engine scales. Requests stream (SSE); connection failures and
5xx answers are retried with exponential backoff before any text has arrived;
a server that goes away mid-turn ends the turn with a clear error. Prompts are
sent in the same order every turn, so a prefix-caching server can reuse them.

A conversation that ends with the assistant's message is continued, not
answered ([model] continuation): vLLM and SGLang get `continue_final_message`
without a generation prompt (what the reference sends), llama-server prefills
the assistant's message on its own (the same fields are harmless to it), and
llama-cpp-python's server, whose chat endpoint always opens a new turn, gets
the ChatML rendering of the conversation on /v1/completions, cut after the
assistant's text. `auto` tells them apart by the `owned_by` of /v1/models.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from appliance.errors import ComponentUnavailable
from appliance.llm.base import (
    Backend,
    ChatMessage,
    Completion,
    Purpose,
    StreamEvent,
    TextChunk,
    approximate_tokens,
)

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# /v1/models "owned_by" of llama.cpp servers: llama-server, llama-cpp-python's server.
_LLAMA_CPP_SERVERS = frozenset({"llamacpp", "me"})
# Of those, the one whose chat endpoint cannot continue a message.
_COMPLETIONS_ONLY = frozenset({"me"})


def render_chatml_continuation(messages: Sequence[ChatMessage]) -> str:
    """The ChatML prompt (MiroThinker's template) that continues the last, assistant, message."""
    *earlier, last = messages
    text = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in earlier)
    return text + f"<|im_start|>{last.role}\n{last.content}"


class ServerWentAway(ComponentUnavailable):
    pass


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "",
        api_key: str = "",
        context_length: int = 32768,
        temperature: float = 1.0,
        top_p: float = 0.95,
        repeat_penalty: float = 1.05,
        seed: int = -1,
        timeout: float = 600.0,
        retries: int = 4,
        backoff: float = 1.0,
        grammar: str = "",
        summary_grammar: str = "",
        continuation: str = "auto",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.continuation = continuation
        self._owned_by: str | None = None
        self.context_length = context_length
        self.temperature = temperature
        self.top_p = top_p
        self.repeat_penalty = repeat_penalty
        self.seed = seed
        self.retries = max(0, retries)
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)))
        # GBNF grammars go to llama.cpp servers (llama-server, llama-cpp-python) as "grammar".
        self._grammars = {"turn": grammar or None, "summary": summary_grammar or None}
        self.model = model or self._discover_model()
        self._tokenize_route: str | None = None
        self.tokenizer = "server"

    # ------------------------------------------------------------ discovery

    def _unreachable(self, exc: Exception) -> ComponentUnavailable:
        return ComponentUnavailable(
            "model server",
            f"the OpenAI-compatible server at {self.base_url} is unreachable ({type(exc).__name__}: {exc})",
            "start it (for example `llama-server -m MODEL.gguf --port 8080`) or fix --base-url",
        )

    def _with_retries(self, attempt: Any) -> Any:
        delay = self.backoff
        for number in range(self.retries + 1):
            try:
                return attempt()
            except (httpx.TransportError, _RetryableStatus) as exc:
                if number == self.retries:
                    if isinstance(exc, _RetryableStatus):
                        raise ComponentUnavailable(
                            "model server",
                            f"{self.base_url} kept answering HTTP {exc.status}: {exc.body[:200]}",
                            "check the server's log; it may be overloaded or still loading the model",
                        ) from exc
                    raise self._unreachable(exc) from exc
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _discover_model(self) -> str:
        def attempt() -> str:
            response = self.client.get(f"{self.base_url}/models")
            if response.status_code in _RETRY_STATUS:
                raise _RetryableStatus(response.status_code, response.text)
            if response.status_code != 200:
                return "default"
            data = response.json().get("data") or []
            if data:
                self._owned_by = str(data[0].get("owned_by") or "")
            return str(data[0]["id"]) if data else "default"

        result: str = self._with_retries(attempt)
        return result

    def _server_root(self) -> str:
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    def count_tokens(self, text: str) -> int:
        """Ask the server's tokenizer (llama-server, llama-cpp-python, vLLM); else approximate."""
        if not text:
            return 0
        routes = (
            [self._tokenize_route]
            if self._tokenize_route
            else [
                "/tokenize",
                "/extras/tokenize",
                "/v1/extras/tokenize",
            ]
        )
        for route in routes:
            if route is None:
                continue
            try:
                response = self.client.post(
                    self._server_root() + route,
                    json={"content": text, "input": text, "prompt": text, "model": self.model, "add_special": False},
                    timeout=30.0,
                )
            except httpx.TransportError:
                break
            if response.status_code != 200:
                continue
            data = response.json()
            count = data.get("count")
            tokens = data.get("tokens")
            if isinstance(count, int) or isinstance(tokens, list):
                self._tokenize_route = route
                return int(count) if isinstance(count, int) else len(tokens)
        self.tokenizer = "approximate"
        return approximate_tokens(text)

    def server_owner(self) -> str:
        """The `owned_by` of the served model ("vllm", "sglang", "llamacpp", "me"...; "" when unknown)."""
        if self._owned_by is None:
            try:
                response = self.client.get(f"{self.base_url}/models", timeout=10.0)
                data = (response.json().get("data") or []) if response.status_code == 200 else []
            except (httpx.TransportError, ValueError):
                data = []
            self._owned_by = str(data[0].get("owned_by") or "") if data else ""
        return self._owned_by

    def continuation_mode(self) -> str:
        """How this server continues an assistant message: continue_final_message or completions."""
        if self.continuation != "auto":
            return self.continuation
        return "completions" if self.server_owner() in _COMPLETIONS_ONLY else "continue_final_message"

    # ------------------------------------------------------------ streaming

    def _payload(self, messages: Sequence[ChatMessage], max_tokens: int, purpose: Purpose) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }
        if messages and messages[-1].role == "assistant":
            if self.continuation_mode() == "completions":
                del payload["messages"]
                payload["prompt"] = render_chatml_continuation(messages)
                payload["stop"] = ["<|im_end|>"]
            else:
                # The reference's request (openai_client.py), honoured by vLLM and SGLang.
                payload["continue_final_message"] = True
                payload["add_generation_prompt"] = False
        if self.server_owner() in _LLAMA_CPP_SERVERS:
            # llama.cpp's own defaults (top_k 40, min_p 0.05, repeat_penalty 1.1 in llama-cpp-python)
            # are not what the reference was evaluated with: say every value.
            payload.update({"top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": self.repeat_penalty})
            payload["repeat_last_n"] = -1  # llama-server: the penalty over the whole context
        elif self.repeat_penalty != 1.0:
            # vLLM/SGLang call it repetition_penalty, llama.cpp repeat_penalty.
            payload["repetition_penalty"] = self.repeat_penalty
            payload["repeat_penalty"] = self.repeat_penalty
        if self.seed >= 0:
            payload["seed"] = self.seed
        grammar = self._grammars.get(purpose)
        if grammar:
            payload["grammar"] = grammar
        return payload

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        purpose: Purpose = "turn",
        cancel: threading.Event | None = None,
    ) -> Iterator[StreamEvent]:
        payload = self._payload(messages, max_tokens, purpose)
        url = f"{self.base_url}/{'completions' if 'prompt' in payload else 'chat/completions'}"

        def open_stream() -> httpx.Response:
            request = self.client.build_request("POST", url, json=payload)
            response = self.client.send(request, stream=True)
            if response.status_code in _RETRY_STATUS:
                body = response.read().decode("utf-8", "replace")
                response.close()
                raise _RetryableStatus(response.status_code, body)
            if response.status_code != 200:
                body = response.read().decode("utf-8", "replace")
                response.close()
                raise ComponentUnavailable(
                    "model server",
                    f"{url} answered HTTP {response.status_code}: {body[:300]}",
                    "check the model name (--model / [model] name) and the server's context size",
                )
            return response

        response: httpx.Response = self._with_retries(open_stream)
        parts: list[str] = []
        finish = ""
        usage: dict[str, Any] = {}
        ended = False
        try:
            for line in response.iter_lines():
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    ended = True
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    continue
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = delta.get("content") or choice.get("text") or ""
                    if text:
                        parts.append(text)
                        yield TextChunk(text)
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
        except httpx.TransportError as exc:
            raise ServerWentAway(
                "model server",
                f"the server at {self.base_url} went away in the middle of a turn ({type(exc).__name__})",
                "restart the server and resume the run with `appliance resume RUN_ID`",
            ) from exc
        finally:
            response.close()
        if not ended and finish not in ("stop", "length", "cancelled"):
            raise ServerWentAway(
                "model server",
                f"the stream from {self.base_url} ended before the turn was complete",
                "restart the server and resume the run with `appliance resume RUN_ID`",
            )
        finish = finish or "stop"
        text = "".join(parts)
        prompt_tokens = int(usage.get("prompt_tokens") or 0) or self.count_messages(messages)
        completion_tokens = int(usage.get("completion_tokens") or 0) or approximate_tokens(text)
        details = usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        yield Completion(text, finish, prompt_tokens, completion_tokens, prompt_tokens - cached)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["base_url"] = self.base_url
        return info

    def close(self) -> None:
        self.client.close()


class _RetryableStatus(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
