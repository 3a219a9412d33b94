"""Pruning: which runs to delete for an age or a size limit, and giving the space back."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any


def used_bytes(conn: sqlite3.Connection) -> int:
    """Pages in use: what the file shrinks to after a VACUUM (the WAL may hold several copies of a page)."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])


def delete_runs(conn: sqlite3.Connection, run_ids: list[str]) -> None:
    if not run_ids:
        return
    for run_id in run_ids:
        conn.execute("DELETE FROM runs WHERE run_id = ? AND status != 'running'", (run_id,))
    # Deleted rows stay in the full-text index as tombstones until its segments are merged.
    conn.execute("INSERT INTO runs_fts (runs_fts) VALUES ('optimize')")
    conn.execute("INSERT INTO tool_calls_fts (tool_calls_fts) VALUES ('optimize')")


def _candidates(conn: sqlite3.Connection, include_tagged: bool) -> list[dict[str, Any]]:
    """Finished runs, oldest first, each with the size of the text it stores."""
    cursor = conn.execute(
        "SELECT run_id, started_at, "
        "length(task) + length(system_prompt) + length(task_message) + coalesce(length(final_text), 0) "
        "+ (SELECT coalesce(sum(length(content)), 0) FROM messages m WHERE m.run_id = runs.run_id) "
        "+ (SELECT coalesce(sum(length(result) + length(arguments)), 0) FROM tool_calls c "
        "   WHERE c.run_id = runs.run_id) AS weight "
        "FROM runs WHERE status != 'running' "
        + ("" if include_tagged else "AND run_id NOT IN (SELECT run_id FROM tags) ")
        + "ORDER BY started_at, id"
    )
    return [{"run_id": r[0], "started_at": r[1], "weight": r[2] or 0} for r in cursor.fetchall()]


def choose_and_delete(
    conn: sqlite3.Connection, older_than: dt.timedelta | None, max_bytes: int | None, include_tagged: bool
) -> list[str]:
    """Delete (inside the caller's transaction) and return the runs the limits remove."""
    rows = _candidates(conn, include_tagged)
    chosen: list[str] = []
    if older_than is not None:
        cutoff = (dt.datetime.now(dt.UTC) - older_than).isoformat(timespec="milliseconds")
        chosen = [r["run_id"] for r in rows if r["started_at"] < cutoff]
        delete_runs(conn, chosen)
    if max_bytes is None:
        return chosen
    left = [r for r in rows if r["run_id"] not in chosen]
    while left and (used := used_bytes(conn)) > max_bytes:
        # Oldest first, as many as their share of the stored text says should free the excess
        # (at least one); then measure again: the index and page slack make it an estimate.
        total = max(1, sum(r["weight"] for r in left))
        excess, freed = used - max_bytes, 0.0
        batch: list[str] = []
        while left and (not batch or freed < excess):
            row = left.pop(0)
            batch.append(row["run_id"])
            freed += used * row["weight"] / total
        delete_runs(conn, batch)
        chosen += batch
    return chosen


def compact(conn: sqlite3.Connection) -> None:
    """Give freed pages back to the file system, unless a run is recording."""
    live = conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
    if live:
        return  # VACUUM holds the write lock for a while: a live run's next step must not wait on it
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
