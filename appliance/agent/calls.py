"""One model call as the reference makes it: continued when cut, sent again when it repeats itself.

The reference's client (src/llm/providers/openai_client.py) takes up to 10
tries per call: a reply cut by max_tokens is asked again with 10% more tokens,
and a reply of 50+ characters whose last 50 characters occur more than 5 times
is sent again; the last try is accepted as it is. Here a cut reply is
*continued* where it stopped instead (its tokens stay in the prompt and the KV
cache: the distribution of a sample with a larger limit, without paying for
the tokens twice), up to the reference's largest limit (max_tokens x 1.1^9)
or until the context cannot hold more. A cut reply that already repeats
itself is sent again, as the reference would discard it anyway.

This applies to every call: turns, the summary and the failure summary. The
loop's own rollback of a repetitive reply (agent/loop.py) comes after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass

from appliance.agent.events import (
    AgentEvent,
    Notice,
    ReplyContinued,
    TextDelta,
    TurnEnded,
    TurnKind,
    TurnRolledBack,
    TurnStarted,
)
from appliance.errors import ApplianceError
from appliance.llm.base import Backend, ChatMessage, Completion, Purpose, TextChunk
from appliance.protocol.parsing import is_degenerate

# The reference's tries per call (length and repetition share them).
CALL_TRIES = 10
# Its largest max_tokens: the first limit grown by 10% on each of the 9 retries.
LENGTH_GROWTH = 1.1**9
# A continuation that cannot add at least this many tokens is not worth a call.
_MIN_CONTINUATION = 16


class RunCancelled(Exception):
    """The user asked the run to stop."""


@dataclass(frozen=True)
class Reply:
    """The accepted reply of one call (after continuations and resends)."""

    text: str  # what the model generated (without the assistant prefix it continued)
    finish_reason: str
    prompt_tokens: int  # of the first request of the accepted reply
    completion_tokens: int
    evaluated_tokens: int
    elapsed: float
    continued: int  # continuation rounds of the accepted reply
    # Everything the call cost, resent replies included.
    spent_prompt_tokens: int
    spent_completion_tokens: int


def reply_limit(max_tokens: int) -> int:
    """The most tokens one reply may reach by continuation: the reference's last retry's limit."""
    return int(max_tokens * LENGTH_GROWTH)


def reply_ended(turn: int, kind: TurnKind, reply: Reply, content: str, tool_calls: int) -> TurnEnded:
    """The TurnEnded of a reply; `content` is what the history keeps (the loop fixes server names)."""
    return TurnEnded(
        turn,
        kind,
        content,
        reply.finish_reason,
        reply.prompt_tokens,
        reply.completion_tokens,
        reply.evaluated_tokens,
        reply.elapsed,
        tool_calls,
    )


def call_model(
    backend: Backend,
    view: Sequence[ChatMessage],
    *,
    turn: int,
    kind: TurnKind,
    prompt_tokens: int,
    max_tokens: int,
    purpose: Purpose,
    cancel: threading.Event | None = None,
    prefix: str = "",
    attempt: int = 1,
) -> Generator[AgentEvent, None, Reply]:
    """Yield TurnStarted, TextDelta*, ReplyContinued* for the accepted reply (and TurnEnded +
    TurnRolledBack("repetition_resend") for each reply sent again); return the accepted reply.

    `prefix` is an assistant message the model continues (the failure summary's
    think block); the text returned and checked for repetition is what follows it.
    The caller yields the accepted reply's TurnEnded.
    """
    spent_prompt = spent_completion = 0
    for number in range(1, CALL_TRIES + 1):
        yield TurnStarted(turn, kind, prompt_tokens, attempt)
        reply = yield from _continued_reply(backend, view, turn, kind, max_tokens, purpose, cancel, prefix)
        spent_prompt += reply.prompt_tokens
        spent_completion += reply.completion_tokens
        if is_degenerate(reply.text) and number < CALL_TRIES:
            yield reply_ended(turn, kind, reply, reply.text, 0)
            yield TurnRolledBack(
                turn,
                kind,
                "repetition_resend",
                f"the last 50 characters recur more than 5 times; sent again (try {number + 1}/{CALL_TRIES})",
            )
            continue
        return Reply(
            reply.text,
            reply.finish_reason,
            reply.prompt_tokens,
            reply.completion_tokens,
            reply.evaluated_tokens,
            reply.elapsed,
            reply.continued,
            spent_prompt,
            spent_completion,
        )
    raise AssertionError("unreachable: the last try is always accepted")


def _continued_reply(
    backend: Backend,
    view: Sequence[ChatMessage],
    turn: int,
    kind: TurnKind,
    max_tokens: int,
    purpose: Purpose,
    cancel: threading.Event | None,
    prefix: str,
) -> Generator[AgentEvent, None, Reply]:
    started = time.monotonic()
    limit = reply_limit(max_tokens)
    text = ""
    first: Completion | None = None
    generated = evaluated = rounds = 0
    request_tokens = max_tokens
    while True:
        messages = list(view)
        if prefix or text:
            messages.append(ChatMessage("assistant", prefix + text))
        completion = yield from _stream(backend, messages, turn, request_tokens, purpose, cancel)
        first = first or completion
        text += completion.text
        generated += completion.completion_tokens
        evaluated += completion.evaluated_tokens
        room = backend.context_length - (completion.prompt_tokens + completion.completion_tokens)
        request_tokens = min(limit - generated, room)
        if (
            completion.finish_reason != "length"
            or is_degenerate(text)
            or request_tokens < _MIN_CONTINUATION
            or rounds >= CALL_TRIES - 1
        ):
            break
        rounds += 1
        yield ReplyContinued(turn, kind, rounds, generated, request_tokens)
    return Reply(
        text,
        completion.finish_reason,
        first.prompt_tokens,
        generated,
        evaluated,
        time.monotonic() - started,
        rounds,
        first.prompt_tokens,
        generated,
    )


def _stream(
    backend: Backend,
    messages: Sequence[ChatMessage],
    turn: int,
    max_tokens: int,
    purpose: Purpose,
    cancel: threading.Event | None,
) -> Generator[AgentEvent, None, Completion]:
    completion: Completion | None = None
    for event in backend.stream_chat(messages, max_tokens=max(1, max_tokens), purpose=purpose, cancel=cancel):
        if isinstance(event, TextChunk):
            if event.text:
                yield TextDelta(turn, event.text)
        else:
            completion = event
    if cancel is not None and cancel.is_set():
        raise RunCancelled()
    if completion is None:
        raise ApplianceError(f"the {backend.name} backend returned no completion", "check the model server")
    if completion.kv_shift_fallback:
        yield Notice(
            "warning", f"turn {turn}: the KV cache after the shift did not match the prompt; it was evaluated again"
        )
    return completion
