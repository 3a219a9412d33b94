"""What the loop reports, as small frozen dataclasses.

The loop is a generator of these events. The store, the TUI and the headless
printer subscribe to them; none of them reaches into the loop. The order within
one turn is: TurnStarted, TextDelta* (ReplyContinued, TextDelta*)*, TurnEnded, then either TurnRolledBack
(the reply is discarded and sampled again) or TurnKept and, for each call,
ToolCallStarted/ToolCallFinished, then ObservationAdded and ToolResultOmitted*.
Each event is also what moves the run's state (appliance.agent.state.advance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.llm.base import ChatMessage

# failure_summary: the reply that sums up a failed attempt for the next one (agent/attempts.py).
TurnKind = Literal["turn", "summary", "failure_summary"]
RunStatus = Literal["answered", "no_answer", "error", "interrupted"]


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    task: str
    task_message: str
    system_prompt: str
    settings: dict[str, Any] = field(hash=False)
    backend: dict[str, Any] = field(hash=False)
    attachments: tuple[str, ...] = ()
    resumed: bool = False
    turn: int = 0
    workspace: str = ""  # the sandbox home on the host (--workspace or the run's own)
    # Where a resumed run starts from (its state's counters); all 0 for a new run.
    tool_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Attempt `attempt` of its task, whose first attempt is run `task_root` ("" for attempt 1).
    attempt: int = 1
    task_root: str = ""
    # A follow-up of run `parent_run`, starting from its conversation or its report (`context_mode`);
    # `context` is what the model sees between the system prompt and the task message.
    parent_run: str = ""
    context_mode: str = ""
    context: tuple[ChatMessage, ...] = ()


@dataclass(frozen=True)
class TurnStarted:
    turn: int
    kind: TurnKind
    prompt_tokens: int
    attempt: int = 1


@dataclass(frozen=True)
class TextDelta:
    turn: int
    text: str


@dataclass(frozen=True)
class TurnEnded:
    """An assistant reply, complete. It may still be rolled back (TurnRolledBack)."""

    turn: int
    kind: TurnKind
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    evaluated_tokens: int
    elapsed_s: float
    tool_calls: int


@dataclass(frozen=True)
class TurnKept:
    """The reply of `turn` stands: it enters the history (a turn's calls run next).

    A kept turn may still leave later with its results (TurnRolledBack: a wasted
    call, a full context). The final answer's reply is kept by RunFinished.
    """

    turn: int
    kind: TurnKind


@dataclass(frozen=True)
class TurnRolledBack:
    """The reply of `turn` (and any results it produced) left the history.

    Reasons: format, refusal, bad_arguments, duplicate, repetition, empty,
    tool_error, empty_search (sampled again); context_full (the last turn is
    dropped to make room for the summary); no_boxed (summary sampled again);
    repetition_resend (the reference's call-level resend of a reply whose last
    50 characters recur more than 5 times: sent again at once, on any kind of
    turn, without counting against the loop's rollbacks).
    """

    turn: int
    kind: TurnKind
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ReplyContinued:
    """The reply so far was cut by max_tokens and is continued where it stopped.

    The tokens already generated stay in the prompt (and the KV cache), so they
    are not paid for again. `generated_tokens` is the reply's length so far,
    `max_tokens` what the continuation may add.
    """

    turn: int
    kind: TurnKind
    round: int
    generated_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class ToolCallStarted:
    turn: int
    index: int
    server: str
    tool: str
    arguments: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class ToolCallFinished:
    turn: int
    index: int
    server: str
    tool: str
    arguments: dict[str, Any] = field(hash=False)
    result: str  # exactly what the model reads (after truncation)
    status: str
    duration_s: float
    truncated: bool
    raw_chars: int
    # The web archive records the call read (tools.archive.RecordRef.as_dict()), gaps included.
    archived: tuple[dict[str, Any], ...] = field(default=(), hash=False)


@dataclass(frozen=True)
class ObservationAdded:
    """The user message that carries the turn's tool results into the history."""

    turn: int
    content: str
    tokens: int


@dataclass(frozen=True)
class ToolResultOmitted:
    """The results of `turn` were replaced by the placeholder in the model's context."""

    turn: int


@dataclass(frozen=True)
class SummaryStarted:
    reason: Literal["no_tool_call", "max_turns", "context_full", "rollbacks", "resumed"]
    prompt: str
    dropped_observation_of_turn: int | None = None


@dataclass(frozen=True)
class Notice:
    # "debug" (an internal error's traceback) is recorded but shown only with --debug.
    level: Literal["debug", "info", "warning", "error"]
    message: str


@dataclass(frozen=True)
class AttemptStarted:
    """A run that is attempt `number` (> 1) of its task began, with this many failure summaries in its task."""

    number: int
    total: int
    failure_summaries: int

    @property
    def line(self) -> str:
        """'attempt 2/6: starting again with 1 failure summary'."""
        count = self.failure_summaries
        summaries = "no failure summary" if count == 0 else f"{count} failure summar{'y' if count == 1 else 'ies'}"
        return f"attempt {self.number}/{self.total}: starting again with {summaries}"


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    status: RunStatus
    answer: str | None
    final_text: str
    turns: int
    tool_calls: int
    prompt_tokens: int
    completion_tokens: int
    elapsed_s: float
    error: str | None = None
    exit_code: int = 0
    # A run of a task's attempt that ended without an answer: what it tells the next attempt
    # (agent/attempts.py); None when none was asked for or none came.
    failure_summary: str | None = None
    attempt: int = 1  # the attempt of its task this run was

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "answer": self.answer,
            "turns": self.turns,
            "tool_calls": self.tool_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "elapsed_s": round(self.elapsed_s, 3),
        }


AgentEvent = (
    RunStarted
    | TurnStarted
    | TextDelta
    | TurnEnded
    | TurnKept
    | TurnRolledBack
    | ReplyContinued
    | ToolCallStarted
    | ToolCallFinished
    | ObservationAdded
    | ToolResultOmitted
    | SummaryStarted
    | Notice
    | AttemptStarted
    | RunFinished
)
