"""A run's sources: the one list every face shows (reports, exports, `--json`, the TUI's answer view).

A source is a URL or an offline document the run actually read: the URL
argument of a tool call that succeeded (a page scraped, a file downloaded into
the sandbox, an MCP tool given a URL), searches excluded. Each carries what the
web archive knows of it: when it was fetched, where its archived copy is, and
the passage the extractor used. Pure functions over a RunRecord.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from appliance.store.records import ArchiveLink, RunRecord, ToolCallRecord

_URL = re.compile(r"(?:https?|corpus|zim)://[^\s<>\"'`)\]}]+")
_SEARCH_TOOLS = frozenset({"google_search"})
_DOWNLOAD_TOOLS = frozenset({"download_file_from_internet_to_sandbox"})
_REDIRECT = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Source:
    number: int
    url: str
    kind: str  # web | download | corpus | zim
    tool: str
    archived_at: str | None = None  # WARC-Date of the copy read (UTC)
    warc_file: str | None = None  # in RUN_DIR/archive
    warc_offset: int | None = None
    origin: str | None = None  # web | page-cache | reused | archive:... | corpus | zim
    passage: str | None = None
    cited: bool = False  # the final answer names it

    @property
    def archived(self) -> bool:
        return self.warc_file is not None and self.warc_offset is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "url": self.url,
            "kind": self.kind,
            "archived_at": self.archived_at,
            "archive": {"file": self.warc_file, "offset": self.warc_offset} if self.archived else None,
            "origin": self.origin,
            "passage": self.passage,
            "cited": self.cited,
        }


def _url_argument(call: ToolCallRecord) -> str | None:
    for value in call.arguments.values():
        match = _URL.match(value.strip()) if isinstance(value, str) else None
        if match:
            return match.group().rstrip(".,;:")
    return None


def _document(links: tuple[ArchiveLink, ...]) -> ArchiveLink | None:
    """The record of the document itself: the last one read that is not a redirect hop or a gap."""
    found = [link for link in links if link.kind in ("response", "resource", "local") and link.status not in _REDIRECT]
    return found[-1] if found else None


def _kind(url: str, tool: str) -> str:
    if url.startswith("corpus://"):
        return "corpus"
    if url.startswith("zim://"):
        return "zim"
    return "download" if tool in _DOWNLOAD_TOOLS else "web"


def final_text(run: RunRecord) -> str:
    """The final answer turn as the model wrote it (the summary reply), or the run's final text."""
    summaries = [s for s in run.kept_steps if s.reply.kind == "summary"]
    return summaries[-1].reply.content if summaries else (run.final_text or "")


def run_sources(run: RunRecord) -> list[Source]:
    """Every URL or document the run read, first read first, numbered from 1."""
    answer = final_text(run)
    cited = {url.rstrip(".,;:") for url in _URL.findall(answer)}
    found: dict[str, Source] = {}
    for step in run.kept_steps:
        for call in step.calls:
            if call.status != "ok" or call.tool in _SEARCH_TOOLS:
                continue
            url = _url_argument(call)
            if url is None or url in found:
                continue
            document = _document(call.archived)
            passage = next((link.passage for link in reversed(call.archived) if link.passage), None)
            archived = document is not None and document.kind != "local"
            found[url] = Source(
                number=len(found) + 1,
                url=url,
                kind=_kind(url, call.tool),
                tool=call.tool,
                archived_at=document.warc_date if document is not None and document.warc_date else None,
                warc_file=document.warc_file if archived and document is not None else None,
                warc_offset=document.warc_offset if archived and document is not None else None,
                origin=document.origin if document is not None else None,
                passage=passage,
                cited=url in cited,
            )
    return list(found.values())
