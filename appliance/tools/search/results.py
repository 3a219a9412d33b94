"""The search tool's data: the model's arguments, ranked hits, their fusion, and the Serper-shaped answer.

Pure functions only; the sources (SearXNG, corpus, ZIM) and the server do the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

DEFAULT_NUM = 10
MAX_NUM = 100
MAX_PAGE = 50

# The reference filters these out of every result list (its _is_banned_url).
BANNED_URL_PARTS = ("unifuncs", "huggingface.co/datasets", "huggingface.co/spaces")

# Serper's tbs values -> SearXNG's time_range. SearXNG has no "past hour"; a day is the closest it offers.
TIME_RANGES = {"qdr:h": "day", "qdr:d": "day", "qdr:w": "week", "qdr:m": "month", "qdr:y": "year"}
# Seconds back from now for the same filters (the corpus filters on file modification time).
TIME_SPANS = {"qdr:h": 3600.0, "qdr:d": 86400.0, "qdr:w": 7 * 86400.0, "qdr:m": 31 * 86400.0, "qdr:y": 366 * 86400.0}

_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
_REGION = re.compile(r"^[a-z]{2}$")


class BadArguments(ValueError):
    """Arguments the search cannot run with; the message goes to the model."""


@dataclass(frozen=True)
class SearchRequest:
    q: str
    num: int = DEFAULT_NUM
    page: int = 1
    gl: str = "us"
    hl: str = "en"
    location: str | None = None
    tbs: str | None = None
    autocorrect: bool | None = None

    @property
    def wanted(self) -> int:
        """Results each source must rank to fill this page after fusion."""
        return self.page * self.num

    def with_query(self, q: str) -> SearchRequest:
        return replace(self, q=q)

    def language(self) -> str | None:
        """SearXNG's `language` (e.g. en-US) from hl and gl, or None to let SearXNG decide."""
        hl = (self.hl or "").strip().lower().replace("_", "-")
        gl = (self.gl or "").strip().lower()
        base = hl.split("-")[0]
        if not _LANGUAGE.match(base):
            return None
        region = hl.split("-")[1] if "-" in hl else gl
        return f"{base}-{region.upper()}" if _REGION.match(region or "") else base

    def time_range(self) -> str | None:
        return TIME_RANGES.get((self.tbs or "").strip().lower())

    def time_span(self) -> float | None:
        return TIME_SPANS.get((self.tbs or "").strip().lower())


def _as_int(value: Any, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadArguments(f"'{name}' must be an integer, not a boolean")
    try:
        return int(float(value))
    except (TypeError, ValueError) as exc:
        raise BadArguments(f"'{name}' must be an integer, got {value!r}") from exc


def parse_request(arguments: Mapping[str, Any]) -> SearchRequest:
    """The model's google_search arguments, checked and clamped to what the sources can serve."""
    q = arguments.get("q")
    if isinstance(q, (int, float)) and not isinstance(q, bool):
        q = str(q)  # the schema says string; FastMCP's lax validation accepted numbers too
    if not isinstance(q, str) or not q.strip():
        raise BadArguments("Search query 'q' is required and cannot be empty")
    num = min(max(_as_int(arguments.get("num"), "num", DEFAULT_NUM), 1), MAX_NUM)
    page = min(max(_as_int(arguments.get("page"), "page", 1), 1), MAX_PAGE)
    gl = arguments.get("gl")
    hl = arguments.get("hl")
    location = arguments.get("location")
    tbs = arguments.get("tbs")
    autocorrect = arguments.get("autocorrect")
    return SearchRequest(
        q=q.strip(),
        num=num,
        page=page,
        gl=gl if isinstance(gl, str) and gl else "us",
        hl=hl if isinstance(hl, str) and hl else "en",
        location=location if isinstance(location, str) and location else None,
        tbs=tbs if isinstance(tbs, str) and tbs else None,
        autocorrect=autocorrect if isinstance(autocorrect, bool) else None,
    )


@dataclass(frozen=True)
class Hit:
    title: str
    link: str
    snippet: str
    source: str
    date: str | None = None


@dataclass
class SourceResult:
    """One source's ranked hits, or the reason it has none."""

    source: str
    hits: list[Hit] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def is_banned(url: str) -> bool:
    return bool(url) and any(part in url for part in BANNED_URL_PARTS)


def _url_key(url: str) -> str:
    key = url.strip()
    key = re.sub(r"^https?://(www\.)?", "", key, flags=re.IGNORECASE)
    return key.rstrip("/").lower()


def fuse(rankings: Sequence[Sequence[Hit]], k: int = 60) -> list[Hit]:
    """Reciprocal rank fusion: score(d) = sum over lists of 1 / (k + rank), rank from 1.

    A document found by several sources (same URL, scheme and "www." ignored)
    adds up its scores and keeps the entry of the list that ranked it best.
    Ties keep list order, so the first source wins an even split.
    """
    scores: dict[str, float] = {}
    best: dict[str, tuple[int, int, Hit]] = {}
    for list_index, ranking in enumerate(rankings):
        seen: set[str] = set()
        for rank, hit in enumerate(ranking, 1):
            key = _url_key(hit.link)
            if key in seen:
                continue
            seen.add(key)
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
            if key not in best or (rank, list_index) < best[key][:2]:
                best[key] = (rank, list_index, hit)
    order = sorted(scores, key=lambda key: (-scores[key], best[key][0], best[key][1]))
    return [best[key][2] for key in order]


# ------------------------------------------------------------------ URL decoding (the reference's url_unquote)

# Percent-encodings that would change a URL's structure if decoded (RFC 3986 reserved, %, space).
_RESERVED = frozenset(
    {"%2F", "%3F", "%23", "%26", "%3D", "%40", "%3A", "%5B", "%5D", "%21", "%24", "%27", "%28", "%29", "%2A"}
    | {"%2B", "%2C", "%3B", "%25", "%20"}
)
_PERCENT_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def safe_unquote(url: str) -> str:
    """Decode percent-escapes that do not alter the URL (UTF-8 text such as Chinese), keep the rest."""

    def decode_run(match: re.Match[str]) -> str:
        run = match.group(0)
        out: list[str] = []
        pending = ""
        for i in range(0, len(run), 3):
            escape = run[i : i + 3]
            if escape.upper() in _RESERVED:
                out.append(unquote(pending) if pending else "")
                out.append(escape)
                pending = ""
            else:
                pending += escape
        if pending:
            out.append(unquote(pending))
        return "".join(out)

    return _PERCENT_RUN.sub(decode_run, url) if "%" in url else url


def decode_urls(data: Any) -> Any:
    """The reference applies safe_unquote to every string that contains 'http' and '%'."""
    if isinstance(data, str):
        return safe_unquote(data) if "%" in data and "http" in data else data
    if isinstance(data, list):
        return [decode_urls(item) for item in data]
    if isinstance(data, dict):
        return {key: decode_urls(value) for key, value in data.items()}
    return data


# ------------------------------------------------------------------ the answer


def organic_entries(hits: Sequence[Hit], first_position: int) -> list[dict[str, Any]]:
    entries = []
    for offset, hit in enumerate(hits):
        entry: dict[str, Any] = {"title": hit.title, "link": hit.link, "snippet": hit.snippet}
        if hit.date:
            entry["date"] = hit.date
        entry["position"] = first_position + offset
        entries.append(entry)
    return entries


def search_parameters(request: SearchRequest, engine: str) -> dict[str, Any]:
    """Echo of the query, in the shape of Serper's searchParameters."""
    params: dict[str, Any] = {
        "q": request.q,
        "gl": request.gl,
        "hl": request.hl,
        "type": "search",
        "num": request.num,
        "page": request.page,
    }
    if request.location:
        params["location"] = request.location
    if request.tbs:
        params["tbs"] = request.tbs
    if request.autocorrect is not None:
        params["autocorrect"] = request.autocorrect
    params["engine"] = engine
    return params


def error_payload(message: str) -> dict[str, Any]:
    """The reference's error answer: what the model saw when a search failed."""
    return {"success": False, "error": message, "results": []}
