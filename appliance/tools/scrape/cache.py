"""Pages already read, in SQLite by URL: a repeated read in the TTL does not fetch again.

The converted text is stored, not the raw bytes: it is what a second read
needs, and it is several times smaller. Reads with custom headers (cookies,
tokens) are never cached, so no credential-bound page lands on disk.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (
    url TEXT PRIMARY KEY,
    final_url TEXT NOT NULL,
    title TEXT NOT NULL,
    kind TEXT NOT NULL,
    content_type TEXT NOT NULL,
    text TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pages_fetched_at ON pages (fetched_at);
"""


@dataclass(frozen=True)
class Page:
    """A document turned into text, from the web, the cache or an offline source."""

    url: str
    final_url: str
    title: str
    text: str
    kind: str
    content_type: str = ""
    source: str = "web"  # web | cache | archive | corpus | zim
    fetched_at: float = 0.0


class PageCache:
    def __init__(self, path: Path, *, ttl_seconds: float, max_bytes: int) -> None:
        self.path = path
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._ready = False

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30.0)
        if not self._ready:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.executescript(_SCHEMA)
            self._ready = True
        return connection

    def get(self, url: str) -> Page | None:
        if not self.enabled:
            return None
        with self._lock:
            connection = self._connect()
            try:
                row = connection.execute(
                    "SELECT url, final_url, title, text, kind, content_type, fetched_at FROM pages "
                    "WHERE url = ? AND fetched_at >= ?",
                    (url, time.time() - self.ttl_seconds),
                ).fetchone()
            finally:
                connection.close()
        if row is None:
            return None
        return Page(row[0], row[1], row[2], row[3], row[4], row[5], "cache", row[6])

    def put(self, page: Page) -> None:
        if not self.enabled:
            return
        size = len(page.text.encode("utf-8"))
        with self._lock:
            connection = self._connect()
            try:
                connection.execute(
                    "INSERT OR REPLACE INTO pages (url, final_url, title, kind, content_type, text, fetched_at, size) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (page.url, page.final_url, page.title, page.kind, page.content_type, page.text, time.time(), size),
                )
                self._prune(connection)
                connection.commit()
            finally:
                connection.close()

    def _prune(self, connection: sqlite3.Connection) -> None:
        connection.execute("DELETE FROM pages WHERE fetched_at < ?", (time.time() - self.ttl_seconds,))
        total = connection.execute("SELECT coalesce(sum(size), 0) FROM pages").fetchone()[0]
        if total <= self.max_bytes:
            return
        # Oldest first until the cache fits again.
        excess = total - self.max_bytes
        doomed: list[str] = []
        for url, size in connection.execute("SELECT url, size FROM pages ORDER BY fetched_at"):
            doomed.append(url)
            excess -= size
            if excess <= 0:
                break
        connection.executemany("DELETE FROM pages WHERE url = ?", [(u,) for u in doomed])

    def clear(self) -> int:
        if not self.path.is_file():
            return 0
        with self._lock:
            connection = self._connect()
            try:
                removed = connection.execute("DELETE FROM pages").rowcount
                connection.commit()
            finally:
                connection.close()
        return int(removed)
