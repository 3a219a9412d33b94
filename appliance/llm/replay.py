"""Scripted assistant turns from a JSONL file: deterministic tests and demos.

Each line is one JSON object with the assistant turn in `content`. Optional:
`delay` (seconds to spread the streaming over), `finish_reason`, and `prefix`:
the assistant message the line continues (a call whose last message is the
assistant's, such as the failure summary's think block); a line with a prefix
fails clearly when the run asks for anything else.

Continuation: a line longer than `max_tokens` is cut (finish "length"), and a
call that continues the cut reply gets the rest of the same line, so a
scripted turn arrives whole however the loop splits it.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ConfigError
from appliance.llm.base import (
    Backend,
    ChatMessage,
    Completion,
    Purpose,
    StreamEvent,
    TextChunk,
    split_approximate_tokens,
)


@dataclass(frozen=True)
class ReplayTurn:
    content: str
    delay: float = 0.0
    finish_reason: str = "stop"
    prefix: str | None = None


class ReplayExhausted(ConfigError):
    """The script ran out of turns before the run ended."""


def load_replay(path: Path) -> list[ReplayTurn]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            f"cannot read replay file {path}: {exc.strerror}", "pass an existing JSONL file with --replay"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"replay file {path} is not UTF-8 text (byte {exc.start})", "save it as UTF-8") from exc
    turns = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"replay file {path} line {number} is not JSON: {exc.msg}",
                'write one {"content": "..."} object per line',
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("content"), str):
            raise ConfigError(
                f"replay file {path} line {number} has no string 'content'",
                'write one {"content": "..."} object per line',
            )
        prefix = data.get("prefix")
        if prefix is not None and not isinstance(prefix, str):
            raise ConfigError(
                f"replay file {path} line {number} has a 'prefix' that is not a string",
                "write the assistant text the line continues, or leave prefix out",
            )
        delay = data.get("delay", 0.0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
            raise ConfigError(
                f"replay file {path} line {number}: delay must be a number of seconds >= 0, got {delay!r}",
                'write "delay": 0.5, or leave it out',
            )
        turns.append(ReplayTurn(data["content"], float(delay), str(data.get("finish_reason", "stop")), prefix))
    return turns


class ReplayBackend(Backend):
    name = "replay"

    def __init__(
        self,
        turns: Sequence[ReplayTurn],
        *,
        source: str = "<script>",
        context_length: int = 262_144,
        chunk_chars: int = 16,
        start_at: int = 0,
    ) -> None:
        self.turns = list(turns)
        self.source = source
        self.model = f"replay:{Path(source).name}"
        self.context_length = context_length
        self.chunk_chars = max(1, chunk_chars)
        self.position = start_at
        # The rest of a line cut by max_tokens, and what was sent of it (a continuation gets the rest).
        self._rest: tuple[str, str] | None = None

    @classmethod
    def from_file(cls, path: Path, **kwargs: object) -> ReplayBackend:
        return cls(load_replay(path), source=str(path), **kwargs)  # type: ignore[arg-type]

    def _next_turn(self, prefix: str | None) -> ReplayTurn:
        """The next line, checked against the assistant prefix the call continues (None: a fresh reply)."""
        if self.position >= len(self.turns):
            raise ReplayExhausted(
                f"replay file {self.source} ended after {len(self.turns)} turns but the run asked for another",
                "add more lines to the replay file or lower --max-turns",
            )
        turn = self.turns[self.position]
        self.position += 1
        if turn.prefix is not None and turn.prefix != prefix:
            got = "a fresh reply" if prefix is None else f"a continuation of {prefix[:60]!r}"
            raise ConfigError(
                f"replay file {self.source} line {self.position} expects to continue {turn.prefix[:60]!r}, "
                f"but the run asked for {got}",
                "fix the line's prefix, or check the order of the scripted turns",
            )
        return turn

    def count_tokens(self, text: str) -> int:
        return len(split_approximate_tokens(text))

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        purpose: Purpose = "turn",
        cancel: threading.Event | None = None,
    ) -> Iterator[StreamEvent]:
        last = messages[-1] if messages else None
        continuing = last is not None and last.role == "assistant"
        rest, self._rest = self._rest, None
        if continuing and last is not None and rest is not None and last.content.endswith(rest[0]):
            content, turn = rest[1], self.turns[self.position - 1]
            finish_reason = turn.finish_reason
        else:
            turn = self._next_turn(last.content if continuing and last is not None else None)
            content, finish_reason = turn.content, turn.finish_reason
        tokens = split_approximate_tokens(content)
        if len(tokens) > max_tokens:  # the per-turn cap applies to scripts too
            sent_part = "".join(tokens[:max_tokens])
            self._rest = (sent_part, content[len(sent_part) :])
            content, finish_reason = sent_part, "length"
        pieces = [content[i : i + self.chunk_chars] for i in range(0, len(content), self.chunk_chars)]
        pause = turn.delay / len(pieces) if pieces and turn.delay else 0.0
        sent: list[str] = []
        for piece in pieces:
            if cancel is not None and cancel.is_set():
                break
            if pause:
                time.sleep(pause)
            sent.append(piece)
            yield TextChunk(piece)
        text = "".join(sent)
        finish = "cancelled" if len(text) < len(content) else finish_reason
        prompt_tokens = self.count_messages(messages)
        yield Completion(text, finish, prompt_tokens, self.count_tokens(text), prompt_tokens)
