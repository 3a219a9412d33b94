"""A local corpus for offline search: documents in SQLite FTS5, ranked with bm25.

Each document is converted to text once (tools/documents.py), split into
chunks of about CHUNK_CHARS on paragraph boundaries and indexed per chunk, so
a hit points at the passage that matched and its snippet comes from there.
The whole text is kept too: the scrape tool reads a hit's URL
(`corpus://ID/NAME`) from the database, without the file and without network.
Re-adding a path whose content changed replaces its chunks and keeps its ID.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from appliance.errors import ComponentUnavailable
from appliance.tools.documents import UnsupportedDocument, convert, pack_paragraphs, supported_extensions
from appliance.tools.search.results import Hit, SearchRequest, SourceResult

SCHEME = "corpus"
CHUNK_CHARS = 1500
SCHEMA_VERSION = 1
# Title matches count more than body matches.
_BM25_WEIGHTS = (4.0, 1.0)
_MAX_FILE_BYTES = 200_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    sha256 TEXT NOT NULL,
    chars INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    indexed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS texts (doc_id INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS passages USING fts5(
    title, body, doc_id UNINDEXED, seq UNINDEXED,
    tokenize = 'porter unicode61 remove_diacritics 2'
);
"""


class CorpusError(ComponentUnavailable):
    """A corpus operation that cannot be done; the message says why."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__("corpus", message, fix)


@dataclass(frozen=True)
class CorpusDocument:
    id: int
    path: str
    title: str
    kind: str
    size: int
    mtime: float
    chars: int
    chunks: int
    indexed_at: float

    @property
    def url(self) -> str:
        return document_url(self.id, self.path)


@dataclass(frozen=True)
class AddResult:
    path: str
    status: str  # added | updated | unchanged | skipped
    detail: str = ""
    doc_id: int | None = None


def document_url(doc_id: int, path: str) -> str:
    return f"{SCHEME}://{doc_id}/{quote(Path(path).name)}"


def parse_document_url(url: str) -> int | None:
    """The document ID in a corpus:// URL, or None when it is not one."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME or not parts.netloc.isdigit():
        return None
    return int(parts.netloc)


# ------------------------------------------------------------------ pure helpers


_WORD = re.compile(r"\w+", re.UNICODE)
_PHRASE = re.compile(r'"([^"]+)"')


def match_queries(query: str) -> list[str]:
    """FTS5 MATCH expressions for a free-text query: all terms first, then any term.

    User text never reaches FTS5's query syntax: every term is quoted, quoted
    phrases stay phrases, and operators (AND, NEAR, -, *, column:) lose meaning.
    """
    phrases = [" ".join(_WORD.findall(p)) for p in _PHRASE.findall(query)]
    rest = _PHRASE.sub(" ", query)
    terms = [*(f'"{p}"' for p in phrases if p), *(f'"{w}"' for w in _WORD.findall(rest))]
    terms = list(dict.fromkeys(terms))
    if not terms:
        return []
    strict = " ".join(terms)
    if len(terms) == 1:
        return [strict]
    loose_terms = list(dict.fromkeys([*terms, *(f'"{w}"' for p in phrases for w in _WORD.findall(p))]))
    return [strict, " OR ".join(loose_terms)]


# ------------------------------------------------------------------ the corpus


class Corpus:
    """One corpus database. Connections are opened per operation, so threads can share it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_lock = threading.Lock()

    @contextmanager
    def _connect(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        if not create and not self.path.is_file():
            raise CorpusError(f"no corpus at {self.path}", "add documents with `appliance corpus add PATH...`")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30.0)
        try:
            connection.execute("PRAGMA foreign_keys = ON")
            if create:
                connection.execute("PRAGMA journal_mode = WAL")
                connection.executescript(_SCHEMA)
                connection.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                connection.commit()
            yield connection
        except sqlite3.DatabaseError as exc:
            raise CorpusError(
                f"the corpus database {self.path} cannot be used: {exc}",
                "move it away and add the documents again with `appliance corpus add`",
            ) from exc
        finally:
            connection.close()

    def exists(self) -> bool:
        return self.path.is_file()

    # ---------------------------------------------------------- writing

    def add(self, path: Path, *, force: bool = False) -> AddResult:
        """Index one file; unchanged files are skipped, changed ones replaced in place."""
        full = path.expanduser().resolve()
        key = str(full)
        try:
            stat = full.stat()
        except OSError as exc:
            return AddResult(key, "skipped", f"cannot read: {exc.strerror}")
        if not full.is_file():
            return AddResult(key, "skipped", "not a regular file")
        if stat.st_size > _MAX_FILE_BYTES:
            return AddResult(key, "skipped", f"larger than {_MAX_FILE_BYTES:,} bytes")
        with self._write_lock, self._connect(create=True) as db:
            row = db.execute("SELECT id, size, mtime, sha256 FROM documents WHERE path = ?", (key,)).fetchone()
            if row and not force and row[1] == stat.st_size and row[2] == stat.st_mtime:
                return AddResult(key, "unchanged", doc_id=row[0])
            try:
                data = full.read_bytes()
            except OSError as exc:
                return AddResult(key, "skipped", f"cannot read: {exc.strerror}")
            digest = hashlib.sha256(data).hexdigest()
            if row and not force and row[3] == digest:
                db.execute("UPDATE documents SET mtime = ? WHERE id = ?", (stat.st_mtime, row[0]))
                db.commit()
                return AddResult(key, "unchanged", doc_id=row[0])
            try:
                document = convert(data, name=full.name)
            except UnsupportedDocument as exc:
                return AddResult(key, "skipped", str(exc))
            if not document.text.strip():
                return AddResult(key, "skipped", "no text in the file")
            chunks = pack_paragraphs(document.text, CHUNK_CHARS)
            title = document.title or full.name
            now = time.time()
            values = (title, document.kind, stat.st_size, stat.st_mtime, digest, len(document.text), len(chunks), now)
            if row:
                doc_id = int(row[0])
                db.execute(
                    "UPDATE documents SET title=?, kind=?, size=?, mtime=?, sha256=?, chars=?, chunks=?, indexed_at=? "
                    "WHERE id=?",
                    (*values, doc_id),
                )
                db.execute("DELETE FROM passages WHERE doc_id = ?", (doc_id,))
            else:
                cursor = db.execute(
                    "INSERT INTO documents (path, title, kind, size, mtime, sha256, chars, chunks, indexed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, *values),
                )
                doc_id = int(cursor.lastrowid or 0)
            db.execute("INSERT OR REPLACE INTO texts (doc_id, text) VALUES (?, ?)", (doc_id, document.text))
            db.executemany(
                "INSERT INTO passages (title, body, doc_id, seq) VALUES (?, ?, ?, ?)",
                [(title, chunk, doc_id, seq) for seq, chunk in enumerate(chunks)],
            )
            db.commit()
        return AddResult(key, "updated" if row else "added", f"{len(chunks)} chunks, {document.kind}", doc_id)

    def add_paths(self, paths: Sequence[Path], *, force: bool = False) -> Iterator[AddResult]:
        """Files as given; directories walked for files with a supported extension."""
        extensions = supported_extensions()
        for path in paths:
            full = path.expanduser()
            if full.is_dir():
                for child in sorted(full.rglob("*")):
                    if child.is_file() and child.suffix.lower() in extensions and not _hidden(child, full):
                        yield self.add(child, force=force)
            elif full.exists():
                yield self.add(full, force=force)
            else:
                yield AddResult(str(full), "skipped", "no such file or directory")

    def remove(self, target: str) -> list[CorpusDocument]:
        """Remove a document by path, corpus URL or ID, or every document under a directory."""
        with self._write_lock, self._connect() as db:
            doc_id = parse_document_url(target) if "://" in target else (int(target) if target.isdigit() else None)
            if doc_id is not None:
                rows = db.execute(f"SELECT {_COLUMNS} FROM documents WHERE id = ?", (doc_id,)).fetchall()
            else:
                full = str(Path(target).expanduser().resolve())
                prefix = full.rstrip("/") + "/"
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM documents WHERE path = ? OR substr(path, 1, ?) = ?",
                    (full, len(prefix), prefix),
                ).fetchall()
            removed = [CorpusDocument(*row) for row in rows]
            for document in removed:
                db.execute("DELETE FROM passages WHERE doc_id = ?", (document.id,))
                db.execute("DELETE FROM texts WHERE doc_id = ?", (document.id,))
                db.execute("DELETE FROM documents WHERE id = ?", (document.id,))
            db.commit()
        return removed

    def refresh(self) -> Iterator[AddResult]:
        """Re-check every indexed file: changed ones are re-indexed, vanished ones removed."""
        for document in self.documents():
            path = Path(document.path)
            if not path.is_file():
                self.remove(str(document.id))
                yield AddResult(document.path, "removed", "the file no longer exists", document.id)
            else:
                yield self.add(path)

    # ---------------------------------------------------------- reading

    def documents(self) -> list[CorpusDocument]:
        if not self.exists():
            return []
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM documents ORDER BY path").fetchall()
        return [CorpusDocument(*row) for row in rows]

    def stats(self) -> dict[str, object]:
        if not self.exists():
            return {"path": str(self.path), "documents": 0, "chunks": 0, "chars": 0, "kinds": {}, "bytes": 0}
        with self._connect() as db:
            count, chunks, chars = db.execute(
                "SELECT count(*), coalesce(sum(chunks), 0), coalesce(sum(chars), 0) FROM documents"
            ).fetchone()
            kinds = dict(db.execute("SELECT kind, count(*) FROM documents GROUP BY kind ORDER BY kind").fetchall())
        return {
            "path": str(self.path),
            "documents": count,
            "chunks": chunks,
            "chars": chars,
            "kinds": kinds,
            "bytes": self.path.stat().st_size,
        }

    def read(self, doc_id: int) -> tuple[CorpusDocument, str]:
        with self._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM documents WHERE id = ?", (doc_id,)).fetchone()
            text = db.execute("SELECT text FROM texts WHERE doc_id = ?", (doc_id,)).fetchone()
        if row is None or text is None:
            raise CorpusError(f"the corpus has no document {doc_id} (it may have been removed)")
        return CorpusDocument(*row), str(text[0])

    def search(self, query: str, limit: int, *, modified_since: float | None = None) -> list[Hit]:
        """The best chunk of each matching document, best documents first (bm25)."""
        if not self.exists() or limit <= 0:
            return []
        hits: list[Hit] = []
        seen: set[int] = set()
        with self._connect() as db:
            # All terms first; documents matching only some terms fill the rest.
            for expression in match_queries(query):
                rows = db.execute(
                    "SELECT c.doc_id, d.title, d.path, snippet(passages, 1, '', '', '…', 40) AS snip "
                    "FROM passages AS c JOIN documents AS d ON d.id = c.doc_id "
                    "WHERE passages MATCH ? AND d.mtime >= ? "
                    f"ORDER BY bm25(passages, {_BM25_WEIGHTS[0]}, {_BM25_WEIGHTS[1]}) LIMIT ?",
                    (expression, modified_since or 0.0, limit * 8),
                ).fetchall()
                for doc_id, title, path, snip in rows:
                    if doc_id in seen:
                        continue
                    seen.add(doc_id)
                    hits.append(Hit(title, document_url(doc_id, path), " ".join(snip.split()), "corpus"))
                    if len(hits) >= limit:
                        return hits
        return hits


_COLUMNS = "id, path, title, kind, size, mtime, chars, chunks, indexed_at"


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


class CorpusSource:
    """The corpus as a search source for google_search."""

    name = "corpus"

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus

    def search(self, request: SearchRequest, limit: int) -> SourceResult:
        if not self.corpus.exists():
            return SourceResult("corpus")
        span = request.time_span()
        since = time.time() - span if span else None
        try:
            return SourceResult("corpus", self.corpus.search(request.q, limit, modified_since=since))
        except CorpusError as exc:
            return SourceResult("corpus", error=str(exc))
