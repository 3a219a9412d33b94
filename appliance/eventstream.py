"""`--json-events`: a run as one JSON object per line, written as it goes, for scripts.

Each line has a `type` and stable field names (docs/json-events.md lists them).
The model's text arrives in many small deltas; they are batched into one
`text_delta` line per `TEXT_BATCH_S` seconds (or per turn's end) so a script
is not flooded. The last line is `run_finished`, whose `result` is exactly the
object `--json` prints. Untrusted text (the task, the model's text, tool
results) goes through `safe_json`, so a terminal showing the stream obeys none of it.

A consumer that closes the pipe early (`| head -n 3`) cancels the run: it
ends at the next safe point and is saved as interrupted, ready to resume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TextIO

from appliance.agent.events import (
    AgentEvent,
    AttemptStarted,
    Notice,
    ReplyContinued,
    RunStarted,
    SummaryStarted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnEnded,
    TurnKept,
    TurnRolledBack,
    TurnStarted,
)
from appliance.textutil import safe_json

TEXT_BATCH_S = 0.1
RESULT_PREVIEW_CHARS = 300


def event_record(event: AgentEvent) -> dict[str, Any] | None:
    """The line an event becomes (without batching), or None for events scripts do not need."""
    if isinstance(event, RunStarted):
        return {
            "type": "run_started",
            "run_id": event.run_id,
            "task": event.task,
            "resumed": event.resumed,
            "turn": event.turn,
            "backend": event.backend,
            "attachments": list(event.attachments),
            # A follow-up (`appliance ask`): the run it follows and how it started; null otherwise.
            "parent_run": event.parent_run or None,
            "context_mode": event.context_mode or None,
        }
    if isinstance(event, AttemptStarted):
        # The task starts again as a new run (its run_started follows), after this many failure summaries.
        return {
            "type": "attempt_started",
            "attempt": event.number,
            "attempts": event.total,
            "failure_summaries": event.failure_summaries,
        }
    if isinstance(event, TurnStarted):
        return {
            "type": "turn_started",
            "turn": event.turn,
            "kind": event.kind,
            "attempt": event.attempt,
            "prompt_tokens": event.prompt_tokens,
        }
    if isinstance(event, TextDelta):
        return {"type": "text_delta", "turn": event.turn, "text": event.text}
    if isinstance(event, ReplyContinued):
        return {
            "type": "reply_continued",
            "turn": event.turn,
            "kind": event.kind,
            "round": event.round,
            "generated_tokens": event.generated_tokens,
            "max_tokens": event.max_tokens,
        }
    if isinstance(event, TurnEnded):
        return {
            "type": "turn_ended",
            "turn": event.turn,
            "kind": event.kind,
            "finish_reason": event.finish_reason,
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": event.completion_tokens,
            "evaluated_tokens": event.evaluated_tokens,
            "elapsed_s": round(event.elapsed_s, 3),
            "tool_calls": event.tool_calls,
        }
    if isinstance(event, TurnKept):
        return {"type": "turn_kept", "turn": event.turn, "kind": event.kind}
    if isinstance(event, TurnRolledBack):
        return {
            "type": "turn_rolled_back",
            "turn": event.turn,
            "kind": event.kind,
            "reason": event.reason,
            "detail": event.detail,
        }
    if isinstance(event, ToolCallStarted):
        return {
            "type": "tool_call_started",
            "turn": event.turn,
            "index": event.index,
            "server": event.server,
            "tool": event.tool,
            "arguments": event.arguments,
        }
    if isinstance(event, ToolCallFinished):
        return {
            "type": "tool_call_finished",
            "turn": event.turn,
            "index": event.index,
            "server": event.server,
            "tool": event.tool,
            "status": event.status,
            "duration_s": round(event.duration_s, 3),
            "truncated": event.truncated,
            "raw_chars": event.raw_chars,
            "result_preview": event.result[:RESULT_PREVIEW_CHARS],
        }
    if isinstance(event, SummaryStarted):
        return {"type": "summary_started", "reason": event.reason}
    if isinstance(event, Notice) and event.level != "debug":
        return {"type": "notice", "level": event.level, "message": event.message}
    return None  # RunFinished is written by `finish`, with the sources only the finished report knows


def finished_record(result: dict[str, Any]) -> dict[str, Any]:
    """The last line: `result` is the object `--json` prints."""
    return {"type": "run_finished", "result": result}


class JsonEventStream:
    """A subscriber writing `event_record` lines to `stream`, text deltas batched per turn."""

    def __init__(
        self, stream: TextIO, *, cancel: Callable[[], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream
        self.closed = False
        self._cancel = cancel
        self._clock = clock
        self._text: list[str] = []
        self._text_turn = 0
        self._text_since = 0.0

    def __call__(self, event: AgentEvent) -> None:
        if isinstance(event, TextDelta):
            if self._text and event.turn != self._text_turn:
                self._flush_text()
            if not self._text:
                self._text_turn, self._text_since = event.turn, self._clock()
            self._text.append(event.text)
            if self._clock() - self._text_since >= TEXT_BATCH_S:
                self._flush_text()
            return
        self._flush_text()
        record = event_record(event)
        if record is not None:
            self._write(record)

    def finish(self, result: dict[str, Any]) -> None:
        self._flush_text()
        self._write(finished_record(result))

    def _flush_text(self) -> None:
        if self._text:
            text, self._text = "".join(self._text), []
            self._write({"type": "text_delta", "turn": self._text_turn, "text": text})

    def _write(self, record: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.stream.write(safe_json(record) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            # The reader is gone: stop the run cleanly (saved as interrupted) and write nothing more;
            # stdout now points at /dev/null so the interpreter's last flush cannot fail either.
            self.closed = True
            self._cancel()
            _silence(self.stream)


def _silence(stream: TextIO) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (a test's buffer): nothing left to protect
        pass
