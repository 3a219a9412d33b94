"""google_search over every configured source: SearXNG, the local corpus, ZIM archives.

Each source ranks its own hits; the lists are merged by reciprocal rank fusion
(results.fuse), banned URLs are dropped, and the requested page is cut from the
merged list. The answer is the Serper-shaped JSON the model was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance.config import SearchSettings
from appliance.errors import ConfigError
from appliance.paths import AppDirs
from appliance.tools.archive import WebCall
from appliance.tools.search.corpus import Corpus, CorpusSource
from appliance.tools.search.results import (
    SearchRequest,
    SourceResult,
    decode_urls,
    error_payload,
    fuse,
    is_banned,
    organic_entries,
    search_parameters,
)
from appliance.tools.search.searxng import SearxngClient
from appliance.tools.search.zim import ZimLibrary, ZimSource

SOURCE_KINDS = ("searxng", "corpus", "zim")


class SearchSource(Protocol):
    name: str

    def search(self, request: SearchRequest, limit: int) -> SourceResult: ...


@dataclass
class SearchOutcome:
    """What one search produced: the payload the model reads and what the user should know."""

    payload: dict[str, Any]
    status: str  # ok | empty | unavailable
    warnings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        # The issue asks for pretty-printed JSON; the reference servers print it compact.
        return json.dumps(self.payload, ensure_ascii=False, indent=2)

    @property
    def error(self) -> str | None:
        return str(self.payload["error"]) if self.status == "unavailable" else None


def corpus_path(settings: SearchSettings, dirs: AppDirs) -> Path:
    return Path(settings.corpus_db).expanduser() if settings.corpus_db else dirs.data_dir / "corpus.db"


def check_sources(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in SOURCE_KINDS]
    if unknown:
        raise ConfigError(
            f"unknown search source {unknown[0]!r} in [search] sources", f"use any of: {', '.join(SOURCE_KINDS)}"
        )
    return list(dict.fromkeys(names))


class SearchEngine:
    """The sources named in [search] sources that are configured; nothing is opened until a search."""

    def __init__(self, settings: SearchSettings, dirs: AppDirs, *, only: Sequence[str] | None = None) -> None:
        self.settings = settings
        # Sources named on the command line (`appliance search --source`) replace the configured list.
        self.kinds = check_sources(only) if only else check_sources(settings.sources)
        self.corpus = Corpus(corpus_path(settings, dirs))
        self.zim = ZimLibrary(settings.zim_paths if "zim" in self.kinds else [])
        self._searxng: SearxngClient | None = None

    def searxng(self) -> SearxngClient | None:
        if "searxng" not in self.kinds or not self.settings.searxng_url.strip():
            return None
        if self._searxng is None:
            self._searxng = SearxngClient(
                self.settings.searxng_url, timeout=self.settings.timeout, max_pages=self.settings.max_pages
            )
        return self._searxng

    def sources(self, web: WebCall | None = None) -> list[SearchSource]:
        """The configured sources; with a run's `web`, SearXNG answers through its archive."""
        found: list[SearchSource] = []
        for kind in self.kinds:
            if kind == "searxng":
                client = self.searxng()
                if client is not None:
                    found.append(client if web is None else client.with_web(web))
            elif kind == "corpus" and self.corpus.exists():
                found.append(CorpusSource(self.corpus))
            elif kind == "zim":
                found.extend(ZimSource(self.zim, name) for name in self.zim.paths)
        return found

    def close(self) -> None:
        if self._searxng is not None:
            self._searxng.close()
        self.zim.close()

    def _gather(self, request: SearchRequest, sources: list[SearchSource]) -> list[SourceResult]:
        if len(sources) == 1:
            return [sources[0].search(request, request.wanted)]
        with ThreadPoolExecutor(max_workers=min(4, len(sources)), thread_name_prefix="search") as pool:
            return list(pool.map(lambda s: s.search(request, request.wanted), sources))

    def search(self, request: SearchRequest, web: WebCall | None = None) -> SearchOutcome:
        sources = self.sources(web)
        if not sources:
            message = (
                "No search source is configured: start SearXNG (`appliance searxng start`) or set "
                "[search] searxng_url, add local documents with `appliance corpus add PATH`, "
                "or list ZIM archives in [search] zim_paths"
            )
            return SearchOutcome(error_payload(message), "unavailable")
        outcome = self._search_once(request, sources)
        # The reference retries a quoted query without its quotes when nothing matched.
        if outcome.status == "empty" and '"' in request.q:
            unquoted = request.q.replace('"', "").strip()
            if unquoted:
                outcome = self._search_once(request.with_query(unquoted), sources)
        return outcome

    def _search_once(self, request: SearchRequest, sources: list[SearchSource]) -> SearchOutcome:
        results = self._gather(request, sources)
        answered = [r for r in results if r.error is None]
        warnings = [w for r in results for w in r.warnings]
        failed = [r for r in results if r.error is not None]
        names = [r.source for r in answered]
        if not answered:
            message = "; ".join(str(r.error) for r in failed)
            return SearchOutcome(error_payload(message), "unavailable", warnings, [r.source for r in results])
        unavailable = [f"{r.source} is unavailable: {r.error}" for r in failed]
        warnings.extend(unavailable)
        merged = [hit for hit in fuse([r.hits for r in answered], self.settings.fusion_k) if not is_banned(hit.link)]
        start = (request.page - 1) * request.num
        window = merged[start : start + request.num]
        engine = "+".join(dict.fromkeys(n.split(":")[0] for n in names))
        payload: dict[str, Any] = {
            "organic": organic_entries(window, start + 1),
            "searchParameters": search_parameters(request, engine),
        }
        if unavailable:
            # Not in Serper's shape: tells the model the web part of its search is missing.
            payload["warnings"] = unavailable
        return SearchOutcome(decode_urls(payload), "ok" if window else "empty", warnings, names)
