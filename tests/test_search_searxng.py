"""google_search against a real SearXNG (offline, over a local database): mapping, paging, empty, failures."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from appliance.config import Settings, load_settings
from appliance.tools.base import CallContext, ToolBox, ToolOutput
from appliance.tools.search.results import SearchRequest
from appliance.tools.search.searxng import SearxngClient, format_date, request_params
from appliance.tools.search.server import SearchServer, create_server
from appliance.tools.specs import SEARCH_SERVER, SEARCH_TOOLS
from tests.pagefixtures import PageServer, Response, html
from tests.searxng_fixture import PAGING_ROWS, SearxngInstance, searxng, searxng_factory  # noqa: F401


def settings_for(url: str, home: Path, **search: Any) -> Settings:
    overrides = {"search.searxng_url": url, **{f"search.{k}": v for k, v in search.items()}}
    return load_settings(overrides=overrides, environ={"APPLIANCE_HOME": str(home)})


def ctx(tmp_path: Path) -> CallContext:
    return CallContext("test", tmp_path, tmp_path, tmp_path)


@pytest.fixture
def server(searxng: SearxngInstance, tmp_path: Path) -> Iterator[SearchServer]:  # noqa: F811
    instance = SearchServer(settings_for(searxng.url, tmp_path / "home"))
    yield instance
    instance.close()


def search(server: SearchServer, tmp_path: Path, **arguments: Any) -> tuple[ToolOutput, dict[str, Any]]:
    output = server.call("google_search", arguments, ctx(tmp_path))
    return output, json.loads(output.text)


def test_server_lists_the_reference_tool_unchanged(tmp_path: Path) -> None:
    server = create_server(settings_for("http://127.0.0.1:9", tmp_path), lambda: pytest.fail("no model needed"))
    assert server.name == SEARCH_SERVER == "search_and_scrape_webpage"
    assert tuple(server.tools()) == SEARCH_TOOLS


def test_results_map_to_serper_organic_entries(server: SearchServer, tmp_path: Path) -> None:
    output, data = search(server, tmp_path, q="sqlite")
    assert not output.is_error and "empty" not in output.meta
    assert output.text.startswith('{\n  "organic": [\n')  # pretty-printed, as the issue asks
    assert data["organic"] == [
        {
            "title": "SQLite full text search",
            "link": "https://localdocs.example/sqlite/fts5",
            "snippet": "The FTS5 extension adds fast full text indexes and MATCH queries to SQLite tables.",
            "position": 1,
        },
        {
            "title": "SQLite in read-only mode",
            "link": "https://localdocs.example/sqlite/read-only",
            "snippet": "Open a database with the URI parameter mode=ro so no process can change it by mistake.",
            "position": 2,
        },
    ]
    assert data["searchParameters"] == {
        "q": "sqlite",
        "gl": "us",
        "hl": "en",
        "type": "search",
        "num": 10,
        "page": 1,
        "engine": "searxng",
    }


def test_paging_walks_searxng_pages(server: SearchServer, tmp_path: Path) -> None:
    links = [row[1] for row in PAGING_ROWS]
    seen: list[str] = []
    for page in (1, 2, 3):
        _, data = search(server, tmp_path, q="release notes", page=page)
        organic = data["organic"]
        assert [e["position"] for e in organic] == list(range((page - 1) * 10 + 1, (page - 1) * 10 + 1 + len(organic)))
        seen += [e["link"] for e in organic]
    assert seen == links  # 25 rows over SearXNG pages of 10: every one once, in order

    # num that does not match SearXNG's page size: page 2 of 15 needs SearXNG pages 1-3.
    _, data = search(server, tmp_path, q="release notes", num=15, page=2)
    assert [e["link"] for e in data["organic"]] == links[15:]
    assert data["organic"][0]["position"] == 16
    _, data = search(server, tmp_path, q="release notes", num="4", page="3")
    assert [e["link"] for e in data["organic"]] == links[8:12]


def test_page_past_the_end_is_empty(server: SearchServer, tmp_path: Path) -> None:
    output, data = search(server, tmp_path, q="release notes", page=4)
    assert data["organic"] == [] and output.meta["empty"] is True


def test_empty_result_is_marked_for_the_loop(server: SearchServer, tmp_path: Path) -> None:
    output, data = search(server, tmp_path, q="quantum marmalade")
    assert data["organic"] == []
    assert output.meta.get("empty") is True and not output.is_error


def test_empty_query_is_the_reference_error(server: SearchServer, tmp_path: Path) -> None:
    output, data = search(server, tmp_path, q="   ")
    assert data == {"success": False, "error": "Search query 'q' is required and cannot be empty", "results": []}
    assert output.meta.get("empty") is True


def test_quoted_query_is_retried_without_quotes(server: SearchServer, tmp_path: Path) -> None:
    # SearXNG's sqlite engine matches the quote characters literally, so only the retry finds it.
    _, data = search(server, tmp_path, q='"green tea"')
    assert data["organic"][0]["link"] == "https://localdocs.example/tea/green"
    assert data["searchParameters"]["q"] == "green tea"


def test_banned_urls_are_dropped(server: SearchServer, tmp_path: Path) -> None:
    _, data = search(server, tmp_path, q="tea", num=20)
    links = [e["link"] for e in data["organic"]]
    assert "https://localdocs.example/tea/green" in links
    assert not any("huggingface.co/datasets" in link for link in links)


def test_percent_escapes_are_decoded_like_the_reference(server: SearchServer, tmp_path: Path) -> None:
    _, data = search(server, tmp_path, q="sencha")
    # UTF-8 escapes become text; structural ones (%20 space, %2F slash) stay encoded.
    assert data["organic"][0]["link"] == "https://localdocs.example/thé/vert%20japonais?x=%2F"


def test_time_filter_reaches_searxng(server: SearchServer, tmp_path: Path) -> None:
    # SearXNG leaves out engines that cannot filter by time; the sqlite engine is one.
    output, data = search(server, tmp_path, q="tea", tbs="qdr:w")
    assert data["organic"] == [] and output.meta["empty"] is True
    assert data["searchParameters"]["tbs"] == "qdr:w"
    _, data = search(server, tmp_path, q="tea", tbs="not-a-filter", hl="fr", gl="ca")
    assert len(data["organic"]) == 3


def test_request_parameters_map_serper_onto_searxng() -> None:
    params = request_params(SearchRequest("tea", hl="en", gl="gb", tbs="qdr:h"), 2)
    assert params == {
        "q": "tea",
        "format": "json",
        "pageno": "2",
        "safesearch": "0",
        "language": "en-GB",
        "time_range": "day",
    }
    assert request_params(SearchRequest("x", hl="zh-TW", gl="us", tbs="qdr:y"), 1)["language"] == "zh-TW"
    assert "language" not in request_params(SearchRequest("x", hl="english"), 1)
    assert request_params(SearchRequest("x", hl="de", gl="invalid"), 1)["language"] == "de"
    assert format_date("2024-03-05T10:00:00") == "Mar 5, 2024"
    assert format_date("yesterday") is None


def test_searxng_stopped_mid_run(
    searxng_factory: Callable[..., SearxngInstance],  # noqa: F811
    tmp_path: Path,
) -> None:
    instance = searxng_factory()
    settings = settings_for(instance.url, tmp_path / "home")
    toolbox = ToolBox([SearchServer(settings)])
    call_ctx = ctx(tmp_path)
    first = toolbox.call(SEARCH_SERVER, "google_search", {"q": "tea"}, call_ctx)
    assert first.status == "ok" and len(json.loads(first.text)["organic"]) == 3

    instance.stop()
    second = toolbox.call(SEARCH_SERVER, "google_search", {"q": "bicycle"}, call_ctx)
    assert second.status == "error"  # the server answered with its own error; nothing crashed
    data = json.loads(second.text)
    assert data["success"] is False and data["results"] == []
    assert f"SearXNG at {instance.url} is not reachable" in data["error"]
    assert "appliance searxng start" in data["error"]
    assert "empty" not in second.meta  # not rolled back: asking again would meet the same stopped server
    toolbox.close()


def test_engine_errors_become_a_clear_error(
    searxng_factory: Callable[..., SearxngInstance],  # noqa: F811
    tmp_path: Path,
) -> None:
    instance = searxng_factory(with_table=False)  # the localdocs engine fails: no docs table
    server = SearchServer(settings_for(instance.url, tmp_path / "home"))
    output, data = search(server, tmp_path, q="tea")
    assert output.is_error
    assert "SearXNG engines did not answer: localdocs" in data["error"]
    server.close()


def test_slow_searxng_times_out_cleanly(tmp_path: Path) -> None:
    def slow() -> Response:
        time.sleep(3)
        return Response(200, b'{"results": []}', {"Content-Type": "application/json"})

    fake = PageServer({"/search": slow})
    try:
        server = SearchServer(settings_for(fake.base, tmp_path / "home", timeout=1.0))
        started = time.monotonic()
        output, data = search(server, tmp_path, q="tea")
        assert time.monotonic() - started < 2.5
        assert output.is_error and "did not answer within 1 seconds" in data["error"]
        server.close()
    finally:
        fake.close()


def test_not_searxng_at_the_url(tmp_path: Path) -> None:
    fake = PageServer({"/search": html("<html><body>a blog</body></html>")})
    try:
        client = SearxngClient(fake.base, timeout=2)
        result = client.search(SearchRequest("tea"), 10)
        assert result.error is not None and "not JSON" in result.error
        client.close()
    finally:
        fake.close()


def test_concurrent_searches_share_one_client(server: SearchServer, tmp_path: Path) -> None:
    results: list[int] = []

    def run(q: str) -> None:
        results.append(len(search(server, tmp_path, q=q)[1]["organic"]))

    threads = [threading.Thread(target=run, args=(q,)) for q in ("tea", "bicycle", "sqlite", "zephyr")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [2, 2, 3, 10]


def test_searxng_pages_are_read_only_when_needed(tmp_path: Path) -> None:
    """Pages 1 and 2 hold ten results each, page 3 none; a short page is taken as the last."""
    fake: PageServer

    def search_page() -> Response:
        pageno = int(parse_qs(urlsplit(fake.requests[-1]).query)["pageno"][0])
        count = 10 if pageno <= 2 else 0
        results = [{"title": f"r{n}", "url": f"https://e.org/{pageno}/{n}", "content": ""} for n in range(count)]
        return Response(200, json.dumps({"results": results}).encode(), {"Content-Type": "application/json"})

    fake = PageServer({"/search": search_page})
    client = SearxngClient(fake.base, timeout=5)

    def pages_read(num: int) -> tuple[int, list[str]]:
        client.clear_cache()
        fake.requests.clear()
        hits = client.search(SearchRequest("q", num=num), num).hits
        return len(hits), [parse_qs(urlsplit(r).query)["pageno"][0] for r in fake.requests]

    try:
        assert pages_read(10) == (10, ["1"])
        assert pages_read(15) == (15, ["1", "2"])
        assert pages_read(50) == (20, ["1", "2", "3"])
    finally:
        client.close()
        fake.close()
