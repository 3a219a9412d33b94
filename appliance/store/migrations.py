"""The history schema, as a numbered list of migrations applied on start.

Never edit a migration that has shipped: a database in the wild has already
run it. Add a new one instead; `tests/fixtures/history-v1.db` is a database
written by the first migration alone, and the migration tests upgrade it.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

MIGRATION_SET = "appliance"

migrations = Migrations(MIGRATION_SET)

# Rows reference their run by run_id with ON DELETE CASCADE, so deleting a run
# removes everything it owns. References inside a run (reply_id, message_id,
# tool_call_id) are plain integers kept consistent by the recorder: foreign keys
# on them would need an index each, paid on every step.
_INITIAL = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    task_message TEXT NOT NULL,
    system_prompt TEXT NOT NULL,
    status TEXT NOT NULL,
    answer TEXT,
    final_text TEXT,
    error TEXT,
    exit_code INTEGER,
    profile TEXT,
    model TEXT,
    backend TEXT,
    backend_info TEXT,
    settings TEXT,
    workspace TEXT,
    attachments TEXT,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT,
    elapsed_s REAL NOT NULL DEFAULT 0,
    turns INTEGER NOT NULL DEFAULT 0,
    tool_calls INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    process_start TEXT,
    host TEXT
);
CREATE INDEX runs_started_at ON runs (started_at);
CREATE INDEX runs_status ON runs (status);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    turn INTEGER NOT NULL,
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    reply_id INTEGER,
    content TEXT,
    state TEXT NOT NULL,
    rollback_reason TEXT,
    rollback_detail TEXT,
    tokens INTEGER,
    prompt_tokens INTEGER,
    prompt_estimate INTEGER,
    evaluated_tokens INTEGER,
    finish_reason TEXT,
    elapsed_s REAL,
    attempt INTEGER,
    call_count INTEGER,
    omitted INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX messages_run_seq ON messages (run_id, seq);

CREATE TABLE tool_calls (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    reply_id INTEGER NOT NULL,
    turn INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    arguments TEXT NOT NULL,
    result TEXT,
    status TEXT NOT NULL,
    duration_s REAL,
    truncated INTEGER NOT NULL DEFAULT 0,
    raw_chars INTEGER,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX tool_calls_run ON tool_calls (run_id, reply_id, idx);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    message_id INTEGER,
    tool_call_id INTEGER,
    data TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (run_id, seq)
);

CREATE TABLE tags (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (run_id, tag)
);
CREATE INDEX tags_tag ON tags (tag);
"""


@migrations(name="m001_initial")
def m001_initial(db: Database) -> None:
    db.executescript(_INITIAL)


def _fts_sql(table: str, columns: tuple[str, ...]) -> str:
    """An external-content FTS5 index kept in step by triggers that fire only when indexed columns change."""
    cols = ", ".join(columns)
    new = ", ".join(f"new.{c}" for c in columns)
    old = ", ".join(f"old.{c}" for c in columns)
    fts = f"{table}_fts"
    return f"""
CREATE VIRTUAL TABLE {fts} USING fts5 (
    {cols}, content='{table}', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} BEGIN
    INSERT INTO {fts} (rowid, {cols}) VALUES (new.id, {new});
END;
CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} BEGIN
    INSERT INTO {fts} ({fts}, rowid, {cols}) VALUES ('delete', old.id, {old});
END;
CREATE TRIGGER {fts}_update AFTER UPDATE OF {cols} ON {table} BEGIN
    INSERT INTO {fts} ({fts}, rowid, {cols}) VALUES ('delete', old.id, {old});
    INSERT INTO {fts} (rowid, {cols}) VALUES (new.id, {new});
END;
INSERT INTO {fts} ({fts}) VALUES ('rebuild');
"""


@migrations(name="m002_full_text_search")
def m002_full_text_search(db: Database) -> None:
    # Tasks and answers, and what the tools returned (with their arguments:
    # searching for a URL or a query finds the call). Existing rows are indexed.
    db.executescript(_fts_sql("runs", ("task", "answer")))
    db.executescript(_fts_sql("tool_calls", ("arguments", "result")))


@migrations(name="m003_archive_records")
def m003_archive_records(db: Database) -> None:
    # What each tool call read: records of the run's web archive (file and offset
    # in RUN_DIR/archive), a local document (kind 'local'), or a gap (kind 'gap',
    # with the reason) where a document could not be archived.
    db.executescript(
        """
CREATE TABLE archive_records (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    tool_call_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    uri TEXT NOT NULL,
    warc_file TEXT,
    warc_offset INTEGER,
    record_id TEXT,
    warc_date TEXT,
    status INTEGER,
    digest TEXT,
    length INTEGER,
    origin TEXT,
    note TEXT,
    passage TEXT
);
CREATE INDEX archive_records_call ON archive_records (run_id, tool_call_id);
"""
    )


@migrations(name="m004_task_attempts")
def m004_task_attempts(db: Database) -> None:
    # A task's attempts (agent/attempts.py) are runs of their own, linked to the
    # run of attempt 1 (task_root NULL on that run and on every run before attempts).
    db.executescript(
        """
ALTER TABLE runs ADD COLUMN task_root TEXT;
ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
CREATE INDEX runs_task_root ON runs (task_root);
"""
    )


@migrations(name="m005_followups")
def m005_followups(db: Database) -> None:
    # A follow-up question on a finished run is a run of its own, linked to the run it
    # follows (parent_run; NULL for a task of its own). It starts from the parent's
    # conversation as the model last saw it, or from its report when that would not
    # leave room for work (context_mode); `context` holds those messages as JSON
    # ([{"role", "content"}, ...]), so resume, export and replay never need the parent.
    db.executescript(
        """
ALTER TABLE runs ADD COLUMN parent_run TEXT;
ALTER TABLE runs ADD COLUMN context_mode TEXT;
ALTER TABLE runs ADD COLUMN context TEXT;
CREATE INDEX runs_parent_run ON runs (parent_run);
"""
    )


def known_names() -> list[str]:
    return [m.name for m in migrations._migrations]
