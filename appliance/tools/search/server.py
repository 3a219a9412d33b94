"""The `search_and_scrape_webpage` tool server: google_search answered by SearXNG and offline sources.

Results as the reference's v1.0 server gives them: `{"organic": [...],
"searchParameters": {...}}`. A search with no organic results is marked
`meta["empty"]`, which the loop treats as a wasted turn (the reference's
is_google_search_empty_result). A search no source could answer is an error
result the model reads as is; it is not rolled back, because asking again
would meet the same stopped SearXNG.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from appliance.config import Settings
from appliance.llm.base import Backend
from appliance.protocol.tooldefs import ToolSpec
from appliance.tools.base import CallContext, ToolOutput, ToolServer
from appliance.tools.search.engine import SearchEngine
from appliance.tools.search.results import BadArguments, error_payload, parse_request
from appliance.tools.specs import SEARCH_SERVER, SEARCH_TOOLS


class SearchServer(ToolServer):
    name = SEARCH_SERVER

    def __init__(self, settings: Settings) -> None:
        self.engine = SearchEngine(settings.search, settings.dirs)

    def tools(self) -> Sequence[ToolSpec]:
        return SEARCH_TOOLS

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        if tool != "google_search":
            return ToolOutput(f"Unknown tool: {tool}", is_error=True)
        try:
            request = parse_request(arguments)
        except BadArguments as exc:
            # The reference answers these with an error object and no organic
            # results, which its loop rolls back like an empty search.
            text = json.dumps(error_payload(str(exc)), ensure_ascii=False, indent=2)
            return ToolOutput(text, meta={"empty": True})
        web = ctx.web.call() if ctx.web is not None else None
        outcome = self.engine.search(request, web)
        meta: dict[str, Any] = {"sources": outcome.sources}
        if web is not None:
            meta.update(web.meta())
        if outcome.warnings:
            meta["warnings"] = outcome.warnings
        if outcome.status == "unavailable":
            return ToolOutput(outcome.text, is_error=True, meta={**meta, "unavailable": True})
        if outcome.status == "empty":
            meta["empty"] = True
        return ToolOutput(outcome.text, meta=meta)

    def close(self) -> None:
        self.engine.close()


def create_server(settings: Settings, get_backend: Callable[[], Backend]) -> ToolServer:
    """Cheap: checks the [search] sources names, opens nothing."""
    return SearchServer(settings)
