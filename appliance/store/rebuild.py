"""From recorded rows back to what the loop had: a RunState to continue, or the events of a past run.

Pure functions over records, so the rules are tested without a database.
They mirror the loop's bookkeeping (appliance/agent/loop.py):

- the history holds the task, then each kept reply and its observation;
  rolled-back replies are left out, a pending one (recorded, never decided on:
  the process died right after it) is sampled again;
- the turn count is the number of kept replies; token totals count every reply
  the model produced, rolled back or not; the tool-call count and the
  duplicate-query table count every finished call, except those of a turn whose
  results never made it into the history (its calls run again);
- a boxed answer is noted when a reply enters the history, which includes replies
  later dropped after their calls (a wasted call, a full context).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.agent.events import (
    AgentEvent,
    Notice,
    ObservationAdded,
    RunFinished,
    RunStarted,
    SummaryStarted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    ToolResultOmitted,
    TurnEnded,
    TurnKind,
    TurnRolledBack,
    TurnStarted,
)
from appliance.agent.loop import RunState
from appliance.llm.base import ChatMessage
from appliance.protocol.answer import extract_boxed
from appliance.protocol.parsing import query_key
from appliance.store.records import RunRecord, Step


@dataclass(frozen=True)
class Rebuilt:
    state: RunState
    replay_position: int
    redo_calls: int


def unfinished_step(steps: Sequence[Step]) -> Step | None:
    """The last kept reply whose tool calls never produced an observation (killed or cancelled mid-call)."""
    kept = [s for s in steps if s.kept and s.reply.kind == "turn"]
    if not kept:
        return None
    last = kept[-1]
    if last.observation is None and last.calls:
        return last
    return None


def _rollback_streak(steps: Sequence[Step]) -> int:
    streak = 0
    for step in steps:
        reply = step.reply
        if reply.kind != "turn" or reply.state == "pending":
            continue
        if reply.state == "kept":
            streak = 0
        elif reply.rollback_reason != "context_full":
            streak += 1
    return streak


def rebuild_state(run: RunRecord) -> Rebuilt:
    """The RunState the loop had at the last recorded step, ready for `Agent.run`."""
    steps = run.steps
    unfinished = unfinished_step(steps)
    messages = [ChatMessage("user", run.task_message)]
    turn = 0
    intermediate: list[str] = []
    prompt_tokens = completion_tokens = 0
    replay_position = 0
    tool_calls = 0
    used_queries: dict[str, int] = {}
    for step in steps:
        reply = step.reply
        if reply.state == "pending":
            continue
        replay_position += 1
        prompt_tokens += reply.prompt_tokens or 0
        completion_tokens += reply.tokens or 0
        if step is not unfinished:
            for call in step.calls:
                if call.status == "running":
                    continue
                tool_calls += 1
                key = query_key(call.tool, call.arguments)
                if key is not None and call.status == "ok":
                    used_queries[key] = used_queries.get(key, 0) + 1
        if reply.kind != "turn":
            continue
        if reply.state == "kept" or step.calls:
            boxed = extract_boxed(reply.content)
            if boxed:
                intermediate.append(boxed)
        if reply.state == "kept":
            turn += 1
            messages.append(ChatMessage("assistant", reply.content))
            if step.observation is not None and step.observation.state == "kept":
                messages.append(ChatMessage("user", step.observation.content))

    phase, reason = "loop", None
    if run.summary_prompt is not None:
        phase, reason = "summary", run.summary_reason
    elif any(s.reply.rollback_reason == "context_full" for s in steps):
        # The last turn was dropped to make room: the loop was on its way to the summary.
        phase, reason = "summary", "context_full"
    state = RunState(
        run_id=run.run_id,
        task=run.task,
        task_message=run.task_message,
        system_prompt=run.system_prompt,
        messages=messages,
        attachments=run.attachments,
        turn=turn,
        tool_calls=tool_calls,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        used_queries=used_queries,
        intermediate_answers=intermediate,
        phase=phase,
        summary_reason=reason,
        elapsed_before=run.elapsed_s,
        resumed=True,
        rollback_streak=_rollback_streak(steps),
    )
    return Rebuilt(state, replay_position, len(unfinished.calls) if unfinished else 0)


# ---------------------------------------------------------------- replay


@dataclass(frozen=True)
class LogEntry:
    seq: int
    type: str
    message_id: int | None
    tool_call_id: int | None
    data: dict[str, Any]


def parse_data(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def replay(run: RunRecord, log: Sequence[LogEntry]) -> Iterator[AgentEvent]:
    """The recorded run as the events the loop emitted (one TextDelta per reply)."""
    replies = {s.reply.id: s.reply for s in run.steps}
    observations = {s.observation.id: s.observation for s in run.steps if s.observation is not None}
    calls = {c.id: c for s in run.steps for c in s.calls}
    prompt = run.summary_prompt
    for entry in log:
        data = entry.data
        if entry.type == "RunStarted":
            yield RunStarted(
                run_id=run.run_id,
                task=run.task,
                task_message=run.task_message,
                system_prompt=run.system_prompt,
                settings=data.get("settings") or run.settings,
                backend=data.get("backend") or run.backend_info,
                attachments=run.attachments,
                resumed=bool(data.get("resumed")),
                turn=int(data.get("turn") or 0),
                workspace=str(data.get("workspace") or run.workspace or ""),
            )
        elif entry.type == "TurnEnded" and entry.message_id in replies:
            m = replies[entry.message_id]
            kind: TurnKind = "summary" if m.kind == "summary" else "turn"
            yield TurnStarted(m.turn, kind, m.prompt_estimate or m.prompt_tokens or 0, m.attempt or 1)
            if m.content:
                yield TextDelta(m.turn, m.content)
            yield TurnEnded(
                m.turn,
                kind,
                m.content,
                m.finish_reason or "stop",
                m.prompt_tokens or 0,
                m.tokens or 0,
                m.evaluated_tokens or 0,
                m.elapsed_s or 0.0,
                m.call_count or 0,
            )
        elif entry.type == "TurnRolledBack":
            yield TurnRolledBack(
                int(data["turn"]), data.get("kind", "turn"), str(data.get("reason", "")), str(data.get("detail", ""))
            )
        elif entry.type == "ToolCallStarted" and entry.tool_call_id in calls:
            c = calls[entry.tool_call_id]
            yield ToolCallStarted(c.turn, c.index, c.server, c.tool, dict(c.arguments))
        elif entry.type == "ToolCallFinished" and entry.tool_call_id in calls:
            c = calls[entry.tool_call_id]
            result = c.result or ""
            yield ToolCallFinished(
                c.turn,
                c.index,
                c.server,
                c.tool,
                dict(c.arguments),
                result,
                c.status,
                c.duration_s or 0.0,
                c.truncated,
                c.raw_chars if c.raw_chars is not None else len(result),
            )
        elif entry.type == "ObservationAdded" and entry.message_id in observations:
            o = observations[entry.message_id]
            yield ObservationAdded(o.turn, o.content, o.tokens or 0)
        elif entry.type == "ToolResultOmitted":
            yield ToolResultOmitted(int(data["turn"]))
        elif entry.type == "SummaryStarted":
            yield SummaryStarted(
                data.get("reason", "no_tool_call"),
                prompt.content if prompt is not None else "",
                data.get("dropped"),
            )
        elif entry.type == "Notice":
            yield Notice(data.get("level", "info"), str(data.get("message", "")))
        elif entry.type == "RunFinished":
            yield RunFinished(
                run_id=run.run_id,
                status=data.get("status", run.status),
                answer=data.get("answer"),
                final_text=str(data.get("final_text") or ""),
                turns=int(data.get("turns") or 0),
                tool_calls=int(data.get("tool_calls") or 0),
                prompt_tokens=int(data.get("prompt_tokens") or 0),
                completion_tokens=int(data.get("completion_tokens") or 0),
                elapsed_s=float(data.get("elapsed_s") or 0.0),
                error=data.get("error"),
                exit_code=int(data.get("exit_code") or 0),
            )
