"""Kiwix ZIM archives (offline Wikipedia, Stack Exchange, docs) as search sources, via python-libzim.

An archive with a full-text (Xapian) index is searched through it; one without
is searched by title suggestions, which every ZIM built by libzim has. Each
archive is its own ranked list in the fusion. Hits have `zim://NAME/PATH`
URLs that the scrape tool reads from the archive, without network.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from appliance.tools.search.results import Hit, SearchRequest, SourceResult

SCHEME = "zim"
_SNIPPET_CHARS = 240
_WORD = re.compile(r"\w+", re.UNICODE)


class ZimError(Exception):
    """An archive that cannot be opened or an entry that is not there."""


@dataclass(frozen=True)
class ZimEntry:
    archive: str
    path: str
    title: str
    mimetype: str
    content: bytes

    @property
    def url(self) -> str:
        return entry_url(self.archive, self.path)


def entry_url(archive: str, path: str) -> str:
    return f"{SCHEME}://{quote(archive, safe='')}/{quote(path, safe='/')}"


def parse_entry_url(url: str) -> tuple[str, str] | None:
    parts = urlsplit(url)
    if parts.scheme != SCHEME or not parts.netloc:
        return None
    return unquote(parts.netloc), unquote(parts.path.lstrip("/"))


def best_window(text: str, query: str, width: int = _SNIPPET_CHARS) -> str:
    """The stretch of `text` with the most query words, about `width` characters, on word boundaries."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    words = {w.lower() for w in _WORD.findall(query)}
    positions = [m.start() for m in _WORD.finditer(flat) if m.group(0).lower() in words]
    if not positions:
        return flat[:width].rsplit(" ", 1)[0] + "…"
    best_start, best_count = positions[0], 0
    for i, start in enumerate(positions):
        count = sum(1 for p in positions[i:] if p < start + width)
        if count > best_count:
            best_start, best_count = start, count
    start = max(0, best_start - width // 4)
    if start:
        start = flat.find(" ", start) + 1 or start
    window = flat[start : start + width]
    if start + width < len(flat):
        window = window.rsplit(" ", 1)[0] + "…"
    return ("…" if start else "") + window


def html_text(content: bytes) -> str:
    """Visible text of an HTML entry, quickly (snippets only; the scrape tool uses trafilatura)."""
    from lxml import html as lxml_html
    from lxml.etree import ParserError

    try:
        tree = lxml_html.fromstring(content)
    except (ParserError, ValueError):
        return content.decode("utf-8", "replace")
    for bad in tree.xpath("//script|//style|//noscript"):
        bad.getparent().remove(bad)
    return str(tree.text_content())


def archive_names(paths: Sequence[str]) -> dict[str, Path]:
    """A short unique name per archive (its file stem; -2, -3 on collisions)."""
    names: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        stem = path.stem or "archive"
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}-{n}"
        names[name] = path
    return names


class ZimLibrary:
    """The configured archives, opened on first use."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = archive_names(paths)
        self._archives: dict[str, Any] = {}
        self._lock = threading.Lock()

    def archive(self, name: str) -> Any:
        with self._lock:
            if name in self._archives:
                return self._archives[name]
            path = self.paths.get(name)
            if path is None:
                known = ", ".join(self.paths) or "none configured"
                raise ZimError(f"no ZIM archive named {name!r} (archives: {known})")
            try:
                from libzim.reader import Archive
            except ImportError as exc:
                raise ZimError("python-libzim is not installed; pip install libzim") from exc
            if not path.is_file():
                raise ZimError(f"ZIM archive {path} does not exist; fix [search] zim_paths")
            try:
                archive = Archive(str(path))
            except RuntimeError as exc:
                raise ZimError(f"cannot open ZIM archive {path}: {exc}") from exc
            self._archives[name] = archive
            return archive

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for name, path in self.paths.items():
            try:
                archive = self.archive(name)
                rows.append(
                    {
                        "name": name,
                        "path": str(path),
                        "articles": archive.article_count,
                        "fulltext_index": archive.has_fulltext_index,
                        "title_index": archive.has_title_index,
                    }
                )
            except ZimError as exc:
                rows.append({"name": name, "path": str(path), "error": str(exc)})
        return rows

    def search(self, name: str, query: str, limit: int) -> list[Hit]:
        archive = self.archive(name)
        paths: list[str]
        if archive.has_fulltext_index:
            from libzim.search import Query, Searcher

            found = Searcher(archive).search(Query().set_query(query))
            paths = list(found.getResults(0, limit))
        else:
            from libzim.suggestion import SuggestionSearcher

            suggested = SuggestionSearcher(archive).suggest(query)
            paths = list(suggested.getResults(0, limit))
        hits = []
        for path in paths:
            try:
                entry = self.read(name, path)
            except ZimError:
                continue
            text = html_text(entry.content) if "html" in entry.mimetype else entry.content.decode("utf-8", "replace")
            hits.append(Hit(entry.title or path, entry.url, best_window(text, query), f"zim:{name}"))
        return hits

    def read(self, name: str, path: str) -> ZimEntry:
        archive = self.archive(name)
        try:
            entry = archive.get_entry_by_path(path)
        except KeyError as exc:
            raise ZimError(f"the ZIM archive {name} has no entry {path!r}") from exc
        # Follow redirects (titles that point at another article), boundedly.
        for _ in range(10):
            if not entry.is_redirect:
                break
            entry = entry.get_redirect_entry()
        item = entry.get_item()
        return ZimEntry(name, entry.path, entry.title, item.mimetype, bytes(item.content))

    def close(self) -> None:
        with self._lock:
            self._archives.clear()


class ZimSource:
    """One archive as a search source."""

    def __init__(self, library: ZimLibrary, archive: str) -> None:
        self.library = library
        self.archive = archive
        self.name = f"zim:{archive}"

    def search(self, request: SearchRequest, limit: int) -> SourceResult:
        if request.time_span() is not None:
            # Like SearXNG's engines without time-range support: not asked when a time filter is set.
            return SourceResult(self.name)
        try:
            return SourceResult(self.name, self.library.search(self.archive, request.q, limit))
        except ZimError as exc:
            return SourceResult(self.name, error=str(exc))
        except RuntimeError as exc:  # libzim raises RuntimeError on corrupt data or bad queries
            return SourceResult(self.name, error=f"ZIM search in {self.archive} failed: {exc}")
