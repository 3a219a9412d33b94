"""Opening the history database: pragmas, migrations, clear errors, and who owns a running run.

Several processes share one file (the TUI, a headless run, `appliance history`):
WAL lets readers work while a run writes, every write transaction starts with
BEGIN IMMEDIATE so two writers queue on the busy timeout instead of failing with
"database is locked", and synchronous=NORMAL makes a commit cost no fsync while
still surviving a killed process (a power cut may lose the last steps, never the
file's consistency).

A file that is not a history database is never recreated, repaired or
overwritten: opening it fails with the path and what to do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database

from appliance.errors import ApplianceError, ExitCode
from appliance.policy import owner_alive
from appliance.store.migrations import MIGRATION_SET, known_names, migrations

BUSY_TIMEOUT_S = 30.0
_MIGRATIONS_TABLE = "_sqlite_migrations"


class StoreError(ApplianceError):
    """The history database cannot be used as asked."""

    exit_code = ExitCode.UNAVAILABLE


class StoreUsageError(StoreError):
    """The request cannot be met as written (an unknown run id, a bad search query)."""

    exit_code = ExitCode.USAGE


class RunNotFound(StoreUsageError):
    pass


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def describe_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """A database error as the user should read it."""
    text = str(exc)
    lower = text.lower()
    moved = f"{path}.broken"
    if "file is not a database" in lower or "malformed" in lower or "not a database" in lower:
        return StoreError(
            f"the history database {path} is corrupt or not an SQLite file ({text})",
            f"move it aside (mv '{path}' '{moved}') to start a new history, or pass --db with another file",
        )
    if "locked" in lower or "busy" in lower:
        return StoreError(
            f"the history database {path} stayed locked for {BUSY_TIMEOUT_S:g} s ({text})",
            "wait for the other appliance process (a prune or vacuum) to finish and try again",
        )
    if "readonly" in lower or "read-only" in lower:
        return StoreError(
            f"the history database {path} is read-only ({text})",
            "make the file and its directory writable, or pass --db with a writable path",
        )
    if "disk" in lower and "full" in lower:
        return StoreError(f"cannot write the history database {path}: the disk is full", "free some space")
    if "unable to open" in lower:
        return StoreError(
            f"cannot open the history database {path} ({text})",
            "check that the directory exists and is writable, or pass --db with another path",
        )
    return StoreError(f"history database {path}: {text}", "check the file, or pass --db with another path")


def _raw_connect(path: Path) -> sqlite3.Connection:
    # check_same_thread=False: the TUI records a run from a worker thread while
    # its screens read; History serialises access with a lock.
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    # The first read of the file: a file that is not SQLite fails here.
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return conn


def _enable_wal(db: Database) -> None:
    # Changes the file header: only once the file is known to be a history of ours.
    mode = db.conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal":
        db.conn.execute("PRAGMA journal_mode = WAL")


def connect(path: Path, *, create: bool = True) -> Database:
    """Open (or create) the database at `path` and bring its schema up to date."""
    path = path.expanduser()
    if path.is_dir():
        raise StoreUsageError(f"the history database path {path} is a directory", "pass a file path with --db")
    if not path.exists():
        if not create:
            raise StoreError(f"there is no history database at {path}", "run a task first, or pass --db with a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the directory for the history database {path}: {exc.strerror}",
                "pass --db with a writable path",
            ) from exc
    try:
        conn = _raw_connect(path)
    except sqlite3.Error as exc:
        raise describe_error(path, exc) from exc
    db = Database(conn)
    try:
        _migrate(db, path)
    except sqlite3.Error as exc:
        conn.close()
        raise describe_error(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return db


def _applied(db: Database) -> list[str]:
    if not db[_MIGRATIONS_TABLE].exists():
        return []
    return [m.name for m in migrations.applied(db)]


def _check_compatible(db: Database, path: Path) -> None:
    applied = _applied(db)
    unknown = [name for name in applied if name not in known_names()]
    if unknown:
        raise StoreError(
            f"the history database {path} was written by a newer version of the appliance "
            f"(schema step {unknown[-1]!r} is unknown to this one)",
            "upgrade the appliance, or pass --db with another file; the database was left untouched",
        )
    if not applied:
        foreign = [n for n in db.table_names() if not n.startswith("sqlite_") and n != _MIGRATIONS_TABLE]
        others = (
            db[_MIGRATIONS_TABLE].exists()
            and db.execute(
                f"SELECT count(*) FROM {_MIGRATIONS_TABLE} WHERE migration_set != ?", [MIGRATION_SET]
            ).fetchone()[0]
        )
        if foreign or others:
            raise StoreError(
                f"{path} is an SQLite database but not an appliance history (it has tables {', '.join(foreign[:5])})",
                "pass --db with a new file or an existing history database; this file was left untouched",
            )


def _migrate(db: Database, path: Path) -> None:
    _check_compatible(db, path)
    _enable_wal(db)
    if not migrations.pending(db):
        return
    # Two processes opening a new database at once: the second waits here, then
    # finds nothing pending.
    with write_transaction(db):
        _check_compatible(db, path)
        migrations.apply(db)


@contextlib.contextmanager
def write_transaction(db: Database) -> Iterator[None]:
    """One step, all or nothing. BEGIN IMMEDIATE takes the write lock up front (waiting on the busy timeout)."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


# ---------------------------------------------------------------- run owners


def mark_dead_runs(db: Database) -> int:
    """Runs left `running` by a process that is gone become `interrupted`. Returns how many."""
    rows = db.execute("SELECT run_id, pid, process_start, host FROM runs WHERE status = 'running'").fetchall()
    dead = [row for row in rows if not owner_alive(row[1], row[2], row[3])]
    if not dead:
        return 0
    with write_transaction(db):
        for run_id, pid, start, _host in dead:
            db.execute(
                "UPDATE runs SET status = 'interrupted', error = ? "
                "WHERE run_id = ? AND status = 'running' AND pid IS ? AND process_start IS ?",
                [f"the process running it (pid {pid}) ended before the run finished", run_id, pid, start],
            )
    return len(dead)
