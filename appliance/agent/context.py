"""Which tool results the model still sees: pure functions over the history."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from appliance.llm.base import ChatMessage

OMITTED = "Tool result is omitted to save tokens."


def kept_result_positions(
    messages: Sequence[ChatMessage], keep_last: int, mode: str = "exact", block: int = 0
) -> set[int]:
    """Indices of user messages after the first (tool results) still shown in full.

    "exact" is the reference's rule: the last `keep_last` user messages after the
    task are kept, every older one is replaced by the placeholder (so the kept
    window slides by one each turn). -1 keeps everything. The summary prompt is
    a user message too and takes one of the K places, as in the reference.

    "blocks" keeps the prompt prefix stable for a prefix-caching engine: results
    are dropped `block` at a time (default 2K), so between K and K+block-1 stay
    visible and old results change to the placeholder only once per block of
    turns; everything before that point stays byte-identical, so the engine
    evaluates only the new tokens on the other turns.

    "shift" shows exactly what "exact" shows; the llama.cpp backend splices the
    evicted result out of its KV cache instead (appliance.llm.kvshift).
    """
    user_positions = [i for i, m in enumerate(messages) if m.role == "user"]
    results = user_positions[1:]
    if keep_last < 0:
        return set(results)
    if keep_last == 0:
        return set()
    if mode == "blocks":
        # Evict whole blocks: with n results, drop the largest multiple of the
        # block size that still leaves at least K kept.
        # 2K by default: measured over 100 turns it evaluates >3x fewer prompt
        # tokens than exact last-K, where blocks of K reach about 2.6x (bench/RESULTS.md).
        size = block if block > 0 else 2 * keep_last
        dropped = ((len(results) - keep_last) // size) * size if len(results) > keep_last else 0
        return set(results[dropped:])
    return set(results[-keep_last:])


def build_view(
    messages: Sequence[ChatMessage],
    keep_last: int,
    mode: str = "exact",
    block: int = 0,
    *,
    ends_in_summary: bool = False,
) -> list[ChatMessage]:
    """The history as the model will see it: old tool results replaced by the placeholder.

    `ends_in_summary`: the last message is the summary prompt, which the model
    always reads, whatever K is (with --keep-last 0 it would be the only user
    message after the task to be hidden, and the summary would answer nothing).
    """
    kept = kept_result_positions(messages, keep_last, mode, block)
    if ends_in_summary and messages:
        kept.add(len(messages) - 1)
    first_user = next((i for i, m in enumerate(messages) if m.role == "user"), -1)
    view = []
    for i, message in enumerate(messages):
        if message.role == "user" and i != first_user and i not in kept:
            view.append(ChatMessage("user", OMITTED))
        else:
            view.append(message)
    return view


def run_view(
    system_prompt: str,
    context: Sequence[ChatMessage],
    messages: Sequence[ChatMessage],
    keep_rule: tuple[int, str, int],
    *,
    in_summary: bool = False,
) -> list[ChatMessage]:
    """What the model sees on a call: the system prompt, a follow-up's starting context, the run's own view.

    `context` (a follow-up's parent conversation, as the model last saw it) is
    shown as recorded: it was trimmed when it was made, and keeping it
    byte-identical keeps the parent's KV prefix. `in_summary`: the run is in its
    summary phase (its last user message, if any, is the summary prompt).
    """
    history = build_view(
        messages, *keep_rule, ends_in_summary=in_summary and bool(messages) and messages[-1].role == "user"
    )
    return [ChatMessage("system", system_prompt), *context, *history]


def last_seen_conversation(
    system_prompt: str,
    context: Sequence[ChatMessage],
    messages: Sequence[ChatMessage],
    keep_rule: tuple[int, str, int],
    *,
    in_summary: bool,
) -> list[ChatMessage]:
    """A finished run's conversation as the model last saw it: the view of its last call, then its reply."""
    if messages and messages[-1].role == "assistant":
        return [*run_view(system_prompt, context, messages[:-1], keep_rule, in_summary=in_summary), messages[-1]]
    return run_view(system_prompt, context, messages, keep_rule, in_summary=in_summary)


def recorded_keep_rule(settings: Mapping[str, Any]) -> tuple[int, str, int]:
    """(keep_last, eviction, eviction_block) of a run, from the settings recorded with it.

    Runs recorded before a key existed get its default.
    """
    agent = settings.get("agent")
    agent = agent if isinstance(agent, Mapping) else {}
    return int(agent.get("keep_last", 5)), str(agent.get("eviction", "exact")), int(agent.get("eviction_block", 0))
