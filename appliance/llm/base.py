"""The backend interface: stream one assistant turn, count tokens."""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
Purpose = Literal["turn", "summary", "extract"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class TextChunk:
    """A piece of streamed text."""

    text: str


@dataclass(frozen=True)
class Completion:
    """The end of a stream: the whole text and what it cost."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens the engine actually evaluated (the rest came from its
    # prefix cache); equal to prompt_tokens when the engine cannot tell.
    evaluated_tokens: int
    # The shift eviction mode's KV surgery did not check out and the prompt was
    # evaluated again from scratch (llama.cpp backend only).
    kv_shift_fallback: bool = False


StreamEvent = TextChunk | Completion


class Backend(ABC):
    """One loaded model. Implementations are used from one thread at a time."""

    name: str = "backend"
    model: str = ""
    context_length: int = 0
    # Tokens a chat template adds around each message's content (ChatML:
    # "<|im_start|>role\n" ... "<|im_end|>\n").
    message_overhead: int = 5

    @abstractmethod
    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        purpose: Purpose = "turn",
        cancel: threading.Event | None = None,
    ) -> Iterator[StreamEvent]:
        """Yield TextChunks, then exactly one Completion as the last event."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of `text` with this model's tokenizer."""

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens of a chat, including template overhead and the generation prompt."""
        return sum(self.count_tokens(m.content) + self.message_overhead for m in messages) + 3

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        purpose: Purpose = "extract",
        cancel: threading.Event | None = None,
    ) -> Completion:
        """Run a whole turn without streaming (extraction, judges)."""
        for event in self.stream_chat(messages, max_tokens=max_tokens, purpose=purpose, cancel=cancel):
            if isinstance(event, Completion):
                return event
        raise RuntimeError(f"{self.name} backend ended its stream without a completion")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "context_length": self.context_length}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model or connection."""


_APPROX_TOKEN = re.compile(r"\w{1,4}|[^\w\s]|\s+")


def split_approximate_tokens(text: str) -> list[str]:
    """A deterministic stand-in tokenizer (close to BPE counts) for backends without one."""
    return list(_APPROX_TOKEN.findall(text))


def approximate_tokens(text: str) -> int:
    return len(split_approximate_tokens(text))
