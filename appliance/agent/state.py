"""A run's state, and the one function that moves it: `advance(state, event)`.

The loop changes its state only here, by the events it reports (Agent.run
feeds each event through `advance` before anyone sees it), and a resumed run
gets its state by feeding the recorded events through the same function. So
a field added to RunState is kept up to date in one place, and the state a
resume starts from is, field for field, the state the live run had after its
last committed step.

`advance` is deterministic and does no I/O; it changes `state` in place (the
loop's generators hold the one state object while they yield).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from appliance.agent.events import (
    AgentEvent,
    ObservationAdded,
    RunFinished,
    SummaryStarted,
    ToolCallFinished,
    TurnEnded,
    TurnKept,
    TurnRolledBack,
)
from appliance.llm.base import ChatMessage
from appliance.protocol.answer import extract_boxed
from appliance.protocol.parsing import query_key


@dataclass
class RunState:
    """Everything needed to continue a run."""

    run_id: str
    task: str
    task_message: str
    system_prompt: str
    messages: list[ChatMessage]
    attachments: tuple[str, ...] = ()
    turn: int = 0
    tool_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    used_queries: dict[str, int] = field(default_factory=dict)
    intermediate_answers: list[str] = field(default_factory=list)
    phase: str = "loop"  # loop | summary
    summary_reason: str | None = None
    elapsed_before: float = 0.0
    resumed: bool = False
    # Replies discarded in a row just before this point: a resumed run keeps the same rollback budget.
    rollback_streak: int = 0
    # A reply that has arrived (TurnEnded) and is not yet kept or rolled back.
    pending_reply: str | None = None
    # This run is attempt `attempt` of `attempts_total` of its task (agent/attempts.py);
    # 1 of 1 is a task without attempts: today's single run.
    attempt: int = 1
    attempts_total: int = 1
    # The run of attempt 1 of this task ("" for attempt 1 itself): the history links attempts by it.
    task_root: str = ""
    # A follow-up (agent/followup.py) starts from its parent's conversation as the model last saw it:
    # shown before `messages` exactly as recorded, never trimmed again (last-K applies to this run's own results).
    context: list[ChatMessage] = field(default_factory=list)
    parent_run: str = ""  # the run this one follows up ("" for a task of its own)
    context_mode: str = ""  # "conversation" | "report" for a follow-up


def new_state(
    run_id: str,
    task: str,
    task_message: str,
    system_prompt: str,
    attachments: tuple[str, ...] = (),
    context: Sequence[ChatMessage] = (),
) -> RunState:
    return RunState(
        run_id=run_id,
        task=task,
        task_message=task_message,
        system_prompt=system_prompt,
        messages=[ChatMessage("user", task_message)],
        attachments=attachments,
        context=list(context),
    )


def advance(state: RunState, event: AgentEvent) -> None:
    """Apply one event of the loop to the run's state."""
    if isinstance(event, TurnEnded):
        # Every reply the model produced counts, whether it stays or not.
        state.prompt_tokens += event.prompt_tokens
        state.completion_tokens += event.completion_tokens
        if event.kind != "failure_summary":  # kept beside the run (RunFinished), never in its conversation
            state.pending_reply = event.content
    elif isinstance(event, TurnKept):
        _keep(state, event)
    elif isinstance(event, TurnRolledBack) and event.kind != "failure_summary":
        _roll_back(state, event)
    elif isinstance(event, ToolCallFinished):
        state.tool_calls += 1
        key = query_key(event.tool, event.arguments)
        if key is not None and event.status == "ok":
            state.used_queries[key] = state.used_queries.get(key, 0) + 1
    elif isinstance(event, ObservationAdded):
        state.messages.append(ChatMessage("user", event.content))
        state.rollback_streak = 0
    elif isinstance(event, SummaryStarted):
        _start_summary(state, event)
    elif isinstance(event, RunFinished) and state.pending_reply is not None:
        # The final answer's reply stands when the run ends with it (a kill before that samples it again).
        _keep(state, TurnKept(state.turn + 1, "summary"))


def _keep(state: RunState, event: TurnKept) -> None:
    text = state.pending_reply or ""
    state.pending_reply = None
    state.messages.append(ChatMessage("assistant", text))
    if event.kind == "turn":
        state.turn = event.turn
        boxed = extract_boxed(text)
        if boxed:
            state.intermediate_answers.append(boxed)


def _roll_back(state: RunState, event: TurnRolledBack) -> None:
    if state.pending_reply is not None:
        # Discarded as it arrived: it never entered the history.
        state.pending_reply = None
    elif event.kind == "turn":
        # A kept turn leaves the history with its results: the turn-th reply and all after it.
        replies = [i for i, m in enumerate(state.messages) if m.role == "assistant"]
        if 0 < event.turn <= len(replies):
            del state.messages[replies[event.turn - 1] :]
        state.turn = event.turn - 1
    if event.kind == "turn":
        if event.reason == "context_full":
            # The turn made room for the summary: the loop is on its way there.
            state.summary_reason = "context_full"
        elif event.reason != "repetition_resend":  # a call's own resend is not one of the loop's rollbacks
            state.rollback_streak += 1


def _start_summary(state: RunState, event: SummaryStarted) -> None:
    if state.phase == "summary":
        return  # a resumed run asking again for the summary it had asked for
    if event.dropped_observation_of_turn is not None and len(state.messages) > 1 and state.messages[-1].role == "user":
        state.messages.pop()
    state.phase = "summary"
    state.summary_reason = event.reason
    state.messages.append(ChatMessage("user", event.prompt))
