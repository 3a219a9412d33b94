"""A run as a ChatML trajectory (for fine-tuning) or as a readable Markdown report. Pure functions."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from appliance.agent.context import build_view, recorded_keep_rule
from appliance.llm.base import ChatMessage
from appliance.protocol.parsing import split_thinking, text_before_tool_call
from appliance.store.records import RunRecord, Step
from appliance.store.sources import run_sources

View = Literal["full", "context"]


# ---------------------------------------------------------------- ChatML


def conversation(run: RunRecord) -> list[ChatMessage]:
    """The run's final history: the task, every kept reply and observation, the summary prompt.

    An observation removed before the summary (the reference drops a trailing
    result) is left out, as the model never read it again.
    """
    messages = [ChatMessage("user", run.task_message)]
    for step in run.kept_steps:
        if step.reply.kind != "turn":
            continue
        messages.append(ChatMessage("assistant", step.reply.content))
        obs = step.observation
        if obs is not None and obs.state == "kept" and not obs.dropped:
            messages.append(ChatMessage("user", obs.content))
    if run.summary_prompt is not None:
        messages.append(ChatMessage("user", run.summary_prompt.content))
    return messages


def final_reply(run: RunRecord) -> Step | None:
    summaries = [s for s in run.kept_steps if s.reply.kind == "summary"]
    return summaries[-1] if summaries else None


def chatml(run: RunRecord, view: View = "full") -> dict[str, Any]:
    """{"messages": [system, user, assistant, ...], "metadata": {...}}, one object per run.

    view="full": every observation whole, as the reference's collected traces are.
    view="context": what the model saw when it wrote the final answer, old
    results replaced by the placeholder under the run's own keep-last rule.
    """
    messages = conversation(run)
    if view == "context":
        messages = build_view(
            messages, *recorded_keep_rule(run.settings), ends_in_summary=run.summary_prompt is not None
        )
    # A follow-up starts from its parent's conversation (or report) as recorded: the model read it first.
    messages = [*run.context, *messages]
    final = final_reply(run)
    if final is not None:
        messages.append(ChatMessage("assistant", final.reply.content))
    return {
        "messages": [{"role": "system", "content": run.system_prompt}]
        + [{"role": m.role, "content": m.content} for m in messages],
        "metadata": {
            "run_id": run.run_id,
            "task": run.task,
            "answer": run.answer,
            "status": run.status,
            "model": run.model,
            "backend": run.backend,
            "turns": run.turns,
            "tool_calls": run.tool_calls,
            "started_at": run.started_at,
            "view": view,
            # Each attempt of a task is a sample of its own; these tie the samples of one task together.
            "attempt": run.attempt,
            "task_root": run.task_root or run.run_id,
            # A follow-up's parent run, and whether it started from that run's conversation or its report.
            "parent_run": run.parent_run,
            "context_mode": run.context_mode,
        },
    }


# ---------------------------------------------------------------- Markdown


def fence(text: str, info: str = "text") -> str:
    """A fenced block that the content cannot close early, whatever backticks it holds."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}"


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n… [{len(text) - limit:,} more characters; --full shows all]"


def _step_markdown(step: Step, limit: int | None) -> list[str]:
    reply = step.reply
    out: list[str] = []
    if reply.state == "rolled_back":
        detail = f": {reply.rollback_detail}" if reply.rollback_detail else ""
        out.append(f"*Turn {reply.turn}, attempt discarded ({reply.rollback_reason}{detail}).*")
        return out
    title = "Final answer turn" if reply.kind == "summary" else f"Turn {reply.turn}"
    out.append(f"### {title}")
    thinking, rest = split_thinking(reply.content)
    said = text_before_tool_call(rest)
    if thinking:
        out += ["**Thinking**", fence(_cut(thinking, limit))]
    if said:
        out += ["**Reply**" if reply.kind == "summary" else "**Said**", fence(_cut(said, limit))]
    for call in step.calls:
        meta = f"{call.status}"
        if call.duration_s is not None:
            meta += f", {call.duration_s:.1f} s"
        if call.truncated:
            meta += ", truncated"
        out += [
            f"**Tool call** `{call.server}` / `{call.tool}`",
            fence(json.dumps(call.arguments, ensure_ascii=False, indent=2), "json"),
            f"**Result** ({meta})",
            fence(_cut(call.result if call.result is not None else "(no result: the call did not finish)", limit)),
        ]
    if step.observation is not None and step.observation.omitted:
        out.append("*(These results were later shown to the model as “Tool result is omitted to save tokens.”)*")
    return out


def markdown_report(run: RunRecord, *, limit: int | None = 2000, include_discarded: bool = True) -> str:
    """Task, each step, sources and answer, with the exact text (code fences contain it).

    The text is untrusted: a face that prints it to a terminal passes it through textutil.for_terminal.
    """
    lines = [f"# Run {run.run_id}", ""]
    facts = [
        f"- **Status:** {run.status}" + (f" ({run.error})" if run.error else ""),
        f"- **Model:** {run.model or '?'} ({run.backend or '?'})",
        f"- **Started:** {run.started_at}" + (f", finished {run.finished_at}" if run.finished_at else ""),
        f"- **Turns:** {run.turns}, **tool calls:** {run.tool_calls}, "
        f"**tokens:** {run.prompt_tokens:,} prompt / {run.completion_tokens:,} completion, "
        f"**time:** {run.elapsed_s:.1f} s",
    ]
    if run.parent_run:
        started = run.context_mode or "conversation"
        facts.append(f"- **Follow-up of:** run {run.parent_run} (started from its {started})")
    if run.resumes:
        facts.append(f"- **Resumed:** {run.resumes} time(s)")
    if run.tags:
        facts.append(f"- **Tags:** {', '.join(run.tags)}")
    if run.workspace:
        facts.append(f"- **Workspace:** `{run.workspace}`")
    for path in run.attachments:
        facts.append(f"- **Attachment:** `{path}`")
    lines += [*facts, "", "## Task", "", fence(run.task), "", "## Steps", ""]
    for step in run.steps:
        if step.reply.state == "pending" or (step.reply.state == "rolled_back" and not include_discarded):
            continue
        lines += [*_step_markdown(step, limit), ""]
    found = run_sources(run)
    lines += ["## Sources", ""]
    lines += [f"- <{source.url}>" for source in found] if found else ["(none recorded)"]
    lines += ["", "## Answer", ""]
    lines.append(fence(run.answer) if run.answer else "(no answer)")
    for level, message in run.notices:
        if level in ("warning", "error"):
            lines += ["", f"> {level}: {message.splitlines()[0] if message else ''}"]
    return "\n".join(lines) + "\n"
