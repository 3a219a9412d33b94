"""From recorded rows back to what the loop had: the state to continue from, or the events of a past run.

A resumed run's state is the recorded events fed through the loop's own state
function (appliance.agent.state.advance), leaving out what was never
committed as a step: a reply not yet kept or rolled back (it is sampled
again), and the calls of a kept turn whose results never made it into the
history (they run again).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.agent.events import (
    AgentEvent,
    AttemptStarted,
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
    TurnKept,
    TurnKind,
    TurnRolledBack,
    TurnStarted,
)
from appliance.agent.state import RunState, advance, new_state
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


def rebuild_state(run: RunRecord, log: Sequence[LogEntry]) -> Rebuilt:
    """The RunState the loop had after its last committed step, ready for `Agent.run`."""
    unfinished = unfinished_step(run.steps)
    redone = {c.id for c in unfinished.calls} if unfinished else set()
    pending = {s.reply.id for s in run.steps if s.reply.state == "pending"}
    committed = [e for e in log if e.message_id not in pending and e.tool_call_id not in redone]
    state = new_state(run.run_id, run.task, run.task_message, run.system_prompt, run.attachments, run.context)
    state.parent_run, state.context_mode = run.parent_run or "", run.context_mode or ""
    for event in replay(run, committed):
        advance(state, event)
    state.elapsed_before = run.elapsed_s
    state.resumed = True
    decided = sum(1 for s in run.steps if s.reply.state != "pending")
    return Rebuilt(state, decided, len(redone))


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
    # Logs written before TurnKept existed: a turn was kept when it stayed, ran calls, or made room.
    kept_before_turn_kept = {
        s.reply.id
        for s in run.steps
        if s.reply.kind == "turn" and (s.kept or s.calls or s.reply.rollback_reason == "context_full")
    }
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
                tool_calls=int(data.get("tool_calls") or 0),
                prompt_tokens=int(data.get("prompt_tokens") or 0),
                completion_tokens=int(data.get("completion_tokens") or 0),
                workspace=str(data.get("workspace") or run.workspace or ""),
                attempt=run.attempt,
                task_root=run.task_root or "",
                parent_run=run.parent_run or "",
                context_mode=run.context_mode or "",
                context=run.context,
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
            if not data.get("kept_by_event") and m.id in kept_before_turn_kept:
                yield TurnKept(m.turn, kind)
        elif entry.type == "TurnKept" and entry.message_id in replies:
            m = replies[entry.message_id]
            yield TurnKept(m.turn, "summary" if m.kind == "summary" else "turn")
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
        elif entry.type == "AttemptStarted":
            yield AttemptStarted(int(data["number"]), int(data["total"]), int(data["failure_summaries"]))
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
                failure_summary=data.get("failure_summary"),
                attempt=run.attempt,
            )
