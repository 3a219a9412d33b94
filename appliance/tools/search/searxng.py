"""SearXNG's JSON API as a search source.

SearXNG has no `num`: it answers fixed pages whose size depends on its engines.
To fill `page * num` results the source reads pages 1, 2, ... (at most
`max_pages`), and keeps recent pages in memory so the model's "page 2" does not
fetch page 1 again. Every failure (refused connection, timeout, HTTP error,
engines that did not answer) becomes a SourceResult with a plain-language error.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections import OrderedDict
from typing import Any

import httpx

from appliance.tools.archive import NotArchived, WebCall
from appliance.tools.fetcher import Exchange, exchange_of
from appliance.tools.search.results import Hit, SearchRequest, SourceResult

_CACHE_SECONDS = 300.0
_CACHE_ENTRIES = 64
_FULL_PAGE = 10


class SearxngError(Exception):
    """SearXNG could not answer; the message says why and what to do."""


def request_params(request: SearchRequest, pageno: int) -> dict[str, str]:
    """Query-string parameters for one SearXNG page."""
    params = {"q": request.q, "format": "json", "pageno": str(pageno), "safesearch": "0"}
    language = request.language()
    if language:
        params["language"] = language
    time_range = request.time_range()
    if time_range:
        params["time_range"] = time_range
    return params


def format_date(value: Any) -> str | None:
    """SearXNG's ISO publishedDate as Serper writes dates ("Mar 5, 2024")."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return f"{parsed:%b} {parsed.day}, {parsed.year}"


def map_results(data: dict[str, Any]) -> list[Hit]:
    """SearXNG results -> hits (title, link, snippet, date), in SearXNG's order."""
    hits = []
    for item in data.get("results") or []:
        if not isinstance(item, dict):
            continue
        url = item.get("url")
        if not isinstance(url, str) or not url:
            continue
        title = str(item.get("title") or url)
        snippet = str(item.get("content") or "")
        date = format_date(item.get("publishedDate"))
        hits.append(Hit(" ".join(title.split()), url, " ".join(snippet.split()), "searxng", date))
    return hits


def engine_failures(data: dict[str, Any]) -> list[str]:
    """'engine (reason)' for each engine SearXNG reports as unresponsive."""
    failures = []
    for entry in data.get("unresponsive_engines") or []:
        if isinstance(entry, (list, tuple)) and entry:
            name = str(entry[0])
            reason = str(entry[1]) if len(entry) > 1 and entry[1] else "no answer"
            failures.append(f"{name} ({reason})")
        elif isinstance(entry, str):
            failures.append(entry)
    return failures


class SearxngClient:
    """A small client for one SearXNG instance; safe to share between threads."""

    def __init__(self, base_url: str, *, timeout: float = 20.0, max_pages: int = 5) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_pages = max(1, max_pages)
        # SearXNG is the user's own service, usually on loopback: this client is
        # not the model's fetcher and is never pointed at a model-chosen URL.
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            follow_redirects=False,
            trust_env=False,
            headers={"Accept": "application/json", "User-Agent": "appliance-research-agent"},
        )
        self._cache: OrderedDict[tuple[tuple[str, str], ...], tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def fetch_page(self, request: SearchRequest, pageno: int, web: WebCall | None = None) -> dict[str, Any]:
        """One SearXNG page; with a run's `web`, from its archive or fetched and archived."""
        params = request_params(request, pageno)
        key = tuple(sorted(params.items()))
        with self._lock:
            cached = self._cache.get(key)
            if cached and time.monotonic() - cached[0] < _CACHE_SECONDS:
                self._cache.move_to_end(key)
                return cached[1]
        if web is None:
            data = self._get(params)
        else:
            url = str(httpx.URL(f"{self.base_url}/search", params=params))
            try:
                data = web.search(url, lambda exchanges: self._get(params, exchanges), self._answer)
            except NotArchived as exc:
                raise SearxngError(str(exc)) from exc
        with self._lock:
            self._cache[key] = (time.monotonic(), data)
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return data

    def _get(self, params: dict[str, str], exchanges: list[Exchange] | None = None) -> dict[str, Any]:
        url = f"{self.base_url}/search"
        fix_start = "start it with `appliance searxng start` or set [search] searxng_url"
        try:
            response = self.client.get(url, params=params)
        except httpx.ConnectError as exc:
            raise SearxngError(f"SearXNG at {self.base_url} is not reachable ({_reason(exc)}); {fix_start}") from exc
        except httpx.TimeoutException as exc:
            raise SearxngError(
                f"SearXNG at {self.base_url} did not answer within {self.timeout:g} seconds; "
                "try again, or raise [search] timeout"
            ) from exc
        except httpx.HTTPError as exc:
            raise SearxngError(f"SearXNG at {self.base_url} failed: {type(exc).__name__}: {exc}") from exc
        if exchanges is not None:
            exchanges.append(exchange_of(response, response.content))
        return self._answer(response.status_code, response.headers.get("location"), response.content)

    def _answer(self, status: int, location: str | None, body: bytes) -> dict[str, Any]:
        """SearXNG's answer (live, or as archived) as its JSON; SearxngError with the fix when it is not one."""
        if status in (301, 302, 303, 307, 308):
            raise SearxngError(
                f"SearXNG redirected the query to {location or '?'} "
                "(a !bang in the query?); rephrase the query without a leading '!'"
            )
        if status == 403:
            raise SearxngError(
                f"SearXNG at {self.base_url} refuses JSON output (HTTP 403); add json to search.formats "
                "in its settings.yml (`appliance searxng start` does this)"
            )
        if status == 429:
            raise SearxngError(
                f"SearXNG at {self.base_url} rate-limited the request (HTTP 429); set server.limiter: false "
                "in its settings.yml for a private instance"
            )
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise SearxngError(
                f"SearXNG at {self.base_url} answered HTTP {status} with something that is not JSON; "
                "check that [search] searxng_url points to SearXNG"
            ) from exc
        if not isinstance(data, dict):
            raise SearxngError(f"SearXNG at {self.base_url} answered with unexpected JSON")
        if status != 200:
            detail = data.get("error") or f"HTTP {status}"
            raise SearxngError(f"SearXNG rejected the query: {detail}")
        return data

    name = "searxng"

    def with_web(self, web: WebCall) -> ArchivedSearxng:
        return ArchivedSearxng(self, web)

    def search(self, request: SearchRequest, limit: int, web: WebCall | None = None) -> SourceResult:
        """The top `limit` hits, reading as many SearXNG pages as needed (at most max_pages)."""
        result = SourceResult("searxng")
        seen: set[str] = set()
        deadline = time.monotonic() + self.timeout
        failures: list[str] = []
        for pageno in range(1, self.max_pages + 1):
            try:
                data = self.fetch_page(request, pageno, web)
            except SearxngError as exc:
                if pageno == 1:
                    result.error = str(exc)
                    return result
                result.warnings.append(f"stopped reading SearXNG after page {pageno - 1}: {exc}")
                break
            failures = engine_failures(data)
            new = [hit for hit in map_results(data) if hit.link not in seen]
            for hit in new:
                seen.add(hit.link)
            result.hits.extend(new)
            # A page shorter than SearXNG's usual ten results is taken as the last one: asking
            # for the next would cost another round of engine requests for, most likely, nothing.
            if len(result.hits) >= limit or len(new) < _FULL_PAGE or time.monotonic() > deadline:
                break
        if failures:
            message = "SearXNG engines did not answer: " + "; ".join(failures)
            if result.hits:
                result.warnings.append(message)
            else:
                result.error = message + ". The search could not be run; try again later"
        del result.hits[limit:]
        return result


class ArchivedSearxng:
    """A SearXNG source bound to one tool call's web (its archive, or live and archived)."""

    name = "searxng"

    def __init__(self, client: SearxngClient, web: WebCall) -> None:
        self.client = client
        self.web = web

    def search(self, request: SearchRequest, limit: int) -> SourceResult:
        return self.client.search(request, limit, self.web)


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    return text or type(exc).__name__
