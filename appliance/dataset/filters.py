"""The paper's trajectory filters, as pure functions over a recorded run.

MiroThinker's SFT data was strictly filtered (repetition, duplicate replies and
calls, incorrect tool invocations, truncated runs); its DPO pairs drop
pathological successes from the chosen side and trivial failures from the
rejected side. Each filter here looks at what the model kept (rolled-back
replies never reached the context) and returns why it rejects a run, or None.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Literal

from appliance.protocol.parsing import has_mcp_tags, is_degenerate, parse_tool_calls
from appliance.store.records import RunRecord, ToolCallRecord

Score = Literal["correct", "incorrect"]
# Which part of the dataset a filter guards: the SFT file, or one side of a DPO pair.
Side = Literal["sft", "chosen", "rejected"]
SIDES: tuple[Side, ...] = ("sft", "chosen", "rejected")

# A reply with fewer word n-grams than this is too short for a repeat ratio to mean anything.
MIN_NGRAMS = 20
# Call statuses that are not failures: a refused duplicate is a redundant action, not an error.
_NOT_FAILED = frozenset({"ok", "duplicate"})
_INVALID_CALL = frozenset({"unknown_tool", "unknown_server", "bad_arguments"})
_UNFINISHED = frozenset({"interrupted", "error", "running"})
_OUT_OF_BUDGET = frozenset({"max_turns", "context_full"})


@dataclass(frozen=True)
class Thresholds:
    """The filters' knobs (each is a `appliance dataset build` option of the same name)."""

    ngram_size: int = 4
    max_ngram_repeat: float = 0.5
    max_same_reply: int = 1
    max_same_call: int = 1
    max_error_streak: int = 3
    action_loop: int = 3


@dataclass(frozen=True)
class Candidate:
    """A run with the score it got (from an eval or a user's label), if any."""

    run: RunRecord
    score: Score | None = None
    source: str | None = None  # "label", or "eval NAME"


Check = Callable[[Candidate, Thresholds], "str | None"]


@dataclass(frozen=True)
class TrajectoryFilter:
    name: str
    description: str
    sides: frozenset[Side]
    thresholds: tuple[str, ...]  # the Thresholds fields it reads
    check: Check


# ------------------------------------------------------------------ what the model kept


def kept_turns(run: RunRecord) -> list[str]:
    return [s.reply.content for s in run.kept_steps if s.reply.kind == "turn"]


def kept_calls(run: RunRecord) -> list[ToolCallRecord]:
    return [call for step in run.kept_steps for call in step.calls]


def call_key(call: ToolCallRecord) -> str:
    return f"{call.server}/{call.tool} {json.dumps(call.arguments, sort_keys=True, ensure_ascii=False)}"


def ngram_repeat_ratio(text: str, n: int) -> float:
    """The share of a text's word n-grams that repeat an earlier one (0 for short texts)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < MIN_NGRAMS:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def longest_error_streak(calls: list[ToolCallRecord]) -> int:
    longest = current = 0
    for call in calls:
        current = 0 if call.status in _NOT_FAILED else current + 1
        longest = max(longest, current)
    return longest


def _most_repeated(keys: list[str]) -> tuple[str, int]:
    if not keys:
        return "", 0
    key, count = Counter(keys).most_common(1)[0]
    return key, count


def _short(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _unparseable_reply(run: RunRecord) -> str | None:
    """A kept reply with tool-call tags and no call the loop could parse (its recorded count, else parsed again)."""
    for step in run.kept_steps:
        text = step.reply.content
        if step.reply.kind != "turn" or not has_mcp_tags(text):
            continue
        calls = step.reply.call_count if step.reply.call_count is not None else len(parse_tool_calls(text))
        if calls == 0:
            return text
    return None


# ------------------------------------------------------------------ the checks


def unfinished(c: Candidate, t: Thresholds) -> str | None:
    if c.run.status in _UNFINISHED:
        return f"the run is {c.run.status}"
    return None


def no_answer(c: Candidate, t: Thresholds) -> str | None:
    return "the run ended without a \\boxed{} answer" if c.run.status == "no_answer" else None


def truncated(c: Candidate, t: Thresholds) -> str | None:
    for step in c.run.kept_steps:
        if step.reply.finish_reason == "length":
            return f"turn {step.reply.turn} was cut by the token limit"
    if c.run.summary_reason in _OUT_OF_BUDGET:
        return f"the run stopped early ({c.run.summary_reason.replace('_', ' ')})"
    return None


def repetition(c: Candidate, t: Thresholds) -> str | None:
    for step in c.run.kept_steps:
        text = step.reply.content
        if is_degenerate(text):
            return f"turn {step.reply.turn} repeats its last 50 characters more than 5 times"
        ratio = ngram_repeat_ratio(text, t.ngram_size)
        if ratio > t.max_ngram_repeat:
            return f"turn {step.reply.turn} repeats {ratio:.0%} of its {t.ngram_size}-grams"
    return None


def duplicate_reply(c: Candidate, t: Thresholds) -> str | None:
    text, count = _most_repeated([" ".join(reply.split()) for reply in kept_turns(c.run)])
    if count > t.max_same_reply:
        return f"the same reply {count} times: {_short(text)}"
    return None


def duplicate_call(c: Candidate, t: Thresholds) -> str | None:
    key, count = _most_repeated([call_key(call) for call in kept_calls(c.run)])
    if count > t.max_same_call:
        return f"the same call {count} times: {_short(key)}"
    return None


def bad_calls(c: Candidate, t: Thresholds) -> str | None:
    calls = kept_calls(c.run)
    for call in calls:
        if call.status in _INVALID_CALL:
            return f"turn {call.turn}: {call.status.replace('_', ' ')} ({call.server}/{call.tool})"
    if _unparseable_reply(c.run) is not None:
        return "a reply has tool-call tags but no parseable call"
    if calls and all(call.status not in _NOT_FAILED for call in calls):
        return f"all {len(calls)} tool call(s) failed"
    return None


def incorrect(c: Candidate, t: Thresholds) -> str | None:
    return "the answer was scored incorrect" if c.score == "incorrect" else None


def pathological_success(c: Candidate, t: Thresholds) -> str | None:
    calls = kept_calls(c.run)
    streak = longest_error_streak(calls)
    if streak >= t.max_error_streak:
        return f"{streak} failed calls in a row"
    key, count = _most_repeated([call_key(call) for call in calls])
    if count > t.max_same_call:
        return f"a redundant action repeated {count} times: {_short(key)}"
    return None


def trivial_failure(c: Candidate, t: Thresholds) -> str | None:
    if c.run.status == "no_answer":
        return "format error: no \\boxed{} answer"
    if c.run.summary_reason == "rollbacks" or _unparseable_reply(c.run) is not None:
        return "format error: a reply the loop could not use"
    key, count = _most_repeated([call_key(call) for call in kept_calls(c.run)])
    if count >= t.action_loop:
        return f"action loop: the same call {count} times: {_short(key)}"
    return None


def _filter(name: str, description: str, sides: tuple[Side, ...], check: Check, *thresholds: str) -> TrajectoryFilter:
    return TrajectoryFilter(name, description, frozenset(sides), thresholds, check)


# In the order they are reported. duplicate_trajectory is applied last, by the
# builder, over the SFT trajectories that passed every other filter.
FILTERS: tuple[TrajectoryFilter, ...] = (
    _filter("unfinished", "interrupted, failed or still running", ("sft", "chosen", "rejected"), unfinished),
    _filter("no_answer", "ended without a \\boxed{} answer", ("sft",), no_answer),
    _filter("truncated", "a reply cut by the token limit, or out of turns or context", ("sft", "chosen"), truncated),
    _filter(
        "repetition",
        "a reply that repeats itself (the loop's test, n-gram repeat ratio)",
        ("sft",),
        repetition,
        "ngram_size",
        "max_ngram_repeat",
    ),
    _filter("duplicate_reply", "the same reply text repeated", ("sft",), duplicate_reply, "max_same_reply"),
    _filter("duplicate_call", "the same tool call repeated", ("sft",), duplicate_call, "max_same_call"),
    _filter(
        "bad_calls", "unparseable calls, unknown tools, invalid arguments, or every call failed", ("sft",), bad_calls
    ),
    _filter("incorrect", "the answer was scored incorrect", ("sft",), incorrect),
    _filter(
        "pathological_success",
        "a correct run with an error streak or a redundant repeated action",
        ("chosen",),
        pathological_success,
        "max_error_streak",
        "max_same_call",
    ),
    _filter(
        "trivial_failure",
        "a wrong run that failed on format (no answer, unusable replies) or in an action loop",
        ("rejected",),
        trivial_failure,
        "action_loop",
    ),
)
DUPLICATE_TRAJECTORY = "duplicate_trajectory"
FILTER_NAMES: tuple[str, ...] = (*(f.name for f in FILTERS), DUPLICATE_TRAJECTORY)


def filters_for(side: Side, disabled: frozenset[str] = frozenset()) -> Iterator[TrajectoryFilter]:
    return (f for f in FILTERS if side in f.sides and f.name not in disabled)


def threshold_values(f: TrajectoryFilter, thresholds: Thresholds) -> dict[str, float]:
    values = {field.name: getattr(thresholds, field.name) for field in fields(thresholds)}
    return {name: values[name] for name in f.thresholds}
