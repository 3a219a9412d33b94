"""The `jina_scrape_llm_summary` tool server: scrape_and_extract_info, read locally and extracted by an LLM.

The answer keeps the reference's JSON (success, url, extracted_info, error,
scrape_stats, model_used, tokens_used), so the model reads what it was trained
on; only the extract enters the agent's context, never the whole page.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.llm.base import Backend
from appliance.protocol.tooldefs import ToolSpec
from appliance.tools.archive import RecordRef, WebCall, warc_date
from appliance.tools.base import CallContext, ToolOutput, ToolServer
from appliance.tools.scrape.cache import Page
from appliance.tools.scrape.extract import Extractor
from appliance.tools.scrape.reader import PageReader, ReadError
from appliance.tools.specs import SCRAPE_SERVER, SCRAPE_TOOLS

_MAX_HEADERS = 20
_MAX_HEADER_CHARS = 8192
HF_REFUSAL = (
    "You are trying to scrape a Hugging Face dataset for answers, please do not use the scrape tool for this purpose."
)


def is_huggingface_dataset_or_space(url: str) -> bool:
    return "huggingface.co/datasets" in url or "huggingface.co/spaces" in url


def check_headers(value: Any) -> dict[str, str] | None:
    """The model's custom_headers as a str -> str dict; ValueError with the reason otherwise."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ValueError("custom_headers must be an object of header names to string values")
    if len(value) > _MAX_HEADERS:
        raise ValueError(f"custom_headers has {len(value)} entries; at most {_MAX_HEADERS} are allowed")
    headers: dict[str, str] = {}
    for name, raw in value.items():
        text = raw if isinstance(raw, str) else json.dumps(raw) if raw is not None else ""
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "\r\n:"):
            raise ValueError(f"invalid header name {name!r}")
        if any(c in text for c in "\r\n") or len(text) > _MAX_HEADER_CHARS:
            raise ValueError(f"invalid value for header {name!r}")
        if name.strip().lower() in ("host", "content-length", "transfer-encoding", "connection"):
            continue  # the fetcher sets these; a model-chosen Host would not change where it connects anyway
        headers[name.strip()] = text
    return headers or None


_WORD = re.compile(r"\w{3,}")
PASSAGE_CHARS = 600


def best_passage(text: str, extract: str, limit: int = PASSAGE_CHARS) -> str:
    """The paragraph of `text` that shares the most words with the extract: the passage it came from.

    Words are compared case-folded (three letters or more); a tie keeps the
    earlier paragraph, and with no word in common the page's opening is given.
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paragraphs:
        return ""
    wanted = {w.casefold() for w in _WORD.findall(extract)}
    best, best_score = paragraphs[0], 0
    for paragraph in paragraphs:
        score = len(wanted & {w.casefold() for w in _WORD.findall(paragraph)})
        if score > best_score:
            best, best_score = paragraph, score
    return best if len(best) <= limit else best[: limit - 1].rstrip() + "…"


def scrape_stats(text: str, max_chars: int) -> dict[str, Any]:
    """The reference's statistics about the text handed to the extractor."""
    shown = text[:max_chars]
    return {
        "line_count": text.count("\n") + 1 if text else 0,
        "char_count": len(text),
        "last_char_line": shown.count("\n") + 1 if shown else 0,
        "all_content_displayed": len(text) <= max_chars,
    }


@dataclass
class ScrapeOutcome:
    payload: dict[str, Any]
    page: Page | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return bool(self.payload.get("success"))

    @property
    def text(self) -> str:
        return json.dumps(self.payload, ensure_ascii=False)


def failure(url: str, error: str) -> ScrapeOutcome:
    return ScrapeOutcome(
        {"success": False, "url": url, "extracted_info": "", "error": error, "scrape_stats": {}, "tokens_used": 0}
    )


class ScrapeServer(ToolServer):
    name = SCRAPE_SERVER

    def __init__(self, settings: Settings, get_backend: Callable[[], Backend]) -> None:
        self.settings = settings
        self.get_backend = get_backend
        self.reader = PageReader(settings)
        self._extractor: Extractor | None = None
        self._owns_backend = settings.extraction.backend != "same"
        self._lock = threading.Lock()

    def tools(self) -> Sequence[ToolSpec]:
        return SCRAPE_TOOLS

    def extractor(self) -> Extractor:
        with self._lock:
            if self._extractor is None:
                from appliance.llm.factory import build_extraction_backend

                backend = build_extraction_backend(self.settings, self.get_backend)
                self._extractor = Extractor(backend, max_tokens=self.settings.extraction.max_tokens)
            return self._extractor

    def read(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        cancel: threading.Event | None = None,
        web: WebCall | None = None,
    ) -> Page:
        return self.reader.read(url, headers=headers, cancel=cancel.is_set if cancel else None, web=web)

    def scrape(
        self,
        url: str,
        info_to_extract: str,
        headers: Any = None,
        cancel: threading.Event | None = None,
        web: WebCall | None = None,
    ) -> ScrapeOutcome:
        if is_huggingface_dataset_or_space(url):
            return failure(url, HF_REFUSAL)
        try:
            checked = check_headers(headers)
        except ValueError as exc:
            return failure(url, f"Scraping failed: {exc}")
        try:
            page = self.read(url, checked, cancel, web)
        except ReadError as exc:
            return failure(url, f"Scraping failed: {exc}")
        max_chars = self.settings.scrape.max_chars
        content = page.text[:max_chars]
        try:
            extractor = self.extractor()
        except ApplianceError as exc:
            outcome = failure(url, f"the extraction model is unavailable: {exc.one_line()}")
            outcome.page = page
            return outcome
        extraction = extractor.extract(info_to_extract, content, cancel)
        payload = {
            "success": extraction.success,
            "url": url,
            "extracted_info": extraction.text,
            "error": extraction.error,
            "scrape_stats": scrape_stats(page.text, max_chars),
            "model_used": extraction.model,
            "tokens_used": extraction.tokens_used,
        }
        meta = {
            "source": page.source,
            "final_url": page.final_url,
            "kind": page.kind,
            "page_chars": len(page.text),
            "parts": extraction.parts,
            "extraction_calls": extraction.calls,
        }
        if extraction.success:
            meta["passage"] = best_passage(content, extraction.text)
        return ScrapeOutcome(payload, page, meta)

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        if tool != "scrape_and_extract_info":
            return ToolOutput(f"Unknown tool: {tool}", is_error=True)
        url = str(arguments.get("url") or "")
        info = str(arguments.get("info_to_extract") or "")
        web = ctx.web.call() if ctx.web is not None else None
        outcome = self.scrape(url, info, arguments.get("custom_headers"), ctx.cancel, web)
        meta = dict(outcome.meta)
        if web is not None:
            passage = str(meta.pop("passage", ""))
            if outcome.page is not None and outcome.page.source in ("corpus", "zim"):
                # Read from the local index, not fetched: linked so the report can cite it, nothing archived.
                web.refs.append(
                    RecordRef(
                        "local",
                        url,
                        date=warc_date(outcome.page.fetched_at) if outcome.page.fetched_at else "",
                        origin=outcome.page.source,
                    )
                )
            if passage and web.refs and web.refs[-1].kind != "gap":
                web.refs[-1] = dataclasses.replace(web.refs[-1], passage=passage)
            meta.update(web.meta())
        return ToolOutput(outcome.text, is_error=not outcome.success, meta=meta)

    def close(self) -> None:
        self.reader.close()
        if self._extractor is not None and self._owns_backend:
            self._extractor.backend.close()


def create_server(settings: Settings, get_backend: Callable[[], Backend]) -> ToolServer:
    """Cheap: the fetcher, the cache and the extraction model are opened on first use."""
    return ScrapeServer(settings, get_backend)
