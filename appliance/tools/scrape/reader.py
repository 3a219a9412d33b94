"""Read a URL into text: the guarded fetcher for the web, the index for offline documents.

`corpus://ID/NAME` and `zim://ARCHIVE/PATH` (the URLs offline search hits carry)
are read from the local corpus and ZIM archives without touching the network.
Everything else must be http(s) and goes through tools/fetcher.py, whose
address policy keeps the model away from loopback and private networks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

from appliance.config import Settings
from appliance.tools.archive import WebCall
from appliance.tools.documents import UnsupportedDocument, convert
from appliance.tools.fetcher import Fetcher, FetchError, FetchResult, LazyFetcher
from appliance.tools.scrape.cache import Page, PageCache
from appliance.tools.search.corpus import Corpus, CorpusError, parse_document_url
from appliance.tools.search.engine import corpus_path
from appliance.tools.search.zim import ZimError, ZimLibrary, parse_entry_url

_TEXT_KINDS_WITHOUT_TEXT = "no readable text"


class ReadError(Exception):
    """The URL could not be read as text; the message is for the model and the user."""


def http_reason(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def cache_path(settings: Settings) -> Path:
    scrape = settings.scrape
    return Path(scrape.cache_db).expanduser() if scrape.cache_db else settings.dirs.cache_dir / "pages.db"


class PageReader:
    """Reads pages for the scrape tool and `appliance fetch`; opens its resources on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = PageCache(
            cache_path(settings),
            ttl_seconds=settings.scrape.cache_ttl_hours * 3600.0,
            max_bytes=settings.scrape.cache_max_mb * 1_000_000,
        )
        self.corpus = Corpus(corpus_path(settings.search, settings.dirs))
        self.zim = ZimLibrary(settings.search.zim_paths)
        self.fetcher = LazyFetcher(settings.scrape)

    def close(self) -> None:
        self.fetcher.close()
        self.zim.close()

    def read(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        cancel: Callable[[], bool] | None = None,
        web: WebCall | None = None,
    ) -> Page:
        """The page's text. With `web` (a run's), an archive answers first, then the cache, then the
        network (archived); an offline run never reaches the cache or the network."""
        url = url.strip()
        if not url:
            raise ReadError("URL cannot be empty")
        scheme = urlsplit(url).scheme.lower()
        if scheme == "corpus":
            return self._read_corpus(url)
        if scheme == "zim":
            return self._read_zim(url)
        fetcher = self.fetcher.get()
        try:
            Fetcher.check_url(url)
            if web is not None:
                # An archive answers first: the policy is asked of the address recorded at fetch time
                # (offline, nothing is resolved); a refused one is refused from the archive too.
                archived = web.fetch_archived(url)
                if isinstance(archived, FetchResult):
                    return self._page_of(url, archived, source="archive")
                if archived is not None:
                    return Page(**{**archived, "source": "archive"})
                if web.web.offline:
                    raise web.not_archived(url)
            fetcher.permit(url)  # policy before cache: the cache never answers for a URL refused now
        except FetchError as exc:
            raise ReadError(str(exc)) from exc
        use_cache = not headers
        if use_cache:
            cached = self.cache.get(url)
            if cached is not None and self._permitted(fetcher, cached.final_url):
                if web is not None:
                    web.record_cached_page(page_fields(cached), cached.fetched_at)
                return cached
        page = self._fetch(url, headers, cancel, web)
        if use_cache:
            self.cache.put(page)
        return page

    @staticmethod
    def _permitted(fetcher: Fetcher, url: str) -> bool:
        """Where a cached page was redirected to must be allowed now too; if not, fetch afresh (and be refused)."""
        try:
            fetcher.permit(url)
        except FetchError:
            return False
        return True

    def _fetch(
        self, url: str, headers: dict[str, str] | None, cancel: Callable[[], bool] | None, web: WebCall | None
    ) -> Page:
        try:
            if web is not None:
                result = web.fetch_live(self.fetcher.get, url, headers, cancel)
            else:
                result = self.fetcher.get().fetch(url, headers=headers, cancel=cancel)
        except FetchError as exc:
            raise ReadError(str(exc)) from exc
        return self._page_of(url, result)

    def _page_of(self, url: str, result: FetchResult, source: str = "web") -> Page:
        if not result.ok:
            raise ReadError(f"{http_reason(result.status_code)} from {result.final_url}")
        if not result.content.strip():
            raise ReadError(f"{result.final_url} returned an empty body")
        try:
            document = convert(
                result.content,
                content_type=result.content_type,
                name=urlsplit(result.final_url).path,
                charset=result.charset,
                url=result.final_url,
            )
        except UnsupportedDocument as exc:
            raise ReadError(f"cannot read {result.final_url} as text: {exc}") from exc
        if not document.text.strip():
            raise ReadError(
                f"{_TEXT_KINDS_WITHOUT_TEXT} at {result.final_url} (the page may build its content with JavaScript)"
            )
        return Page(
            url=url,
            final_url=result.final_url,
            title=document.title,
            text=document.text,
            kind=document.kind,
            content_type=result.content_type,
            source=source,
            fetched_at=time.time(),
        )

    def _read_corpus(self, url: str) -> Page:
        doc_id = parse_document_url(url)
        if doc_id is None:
            raise ReadError(f"{url} is not a corpus document URL (corpus://ID/NAME)")
        try:
            document, text = self.corpus.read(doc_id)
        except CorpusError as exc:
            raise ReadError(str(exc)) from exc
        return Page(url, url, document.title, text, document.kind, "", "corpus", document.indexed_at)

    def _read_zim(self, url: str) -> Page:
        parsed = parse_entry_url(url)
        if parsed is None:
            raise ReadError(f"{url} is not a ZIM entry URL (zim://ARCHIVE/PATH)")
        try:
            entry = self.zim.read(*parsed)
            document = convert(entry.content, content_type=entry.mimetype, name=entry.path)
        except (ZimError, UnsupportedDocument) as exc:
            raise ReadError(str(exc)) from exc
        except RuntimeError as exc:
            raise ReadError(f"the ZIM archive could not be read: {exc}") from exc
        return Page(url, entry.url, entry.title or document.title, document.text, document.kind, entry.mimetype, "zim")


def page_fields(page: Page) -> dict[str, str]:
    """A cached page as the archive keeps it (a resource record) and gives it back."""
    return {
        "url": page.url,
        "final_url": page.final_url,
        "title": page.title,
        "text": page.text,
        "kind": page.kind,
        "content_type": page.content_type,
    }
