"""The history of runs: record, list, read, search, replay, resume, tag, delete, prune."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from appliance.agent.events import AgentEvent
from appliance.llm.base import ChatMessage
from appliance.policy import STATUSES, RunStatus, Standing, standing
from appliance.store.db import (
    RunNotFound,
    StoreError,
    StoreUsageError,
    connect,
    describe_error,
    mark_dead_runs,
    write_transaction,
)
from appliance.store.prune import choose_and_delete, compact
from appliance.store.rebuild import LogEntry, parse_data, rebuild_state, replay
from appliance.store.recorder import Recorder
from appliance.store.records import (
    ArchiveLink,
    MessageRecord,
    PruneReport,
    ResumePoint,
    ResumeTarget,
    RunRecord,
    RunSummary,
    SearchHit,
    Step,
    ToolCallRecord,
)

# Snippet markers: control characters, so text that contains brackets cannot fake a match.
_MARK_OPEN, _MARK_CLOSE = "\x02", "\x03"


def open_history(path: Path | str, *, create: bool = True) -> History:
    """Open the history database at `path`, applying migrations.

    Raises StoreError for a file that is corrupt, from a newer version, not a
    history, or cannot be opened; such a file is left untouched.
    """
    path = Path(path).expanduser()
    return History(connect(path, create=create), path)


def fts_query(text: str) -> str:
    """Plain words to an FTS5 query: every word must match; a trailing * keeps prefix search."""
    terms = []
    for word in text.split():
        prefix = word.endswith("*") and len(word) > 1
        word = word.rstrip("*") if prefix else word
        if not word:
            continue
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    return " ".join(terms)


def _snippet(text: str | None) -> str:
    return (text or "").replace(_MARK_OPEN, "[").replace(_MARK_CLOSE, "]")


class History:
    """One open history database. Safe to share between threads (calls are serialised)."""

    def __init__(self, db: Database, path: Path) -> None:
        self.db = db
        self.path = path
        self.lock = threading.RLock()
        self._guarded(lambda: mark_dead_runs(self.db))

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _guarded(self, action: Any) -> Any:
        with self.lock:
            try:
                return action()
            except sqlite3.Error as exc:
                raise describe_error(self.path, exc) from exc

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.db.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # ------------------------------------------------------------ recording

    def recorder(self) -> Recorder:
        """A subscriber for one run's events; every step is committed before it returns."""
        return Recorder(self)

    # ------------------------------------------------------------ reading

    def resolve(self, run_id: str) -> str:
        """An exact run id, or a prefix that names exactly one run."""

        def find() -> str:
            if self.db.conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                return run_id
            escaped = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            matches = [
                r[0]
                for r in self.db.conn.execute(
                    "SELECT run_id FROM runs WHERE run_id LIKE ? ESCAPE '\\' ORDER BY started_at DESC LIMIT 6",
                    (escaped + "%",),
                )
            ]
            if len(matches) == 1 and run_id:
                return str(matches[0])
            if len(matches) > 1 and run_id:
                raise RunNotFound(
                    f"run id {run_id!r} is ambiguous: it starts {', '.join(matches[:5])}", "give more characters"
                )
            raise RunNotFound(f"no run {run_id!r} in {self.path}", "list runs with `appliance history list`")

        result: str = self._guarded(find)
        return result

    def list_runs(self, limit: int = 50, status: str | None = None, tag: str | None = None) -> list[RunSummary]:
        if status is not None and status not in STATUSES:
            raise StoreUsageError(f"unknown status {status!r}", f"use one of: {', '.join(STATUSES)}")

        def query() -> list[RunSummary]:
            mark_dead_runs(self.db)
            where, params = [], []
            if status is not None:
                where.append("status = ?")
                params.append(status)
            if tag is not None:
                where.append("run_id IN (SELECT run_id FROM tags WHERE tag = ?)")
                params.append(tag)
            sql = (
                "SELECT run_id, task, status, answer, started_at, turns, tool_calls, model, finished_at, elapsed_s, "
                "error, parent_run, "
                "(SELECT group_concat(tag, char(31)) FROM tags t WHERE t.run_id = runs.run_id) AS tags "
                "FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY started_at DESC, id DESC"
            )
            if limit > 0:
                sql += f" LIMIT {int(limit)}"
            return [
                RunSummary(
                    r["run_id"],
                    r["task"],
                    r["status"],
                    r["answer"],
                    r["started_at"],
                    r["turns"],
                    r["tool_calls"],
                    r["model"] or "",
                    tuple(sorted(r["tags"].split("\x1f"))) if r["tags"] else (),
                    r["finished_at"],
                    r["elapsed_s"] or 0.0,
                    r["error"],
                    r["parent_run"],
                )
                for r in self._rows(sql, params)
            ]

        result: list[RunSummary] = self._guarded(query)
        return result

    def recent_tasks(self, limit: int = 200) -> list[str]:
        """The tasks of past runs, newest first, each once (the TUI's prompt recall)."""

        def query() -> list[str]:
            rows = self.db.conn.execute(
                "SELECT task FROM runs GROUP BY task ORDER BY MAX(started_at) DESC, MAX(id) DESC LIMIT ?",
                (max(0, int(limit)),),
            ).fetchall()
            return [str(row[0]) for row in rows]

        result: list[str] = self._guarded(query)
        return result

    def latest_finished(self) -> str:
        """The run id of the latest run that finished (answered or not): what `--continue` follows up."""

        def query() -> str | None:
            row = self.db.conn.execute(
                "SELECT run_id FROM runs WHERE status IN (?, ?) ORDER BY started_at DESC, id DESC LIMIT 1",
                (RunStatus.ANSWERED.value, RunStatus.NO_ANSWER.value),
            ).fetchone()
            return str(row[0]) if row else None

        found: str | None = self._guarded(query)
        if found is None:
            raise StoreUsageError(f"no finished run to continue in {self.path}", 'start one with --task "..."')
        return found

    def get_run(self, run_id: str) -> RunRecord:
        run_id = self.resolve(run_id)

        def load() -> RunRecord:
            mark_dead_runs(self.db)
            return self._load(run_id)

        result: RunRecord = self._guarded(load)
        return result

    def _load(self, run_id: str) -> RunRecord:
        runs = self._rows("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not runs:
            raise RunNotFound(f"no run {run_id!r} in {self.path}", "list runs with `appliance history list`")
        r = runs[0]
        links: dict[int, list[ArchiveLink]] = {}
        for a in self._rows("SELECT * FROM archive_records WHERE run_id = ? ORDER BY id", (run_id,)):
            links.setdefault(a["tool_call_id"], []).append(
                ArchiveLink(**{k: a[k] for k in ArchiveLink.__dataclass_fields__})
            )
        calls_by_reply: dict[int, list[ToolCallRecord]] = {}
        for c in self._rows("SELECT * FROM tool_calls WHERE run_id = ? ORDER BY reply_id, idx, id", (run_id,)):
            calls_by_reply.setdefault(c["reply_id"], []).append(
                ToolCallRecord(
                    c["id"],
                    c["turn"],
                    c["idx"],
                    c["server"],
                    c["tool"],
                    json.loads(c["arguments"]),
                    c["result"],
                    c["status"],
                    c["duration_s"],
                    bool(c["truncated"]),
                    c["raw_chars"],
                    c["started_at"],
                    c["finished_at"],
                    tuple(links.get(c["id"], ())),
                )
            )
        messages = self._rows("SELECT * FROM messages WHERE run_id = ? ORDER BY seq", (run_id,))
        observations: dict[int, dict[str, Any]] = {m["reply_id"]: m for m in messages if m["kind"] == "observation"}
        steps: list[Step] = []
        summary_prompt: MessageRecord | None = None
        for m in messages:
            if m["kind"] == "summary_prompt":
                summary_prompt = _message(m, m["content"] or "")
            if m["kind"] not in ("turn", "summary"):
                continue
            calls = tuple(calls_by_reply.get(m["id"], ()))
            obs_row = observations.get(m["id"])
            observation = None
            if obs_row is not None:
                content = obs_row["content"]
                if content is None:
                    content = "\n".join(c.result or "" for c in calls)
                observation = _message(obs_row, content)
            steps.append(Step(_message(m, m["content"] or ""), calls, observation))
        notices: list[tuple[str, str]] = []
        resumes = 0
        summary_reason = None
        for e in self._rows(
            "SELECT type, data FROM events WHERE run_id = ? AND type IN ('Notice', 'RunStarted', 'SummaryStarted') "
            "ORDER BY seq",
            (run_id,),
        ):
            data = parse_data(e["data"])
            if e["type"] == "Notice":
                notices.append((str(data.get("level", "info")), str(data.get("message", ""))))
            elif e["type"] == "RunStarted" and data.get("resumed"):
                resumes += 1
            elif e["type"] == "SummaryStarted":
                summary_reason = data.get("reason")
        tags = tuple(
            t[0] for t in self.db.conn.execute("SELECT tag FROM tags WHERE run_id = ? ORDER BY tag", (run_id,))
        )
        return RunRecord(
            run_id=r["run_id"],
            task=r["task"],
            task_message=r["task_message"],
            system_prompt=r["system_prompt"],
            status=r["status"],
            answer=r["answer"],
            final_text=r["final_text"],
            error=r["error"],
            exit_code=r["exit_code"],
            profile=r["profile"],
            model=r["model"] or "",
            backend=r["backend"] or "",
            backend_info=parse_data(r["backend_info"]),
            settings=parse_data(r["settings"]),
            workspace=r["workspace"],
            attachments=tuple(json.loads(r["attachments"] or "[]")),
            started_at=r["started_at"],
            updated_at=r["updated_at"],
            finished_at=r["finished_at"],
            elapsed_s=r["elapsed_s"] or 0.0,
            turns=r["turns"],
            tool_calls=r["tool_calls"],
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            pid=r["pid"],
            host=r["host"],
            tags=tags,
            steps=tuple(steps),
            summary_prompt=summary_prompt,
            notices=tuple(notices),
            resumes=resumes,
            summary_reason=summary_reason,
            attempt=r["attempt"],
            task_root=r["task_root"],
            parent_run=r["parent_run"],
            context_mode=r["context_mode"],
            context=_context_messages(r["context"]),
        )

    def task_attempts(self, run_id: str) -> list[RunRecord]:
        """Every attempt of the task `run_id` belongs to, in order (the run alone when it had no others)."""
        run = self.get_run(run_id)
        root = run.task_root or run.run_id

        def ids() -> list[str]:
            rows = self._rows(
                "SELECT run_id FROM runs WHERE run_id = ? OR task_root = ? ORDER BY attempt, id", (root, root)
            )
            return [r["run_id"] for r in rows]

        found: list[str] = self._guarded(ids)
        return [run if i == run.run_id else self.get_run(i) for i in found]

    def thread(self, run_id: str) -> list[RunRecord]:
        """The follow-up chain that ends at `run_id`: the first question's run first, then each follow-up.

        Each earlier element is the run its successor follows (a task's final attempt). A parent
        deleted since ends the chain there.
        """
        run = self.get_run(run_id)
        chain = [run]
        seen = {run.run_id}
        while chain[0].parent_run and chain[0].parent_run not in seen:
            try:
                parent = self.get_run(chain[0].parent_run)
            except RunNotFound:
                break
            seen.add(parent.run_id)
            chain.insert(0, parent)
        return chain

    def failure_summaries(self, task_root: str, before: int) -> list[str]:
        """The failure summaries the attempts of a task left before attempt `before`, in order."""

        def read() -> list[str]:
            rows = self._rows(
                "SELECT e.data FROM runs r JOIN events e ON e.run_id = r.run_id AND e.type = 'RunFinished' "
                "WHERE (r.run_id = ? OR r.task_root = ?) AND r.attempt < ? ORDER BY r.attempt, e.seq",
                (task_root, task_root, before),
            )
            return [summary for row in rows if (summary := _recorded_failure_summary(row["data"]))]

        result: list[str] = self._guarded(read)
        return result

    def replies_before(self, task_root: str, before: int) -> int:
        """The model replies the attempts of a task made before attempt `before` (a replay script's lines)."""

        def count() -> int:
            rows = self._rows(
                "SELECT count(*) AS n FROM messages m JOIN runs r ON r.run_id = m.run_id "
                "WHERE (r.run_id = ? OR r.task_root = ?) AND r.attempt < ? "
                "AND m.kind IN ('turn', 'summary', 'failure_summary') AND m.state != 'pending'",
                (task_root, task_root, before),
            )
            return int(rows[0]["n"])

        result: int = self._guarded(count)
        return result

    def search(self, query: str, limit: int = 20, *, raw: bool = False) -> list[SearchHit]:
        """Full-text search over tasks, answers and tool results (arguments too). Best matches first.

        Plain words must all match (a trailing * matches a prefix); `raw` passes
        FTS5 query syntax through (OR, NOT, "phrases", NEAR).
        """
        match = query if raw else fts_query(query)
        if not match.strip():
            raise StoreUsageError("the search query is empty", "give one or more words to search for")
        marks = f"'{_MARK_OPEN}', '{_MARK_CLOSE}', '…', 16"

        def run() -> list[SearchHit]:
            hits: list[tuple[float, SearchHit]] = []
            for r in self._rows(
                f"SELECT r.run_id, r.task, r.status, r.started_at, snippet(runs_fts, 0, {marks}) AS s_task, "
                f"snippet(runs_fts, 1, {marks}) AS s_answer, bm25(runs_fts) AS rank "
                "FROM runs_fts JOIN runs r ON r.id = runs_fts.rowid WHERE runs_fts MATCH ? ORDER BY rank LIMIT ?",
                (match, limit),
            ):
                in_task = _MARK_OPEN in (r["s_task"] or "")
                field = "task" if in_task else "answer"
                text = r["s_task"] if in_task else r["s_answer"]
                hits.append(
                    (r["rank"], SearchHit(r["run_id"], r["task"], r["status"], r["started_at"], field, _snippet(text)))
                )
            for r in self._rows(
                f"SELECT r.run_id, r.task, r.status, r.started_at, c.turn, c.tool, "
                f"snippet(tool_calls_fts, 0, {marks}) AS s_args, snippet(tool_calls_fts, 1, {marks}) AS s_result, "
                "bm25(tool_calls_fts) AS rank FROM tool_calls_fts JOIN tool_calls c ON c.id = tool_calls_fts.rowid "
                "JOIN runs r ON r.run_id = c.run_id WHERE tool_calls_fts MATCH ? ORDER BY rank LIMIT ?",
                (match, limit),
            ):
                in_result = _MARK_OPEN in (r["s_result"] or "")
                text = r["s_result"] if in_result else r["s_args"]
                hits.append(
                    (
                        r["rank"],
                        SearchHit(
                            r["run_id"],
                            r["task"],
                            r["status"],
                            r["started_at"],
                            "tool_result" if in_result else "tool_arguments",
                            _snippet(text),
                            r["turn"],
                            r["tool"],
                        ),
                    )
                )
            hits.sort(key=lambda h: h[0])
            return [h for _, h in hits[:limit]]

        with self.lock:
            try:
                return run()
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if not any(word in text for word in ("locked", "busy", "readonly", "disk", "malformed")):
                    raise StoreUsageError(
                        f"cannot search for {query!r}: {exc}",
                        "use plain words, or valid FTS5 syntax with --raw (quote phrases with double quotes)",
                    ) from exc
                raise describe_error(self.path, exc) from exc
            except sqlite3.Error as exc:
                raise describe_error(self.path, exc) from exc

    def replay_events(self, run: RunRecord) -> Iterator[AgentEvent]:
        """A past (or running) run, already loaded with get_run, as the events the loop emitted (the UI's replay)."""
        return replay(run, self.event_log(run.run_id))

    def event_log(self, run_id: str) -> list[LogEntry]:
        """The events a run recorded, in order (what replay and resume read)."""

        def log() -> list[LogEntry]:
            return [
                LogEntry(e["seq"], e["type"], e["message_id"], e["tool_call_id"], parse_data(e["data"]))
                for e in self._rows(
                    "SELECT seq, type, message_id, tool_call_id, data FROM events WHERE run_id = ? ORDER BY seq",
                    (run_id,),
                )
            ]

        entries: list[LogEntry] = self._guarded(log)
        return entries

    def resumable_run(self, run_id: str) -> ResumeTarget:
        """The run's own row (not its turns), when it may resume; StoreUsageError when it is live or finished.

        Cheap (one row): the TUI asks it for every run it offers to resume.
        """
        run_id = self.resolve(run_id)

        def read() -> ResumeTarget:
            row = self.db.conn.execute(
                "SELECT status, pid, process_start, host, settings, workspace FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFound(f"no run {run_id!r} in {self.path}", "list runs with `appliance history list`")
            status, pid, start, host, settings, workspace = row
            where = standing(status, pid, start, host)
            if where is Standing.LIVE:
                raise StoreUsageError(
                    f"run {run_id} is still running (pid {pid} on {host})",
                    "wait for it to finish, or stop that process and resume then",
                )
            if where is Standing.FINISHED:
                raise StoreUsageError(
                    f"run {run_id} already finished ({status}); only interrupted or failed runs resume",
                    'start a new run with --task "..."',
                )
            return ResumeTarget(run_id, parse_data(settings), workspace)

        result: ResumeTarget = self._guarded(read)
        return result

    def load_resume(self, run_id: str) -> ResumePoint:
        """Where an interrupted run stopped: the loop's state, its settings, workspace and attachments.

        Read-only; the recorder claims the run when the resumed loop starts.
        """
        run = self.get_run(self.resumable_run(run_id).run_id)
        rebuilt = rebuild_state(run, self.event_log(run.run_id))
        return ResumePoint(
            run=run,
            state=rebuilt.state,
            replay_position=rebuilt.replay_position,
            redo_calls=rebuilt.redo_calls,
        )

    # ------------------------------------------------------------ changing

    def _check_not_live(self, run_id: str) -> None:
        row = self.db.conn.execute(
            "SELECT status, pid, process_start, host FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row and standing(*row) is Standing.LIVE:
            raise StoreError(f"run {run_id} is running (pid {row[1]})", "wait for it to finish or stop it first")

    def delete_run(self, run_id: str) -> None:
        run_id = self.resolve(run_id)

        def delete() -> None:
            self._check_not_live(run_id)
            with write_transaction(self.db):
                self.db.conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

        self._guarded(delete)

    def tag_run(self, run_id: str, tag: str) -> None:
        tag = tag.strip()
        if not tag:
            raise StoreUsageError("the tag is empty", "give a word such as `keep` or `gaia`")
        run_id = self.resolve(run_id)

        def add() -> None:
            with write_transaction(self.db):
                self.db.conn.execute("INSERT OR IGNORE INTO tags (run_id, tag) VALUES (?, ?)", (run_id, tag))

        self._guarded(add)

    def untag_run(self, run_id: str, tag: str) -> None:
        run_id = self.resolve(run_id)

        def remove() -> None:
            with write_transaction(self.db):
                self.db.conn.execute("DELETE FROM tags WHERE run_id = ? AND tag = ?", (run_id, tag))

        self._guarded(remove)

    def size_bytes(self) -> int:
        """The database file plus its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += Path(str(self.path) + suffix).stat().st_size
            except OSError:
                pass
        return total

    def prune(
        self,
        *,
        older_than: dt.timedelta | None = None,
        max_bytes: int | None = None,
        include_tagged: bool = False,
        dry_run: bool = False,
    ) -> PruneReport:
        """Delete finished runs started before `older_than` ago, then the oldest until the data fits `max_bytes`.

        Running runs are never pruned; tagged runs only with `include_tagged`.
        A dry run does the same work in a transaction that is rolled back.
        """
        if older_than is None and max_bytes is None:
            raise StoreUsageError("prune needs a limit", "pass --older-than (e.g. 30d) and/or --max-size (e.g. 500MB)")
        before = self.size_bytes()

        def work() -> list[str]:
            mark_dead_runs(self.db)
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                chosen = choose_and_delete(conn, older_than, max_bytes, include_tagged)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("ROLLBACK" if dry_run else "COMMIT")
            return chosen

        chosen: list[str] = self._guarded(work)
        if not dry_run and chosen:
            self._guarded(lambda: compact(self.db.conn))
        return PruneReport(tuple(chosen), before, before if dry_run else self.size_bytes(), dry_run)


def _context_messages(text: str | None) -> tuple[ChatMessage, ...]:
    """A follow-up's recorded starting context (JSON [{"role", "content"}, ...])."""
    items = json.loads(text) if text else []
    return tuple(ChatMessage(str(m["role"]), str(m["content"])) for m in items if isinstance(m, dict))  # type: ignore[arg-type]


def _message(m: dict[str, Any], content: str) -> MessageRecord:
    return MessageRecord(
        id=m["id"],
        seq=m["seq"],
        turn=m["turn"],
        kind=m["kind"],
        role=m["role"],
        content=content,
        state=m["state"],
        rollback_reason=m["rollback_reason"],
        rollback_detail=m["rollback_detail"],
        tokens=m["tokens"],
        prompt_tokens=m["prompt_tokens"],
        prompt_estimate=m["prompt_estimate"],
        evaluated_tokens=m["evaluated_tokens"],
        finish_reason=m["finish_reason"],
        elapsed_s=m["elapsed_s"],
        attempt=m["attempt"],
        call_count=m["call_count"],
        omitted=bool(m["omitted"]),
        dropped=bool(m["dropped"]),
        reply_id=m["reply_id"],
        created_at=m["created_at"],
    )


def _recorded_failure_summary(data: str | None) -> str:
    """The failure summary a RunFinished record holds; "" when it has none or cannot be read.

    As in the reference, an attempt whose summary is missing or unreadable adds nothing to the
    next attempt's task: a damaged record must not stop the task's later attempts.
    """
    try:
        summary = parse_data(data).get("failure_summary")
    except ValueError:
        return ""
    return summary.strip() if isinstance(summary, str) else ""
