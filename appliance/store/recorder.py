"""The store as a subscriber of the loop's events: each step is committed before the loop goes on.

A subscriber is called between two steps of the loop (the loop is a generator
and waits for every subscriber), so committing inside the call is what makes a
killed process resume from the last completed step. One event is one
transaction; TextDelta, TurnStarted and ReplyContinued are not written on
their own (the reply's text, its attempt number and its continuations arrive
with TurnEnded).

A reply is recorded `pending` and decided by the event after it: rolled back
(TurnRolledBack) or kept (TurnKept). The decision comes microseconds later, so
a process killed in between loses only the bookkeeping, and the resumed run
samples that reply again. The events log is what a resume rebuilds the run's
state from (store.rebuild), through the loop's own state function; the run's
running counters (turns, tool calls, tokens) come from that function too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.agent.context import kept_result_positions, recorded_keep_rule
from appliance.agent.events import (
    AgentEvent,
    AttemptStarted,
    Notice,
    ObservationAdded,
    ReplyContinued,
    RunFinished,
    RunStarted,
    SummaryStarted,
    ToolCallFinished,
    ToolCallStarted,
    ToolResultOmitted,
    TurnEnded,
    TurnKept,
    TurnRolledBack,
    TurnStarted,
)
from appliance.agent.state import RunState, advance, new_state
from appliance.llm.base import ChatMessage
from appliance.policy import Standing, host_name, process_start, redact, redact_url, redacted_snapshot, standing
from appliance.store.db import (
    RunNotFound,
    StoreError,
    StoreUsageError,
    describe_error,
    now_iso,
    write_transaction,
)

if TYPE_CHECKING:
    from appliance.store.history import History


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C until the step is committed, then deliver it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


@dataclass
class _Reply:
    id: int
    turn: int
    kind: str
    pending: bool


class Recorder:
    """Call it with every event of one run (a new run or a resumed one)."""

    def __init__(self, history: History) -> None:
        self._history = history
        self._db = history.db
        self.run_id: str | None = None
        self._seq = 0
        self._clock_start = time.monotonic()
        self._elapsed_before = 0.0
        self._reply: _Reply | None = None
        self._calls: dict[int, int] = {}
        self._results: dict[int, str] = {}
        self._turn_started: TurnStarted | None = None
        # Continuations of the reply being generated: written with its TurnEnded, so
        # they share its fate (a resumed run that discards the reply discards them too).
        self._continued: list[ReplyContinued] = []
        # The run's counters, moved by the loop's own state function (not counted again here).
        self._state: RunState | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            RunStarted: self._run_started,
            TurnEnded: self._turn_ended,
            TurnKept: self._turn_kept,
            TurnRolledBack: self._turn_rolled_back,
            ToolCallStarted: self._tool_call_started,
            ToolCallFinished: self._tool_call_finished,
            ObservationAdded: self._observation_added,
            ToolResultOmitted: self._tool_result_omitted,
            SummaryStarted: self._summary_started,
            Notice: self._notice,
            AttemptStarted: self._attempt_started,
            RunFinished: self._run_finished,
        }

    def __call__(self, event: AgentEvent) -> None:
        handler = self._handlers.get(type(event))
        if handler is None:
            if isinstance(event, TurnStarted):
                self._turn_started = event
                self._continued = []
            elif isinstance(event, ReplyContinued):
                self._continued.append(event)
            return
        if self.run_id is None and not isinstance(event, RunStarted):
            return
        with deferred_interrupt(), self._history.lock:
            try:
                with write_transaction(self._db):
                    handler(event)
                    if self._state is not None:
                        advance(self._state, event)
                    self._touch()
            except sqlite3.Error as exc:
                raise describe_error(self._history.path, exc) from exc

    # ------------------------------------------------------------ helpers

    def _execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self._db.conn.execute(sql, params)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _log(
        self,
        kind: str,
        seq: int | None = None,
        *,
        message_id: int | None = None,
        tool_call_id: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self._execute(
            "INSERT INTO events (run_id, seq, type, message_id, tool_call_id, data, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self.run_id,
                seq if seq is not None else self._next_seq(),
                kind,
                message_id,
                tool_call_id,
                dumps(data) if data else None,
                now_iso(),
            ),
        )

    def _elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._clock_start

    def _touch(self) -> None:
        state = self._state
        if state is None:
            return
        self._execute(
            "UPDATE runs SET updated_at = ?, elapsed_s = ?, turns = ?, tool_calls = ?, prompt_tokens = ?, "
            "completion_tokens = ? WHERE run_id = ?",
            (
                now_iso(),
                round(self._elapsed(), 3),
                state.turn,
                state.tool_calls,
                state.prompt_tokens,
                state.completion_tokens,
                self.run_id,
            ),
        )

    def _decide_pending(self) -> None:
        """The event after a reply arrived and was not a rollback: the reply stands."""
        reply = self._reply
        if reply is None or not reply.pending:
            return
        self._execute("UPDATE messages SET state = 'kept' WHERE id = ?", (reply.id,))
        reply.pending = False

    def _last_kept_reply(self, turn: int | None = None, kind: str = "turn") -> _Reply | None:
        sql = "SELECT id, turn FROM messages WHERE run_id = ? AND kind = ? AND state = 'kept'"
        params: list[Any] = [self.run_id, kind]
        if turn is not None:
            sql += " AND turn = ?"
            params.append(turn)
        row = self._execute(sql + " ORDER BY seq DESC LIMIT 1", params).fetchone()
        return _Reply(row[0], row[1], kind, False) if row else None

    # ------------------------------------------------------------ run start

    def _run_started(self, e: RunStarted) -> None:
        self.run_id = e.run_id
        # A resumed run's counters start where its state does (the rows of what runs again are discarded).
        self._state = new_state(e.run_id, e.task, e.task_message, e.system_prompt, e.attachments, e.context)
        self._state.turn, self._state.tool_calls = e.turn, e.tool_calls
        self._state.prompt_tokens, self._state.completion_tokens = e.prompt_tokens, e.completion_tokens
        self._clock_start = time.monotonic()
        self._elapsed_before = 0.0
        self._reply, self._calls, self._results = None, {}, {}
        if e.resumed:
            self._resume(e)
            return
        now = now_iso()
        pid = os.getpid()
        backend = redact(e.backend).value
        settings = redacted_snapshot(e.settings)
        try:
            self._execute(
                "INSERT INTO runs (run_id, task, task_message, system_prompt, status, profile, model, backend, "
                "backend_info, settings, workspace, attachments, started_at, updated_at, pid, process_start, host, "
                "task_root, attempt, parent_run, context_mode, context) "
                "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    e.run_id,
                    e.task,
                    e.task_message,
                    e.system_prompt,
                    settings.get("profile"),
                    str(backend.get("model") or ""),
                    str(backend.get("backend") or ""),
                    dumps(backend),
                    dumps(settings),
                    e.workspace or None,
                    dumps(list(e.attachments)),
                    now,
                    now,
                    pid,
                    process_start(pid),
                    host_name(),
                    e.task_root or None,
                    e.attempt,
                    e.parent_run or None,
                    e.context_mode or None,
                    dumps([{"role": m.role, "content": m.content} for m in e.context]) if e.parent_run else None,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreError(
                f"a run with id {e.run_id} is already recorded", "resume it with `appliance resume`, or start a new run"
            ) from exc
        self._seq = 0
        self._log("RunStarted", data={"resumed": False, "turn": e.turn, "workspace": e.workspace})

    def _resume(self, e: RunStarted) -> None:
        row = self._execute(
            "SELECT status, pid, process_start, host, elapsed_s FROM runs WHERE run_id = ?", (e.run_id,)
        ).fetchone()
        if row is None:
            raise RunNotFound(f"no recorded run {e.run_id} to resume", "list runs with `appliance history list`")
        status, pid, start, host, elapsed = row
        where = standing(status, pid, start, host)
        if where is Standing.LIVE and pid != os.getpid():
            raise StoreUsageError(
                f"run {e.run_id} is still running (pid {pid} on {host})", "wait for it to finish or stop that process"
            )
        if where is Standing.FINISHED:
            raise StoreUsageError(f"run {e.run_id} already finished ({status})", "start a new run with --task")
        discarded, redone = self._discard_unfinished()
        self._seq = self._execute("SELECT coalesce(max(seq), 0) FROM events WHERE run_id = ?", (e.run_id,)).fetchone()[
            0
        ]
        self._elapsed_before = float(elapsed or 0.0)
        me = os.getpid()
        self._execute(
            "UPDATE runs SET status = 'running', pid = ?, process_start = ?, host = ?, settings = ?, "
            "backend_info = ?, model = ?, backend = ?, error = NULL, exit_code = NULL, finished_at = NULL "
            "WHERE run_id = ?",
            (
                me,
                process_start(me),
                host_name(),
                dumps(redacted_snapshot(e.settings)),
                dumps(redact(e.backend).value),
                str(e.backend.get("model") or ""),
                str(e.backend.get("backend") or ""),
                e.run_id,
            ),
        )
        self._log(
            "RunStarted",
            data={
                "resumed": True,
                "turn": e.turn,
                "tool_calls": e.tool_calls,
                "prompt_tokens": e.prompt_tokens,
                "completion_tokens": e.completion_tokens,
                "workspace": e.workspace,
                "settings": redacted_snapshot(e.settings),
                "backend": redact(e.backend).value,
                "discarded_replies": discarded,
                "redone_calls": redone,
                "pid": me,
                "host": host_name(),
            },
        )
        self._mark_missed_omissions(e.settings)

    def _discard_unfinished(self) -> tuple[int, int]:
        """Drop what the resumed loop will do again: undecided replies, and the calls of a turn without results.

        Returns (replies discarded, calls discarded). Afterwards the database
        holds each completed step once, and the re-run calls attach to their reply.
        """
        run_id = self.run_id
        pending = [
            r[0] for r in self._execute("SELECT id FROM messages WHERE run_id = ? AND state = 'pending'", (run_id,))
        ]
        for reply_id in pending:
            self._delete_calls_of(reply_id)
            self._execute("DELETE FROM events WHERE run_id = ? AND message_id = ?", (run_id, reply_id))
            self._execute("DELETE FROM messages WHERE id = ? OR reply_id = ?", (reply_id, reply_id))
        redone = 0
        last = self._last_kept_reply()
        if last is not None:
            has_observation = self._execute(
                "SELECT 1 FROM messages WHERE reply_id = ? AND kind = 'observation'", (last.id,)
            ).fetchone()
            has_summary = self._execute(
                "SELECT 1 FROM messages WHERE run_id = ? AND kind = 'summary_prompt' AND state = 'kept'", (run_id,)
            ).fetchone()
            if not has_observation and not has_summary:
                redone = self._delete_calls_of(last.id)
                self._reply = last
        return len(pending), redone

    def _mark_missed_omissions(self, settings: dict[str, Any]) -> None:
        """Results the loop had just hidden when the process died (it reports them once, right after a turn)."""
        rows = self._execute(
            "SELECT kind, turn, omitted FROM messages WHERE run_id = ? AND state = 'kept' "
            "AND kind IN ('turn', 'observation') ORDER BY seq",
            (self.run_id,),
        ).fetchall()
        roles = [ChatMessage("user", "")] + [
            ChatMessage("user" if kind == "observation" else "assistant", "") for kind, _, _ in rows
        ]
        shown = kept_result_positions(roles, *recorded_keep_rule(settings))
        for position, (kind, turn, omitted) in enumerate(rows, start=1):
            if kind == "observation" and not omitted and position not in shown:
                self._tool_result_omitted(ToolResultOmitted(turn))

    def _delete_calls_of(self, reply_id: int) -> int:
        ids = [r[0] for r in self._execute("SELECT id FROM tool_calls WHERE reply_id = ?", (reply_id,))]
        for call_id in ids:
            self._execute("DELETE FROM events WHERE run_id = ? AND tool_call_id = ?", (self.run_id, call_id))
            self._execute("DELETE FROM archive_records WHERE run_id = ? AND tool_call_id = ?", (self.run_id, call_id))
            self._execute("DELETE FROM tool_calls WHERE id = ?", (call_id,))
        return len(ids)

    # ------------------------------------------------------------ steps

    def _turn_ended(self, e: TurnEnded) -> None:
        self._decide_pending()
        started = self._turn_started
        if started is not None and (started.turn, started.kind) != (e.turn, e.kind):
            started = None
        seq = self._next_seq()
        cursor = self._execute(
            "INSERT INTO messages (run_id, seq, turn, kind, role, content, state, tokens, prompt_tokens, "
            "prompt_estimate, evaluated_tokens, finish_reason, elapsed_s, attempt, call_count, created_at) "
            "VALUES (?, ?, ?, ?, 'assistant', ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.run_id,
                seq,
                e.turn,
                e.kind,
                e.content,
                e.completion_tokens,
                e.prompt_tokens,
                started.prompt_tokens if started else None,
                e.evaluated_tokens,
                e.finish_reason,
                e.elapsed_s,
                started.attempt if started else None,
                e.tool_calls,
                now_iso(),
            ),
        )
        reply_id = int(cursor.lastrowid or 0)
        self._reply = _Reply(reply_id, e.turn, e.kind, pending=True)
        self._calls, self._results = {}, {}
        # Its keeping is logged as an event of its own (TurnKept); runs recorded before that have no mark.
        self._log("TurnEnded", seq, message_id=reply_id, data={"kept_by_event": True})
        for continued in self._continued:
            if (continued.turn, continued.kind) == (e.turn, e.kind):
                self._log(
                    "ReplyContinued",
                    message_id=reply_id,
                    data={"round": continued.round, "generated_tokens": continued.generated_tokens,
                          "max_tokens": continued.max_tokens},
                )  # fmt: skip
        self._continued = []

    def _turn_kept(self, e: TurnKept) -> None:
        reply = self._reply
        self._decide_pending()
        self._log("TurnKept", message_id=reply.id if reply is not None else None, data={"turn": e.turn, "kind": e.kind})

    def _turn_rolled_back(self, e: TurnRolledBack) -> None:
        reply = self._reply
        if reply is None or (reply.turn, reply.kind) != (e.turn, e.kind):
            reply = self._last_kept_reply(e.turn, e.kind)
        if reply is not None:
            self._execute(
                "UPDATE messages SET state = 'rolled_back', rollback_reason = ?, rollback_detail = ? "
                "WHERE id = ? OR (reply_id = ? AND kind = 'observation')",
                (e.reason, e.detail, reply.id, reply.id),
            )
        self._reply = None
        self._log(
            "TurnRolledBack",
            message_id=reply.id if reply else None,
            data={"turn": e.turn, "kind": e.kind, "reason": e.reason, "detail": e.detail},
        )

    def _tool_call_started(self, e: ToolCallStarted) -> None:
        self._decide_pending()
        if self._reply is None or self._reply.turn != e.turn:
            self._reply = self._last_kept_reply(e.turn)
            self._calls, self._results = {}, {}
        if self._reply is None:
            raise StoreError(f"a tool call of turn {e.turn} arrived without its reply", "report this as a bug")
        seq = self._next_seq()
        cursor = self._execute(
            "INSERT INTO tool_calls (run_id, reply_id, turn, idx, server, tool, arguments, status, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
            (
                self.run_id,
                self._reply.id,
                e.turn,
                e.index,
                e.server,
                e.tool,
                dumps(redact(e.arguments).value),
                now_iso(),
            ),
        )
        call_id = int(cursor.lastrowid or 0)
        self._calls[e.index] = call_id
        self._log("ToolCallStarted", seq, tool_call_id=call_id)

    def _tool_call_finished(self, e: ToolCallFinished) -> None:
        call_id = self._calls.get(e.index)
        if call_id is None:
            self._tool_call_started(ToolCallStarted(e.turn, e.index, e.server, e.tool, e.arguments))
            call_id = self._calls[e.index]
        self._execute(
            "UPDATE tool_calls SET result = ?, status = ?, duration_s = ?, truncated = ?, raw_chars = ?, "
            "finished_at = ? WHERE id = ?",
            (e.result, e.status, e.duration_s, int(e.truncated), e.raw_chars, now_iso(), call_id),
        )
        self._results[e.index] = e.result
        for ref in e.archived:
            self._execute(
                "INSERT INTO archive_records (run_id, tool_call_id, kind, uri, warc_file, warc_offset, record_id, "
                "warc_date, status, digest, length, origin, note, passage) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.run_id,
                    call_id,
                    str(ref.get("kind", "")),
                    redact_url(str(ref.get("uri", ""))),
                    ref.get("file"),
                    ref.get("offset"),
                    ref.get("record_id"),
                    ref.get("date"),
                    ref.get("status"),
                    ref.get("digest"),
                    ref.get("length"),
                    ref.get("origin"),
                    ref.get("note"),
                    ref.get("passage"),
                ),
            )
        self._log("ToolCallFinished", tool_call_id=call_id)

    def _observation_added(self, e: ObservationAdded) -> None:
        reply = self._reply or self._last_kept_reply(e.turn)
        complete = sorted(self._results) == sorted(self._calls)
        joined = "\n".join(self._results[i] for i in sorted(self._results))
        # The observation is the joined results, stored once in tool_calls (NULL here says so).
        content = None if complete and joined == e.content else e.content
        seq = self._next_seq()
        cursor = self._execute(
            "INSERT INTO messages (run_id, seq, turn, kind, role, reply_id, content, state, tokens, created_at) "
            "VALUES (?, ?, ?, 'observation', 'user', ?, ?, 'kept', ?, ?)",
            (self.run_id, seq, e.turn, reply.id if reply else None, content, e.tokens, now_iso()),
        )
        self._log("ObservationAdded", seq, message_id=int(cursor.lastrowid or 0))

    def _tool_result_omitted(self, e: ToolResultOmitted) -> None:
        self._execute(
            "UPDATE messages SET omitted = 1 WHERE run_id = ? AND kind = 'observation' AND state = 'kept' AND turn = ?",
            (self.run_id, e.turn),
        )
        self._log("ToolResultOmitted", data={"turn": e.turn})

    def _summary_started(self, e: SummaryStarted) -> None:
        self._decide_pending()
        self._reply = None
        if e.dropped_observation_of_turn is not None:
            self._execute(
                "UPDATE messages SET dropped = 1 "
                "WHERE run_id = ? AND kind = 'observation' AND state = 'kept' AND turn = ?",
                (self.run_id, e.dropped_observation_of_turn),
            )
        exists = self._execute(
            "SELECT 1 FROM messages WHERE run_id = ? AND kind = 'summary_prompt' AND state = 'kept'", (self.run_id,)
        ).fetchone()
        if exists:
            return  # a resumed run asking again for the summary it had asked for
        turns = self._execute(
            "SELECT count(*) FROM messages WHERE run_id = ? AND kind = 'turn' AND state = 'kept'", (self.run_id,)
        ).fetchone()[0]
        seq = self._next_seq()
        cursor = self._execute(
            "INSERT INTO messages (run_id, seq, turn, kind, role, content, state, created_at) "
            "VALUES (?, ?, ?, 'summary_prompt', 'user', ?, 'kept', ?)",
            (self.run_id, seq, turns, e.prompt, now_iso()),
        )
        self._log(
            "SummaryStarted",
            seq,
            message_id=int(cursor.lastrowid or 0),
            data={"reason": e.reason, "dropped": e.dropped_observation_of_turn},
        )

    def _notice(self, e: Notice) -> None:
        self._log("Notice", data={"level": e.level, "message": e.message})

    def _attempt_started(self, e: AttemptStarted) -> None:
        self._log(
            "AttemptStarted", data={"number": e.number, "total": e.total, "failure_summaries": e.failure_summaries}
        )

    def _run_finished(self, e: RunFinished) -> None:
        self._decide_pending()
        if self._state is not None:  # the loop's final totals stand
            self._state.turn, self._state.tool_calls = e.turns, e.tool_calls
            self._state.prompt_tokens, self._state.completion_tokens = e.prompt_tokens, e.completion_tokens
        self._execute(
            "UPDATE runs SET status = ?, answer = ?, final_text = ?, error = ?, exit_code = ?, turns = ?, "
            "tool_calls = ?, prompt_tokens = ?, completion_tokens = ?, elapsed_s = ?, finished_at = ? WHERE run_id = ?",
            (
                e.status,
                e.answer,
                e.final_text,
                e.error,
                e.exit_code,
                e.turns,
                e.tool_calls,
                e.prompt_tokens,
                e.completion_tokens,
                round(e.elapsed_s, 3),
                now_iso(),
                self.run_id,
            ),
        )
        self._elapsed_before = e.elapsed_s
        self._clock_start = time.monotonic()
        data = e.as_json()
        data.update(
            {
                "final_text": e.final_text,
                "error": e.error,
                "exit_code": e.exit_code,
                "failure_summary": e.failure_summary,
            }
        )
        self._log("RunFinished", data=data)
