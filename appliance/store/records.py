"""What the history hands out: plain frozen records, no database handles.

Timestamps are ISO-8601 strings in UTC ("2026-11-26T09:45:12.345+00:00").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.agent.state import RunState
from appliance.llm.base import ChatMessage

# A reply is `pending` from the moment it is recorded until the loop decides
# whether it stands (the next event); a resumed run samples a pending one again.
MessageState = Literal["pending", "kept", "rolled_back"]
MessageKind = Literal["turn", "summary", "observation", "summary_prompt"]


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    task: str
    status: str
    answer: str | None
    started_at: str
    turns: int
    tool_calls: int
    model: str
    tags: tuple[str, ...] = ()
    finished_at: str | None = None
    elapsed_s: float = 0.0
    error: str | None = None
    parent_run: str | None = None  # a follow-up's parent

    @property
    def thread_mark(self) -> str:
        """How a follow-up shows in a list of runs: an arrow and the end of its parent's id (the part that differs)."""
        return f"↳ {self.parent_run[-6:]}: " if self.parent_run else ""


@dataclass(frozen=True)
class ArchiveLink:
    """A web-archive record (or a local document, or a gap) that a tool call read."""

    kind: str  # response | resource | local | gap
    uri: str
    warc_file: str | None = None  # a file in RUN_DIR/archive
    warc_offset: int | None = None
    record_id: str | None = None
    warc_date: str | None = None  # when it was fetched (UTC)
    status: int | None = None
    digest: str | None = None
    length: int | None = None
    origin: str | None = None  # web | page-cache | reused | archive:... (replayed) | corpus | zim
    note: str | None = None  # why there is a gap
    passage: str | None = None  # the part of the document the extractor used


@dataclass(frozen=True)
class ToolCallRecord:
    id: int
    turn: int
    index: int
    server: str
    tool: str
    arguments: dict[str, Any] = field(hash=False)
    result: str | None  # None while the call runs (or if the process died during it)
    status: str  # "running", then the call's status (ok, error, timeout, ...)
    duration_s: float | None
    truncated: bool
    raw_chars: int | None
    started_at: str
    finished_at: str | None
    archived: tuple[ArchiveLink, ...] = ()


@dataclass(frozen=True)
class MessageRecord:
    """An assistant reply, an observation (the joined tool results), or the summary prompt."""

    id: int
    seq: int
    turn: int
    kind: str  # MessageKind
    role: str
    content: str
    state: str  # MessageState
    rollback_reason: str | None = None
    rollback_detail: str | None = None
    tokens: int | None = None
    prompt_tokens: int | None = None
    prompt_estimate: int | None = None
    evaluated_tokens: int | None = None
    finish_reason: str | None = None
    elapsed_s: float | None = None
    attempt: int | None = None
    call_count: int | None = None
    omitted: bool = False  # the observation is shown to the model as the placeholder now
    dropped: bool = False  # the observation was removed before the summary turn
    reply_id: int | None = None
    created_at: str = ""


@dataclass(frozen=True)
class Step:
    """One model reply with the tool calls it made and the observation they produced."""

    reply: MessageRecord
    calls: tuple[ToolCallRecord, ...] = ()
    observation: MessageRecord | None = None

    @property
    def kept(self) -> bool:
        return self.reply.state == "kept"


@dataclass(frozen=True)
class RunRecord:
    """Everything about one run."""

    run_id: str
    task: str
    task_message: str
    system_prompt: str
    status: str
    answer: str | None
    final_text: str | None
    error: str | None
    exit_code: int | None
    profile: str | None
    model: str
    backend: str
    backend_info: dict[str, Any] = field(hash=False)
    settings: dict[str, Any] = field(hash=False)
    workspace: str | None
    attachments: tuple[str, ...]
    started_at: str
    updated_at: str
    finished_at: str | None
    elapsed_s: float
    turns: int
    tool_calls: int
    prompt_tokens: int
    completion_tokens: int
    pid: int | None
    host: str | None
    tags: tuple[str, ...]
    steps: tuple[Step, ...]
    summary_prompt: MessageRecord | None
    notices: tuple[tuple[str, str], ...]  # (level, message)
    resumes: int
    summary_reason: str | None = None
    # Attempt `attempt` of its task; task_root: the run of attempt 1 (None on that run itself).
    attempt: int = 1
    task_root: str | None = None
    # A follow-up: the run it follows, how it started (conversation | report) and the messages it started from.
    parent_run: str | None = None
    context_mode: str | None = None
    context: tuple[ChatMessage, ...] = ()

    def summary(self) -> RunSummary:
        return RunSummary(
            self.run_id,
            self.task,
            self.status,
            self.answer,
            self.started_at,
            self.turns,
            self.tool_calls,
            self.model,
            self.tags,
            self.finished_at,
            self.elapsed_s,
            self.error,
            self.parent_run,
        )

    @property
    def kept_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.kept)


@dataclass(frozen=True)
class SearchHit:
    run_id: str
    task: str
    status: str
    started_at: str
    field: str  # task | answer | tool_result
    snippet: str  # matched terms wrapped in [ ]
    turn: int | None = None
    tool: str | None = None


@dataclass(frozen=True)
class ResumeTarget:
    """A run that may resume, as its own row records it: what deciding how to resume it needs."""

    run_id: str
    settings: dict[str, Any] = field(hash=False)  # the run's settings snapshot (secrets redacted)
    workspace: str | None


@dataclass
class ResumePoint:
    """What `appliance resume` needs to continue a run where it stopped."""

    run: RunRecord
    state: RunState
    replay_position: int  # model replies already consumed (a replay script skips that many lines)
    redo_calls: int  # tool calls of an unfinished turn that will run again

    @property
    def settings(self) -> dict[str, Any]:
        """The run's settings snapshot (secrets redacted)."""
        return self.run.settings

    @property
    def workspace(self) -> str | None:
        return self.run.workspace

    @property
    def attachments(self) -> tuple[str, ...]:
        return self.run.attachments


@dataclass(frozen=True)
class PruneReport:
    run_ids: tuple[str, ...]
    bytes_before: int
    bytes_after: int
    dry_run: bool
