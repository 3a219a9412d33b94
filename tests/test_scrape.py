"""scrape_and_extract_info against a local HTTP server: reading, caching, failures, and extraction."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Settings, load_settings
from appliance.llm.base import Backend, ChatMessage
from appliance.tools.base import CallContext, ToolBox
from appliance.tools.scrape.extract import EXTRACT_INFO_PROMPT, Extractor, build_prompt, clean_reply, split_to_fit
from appliance.tools.scrape.server import HF_REFUSAL, ScrapeServer, create_server
from appliance.tools.search.corpus import Corpus
from appliance.tools.specs import SCRAPE_SERVER, SCRAPE_TOOLS
from tests.conftest import REPO_ROOT
from tests.pagefixtures import ARTICLE_FACTS, SJIS_TEXT, PageServer, standard_routes
from tests.scripted import RecordingReplay


@pytest.fixture(scope="module")
def pages() -> Iterator[PageServer]:
    server = PageServer(standard_routes())
    yield server
    server.close()


def make_settings(tmp_path: Path, pages: PageServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "scrape.allow_hosts": [f"127.0.0.1:{pages.port}"],
        "scrape.timeout": 2.0,
        "scrape.max_bytes": 100_000,
        **overrides,
    }
    return load_settings(overrides=values, environ={"APPLIANCE_HOME": str(tmp_path / "home")})


def scrape(server: ScrapeServer, url: str, info: str = "When did it open?", **extra: Any) -> tuple[dict[str, Any], Any]:
    output = server.call(
        "scrape_and_extract_info",
        {"url": url, "info_to_extract": info, **extra},
        CallContext("t", Path(), Path(), Path()),
    )
    data = json.loads(output.text)
    assert output.is_error == (not data["success"])
    return data, output


def test_prompt_is_the_reference_text() -> None:
    golden = (REPO_ROOT / "tests" / "golden" / "extract_info_prompt.txt").read_text(encoding="utf-8")
    assert golden == EXTRACT_INFO_PROMPT


def test_server_lists_the_reference_tool_unchanged(tmp_path: Path, pages: PageServer) -> None:
    server = create_server(make_settings(tmp_path, pages), lambda: pytest.fail("construction must not load a model"))
    assert server.name == SCRAPE_SERVER == "jina_scrape_llm_summary"
    assert tuple(server.tools()) == SCRAPE_TOOLS


def test_article_is_read_and_only_the_extract_returned(tmp_path: Path, pages: PageServer) -> None:
    backend = RecordingReplay(["The Kettle Valley Railway opened in 1915."], source="extract.jsonl")
    server = ScrapeServer(make_settings(tmp_path, pages), lambda: backend)
    data, output = scrape(server, pages.url("/article"))
    assert data["success"] is True and data["error"] == ""
    assert data["url"] == pages.url("/article")
    assert data["extracted_info"] == "The Kettle Valley Railway opened in 1915."
    assert data["model_used"] == "replay:extract.jsonl" and data["tokens_used"] > 100
    assert list(data) == ["success", "url", "extracted_info", "error", "scrape_stats", "model_used", "tokens_used"]
    [prompt] = backend.last_messages
    assert backend.purposes == ["extract"]
    assert prompt.startswith(EXTRACT_INFO_PROMPT.split("{}")[0] + "When did it open?")
    assert f"The line opened in {ARTICLE_FACTS['opened']}" in prompt
    assert "Sponsored" not in prompt and "gtag" not in prompt  # main text only, not the page's chrome
    page_text = prompt.split("CONTENT TO ANALYZE:\n")[1].rsplit("\n\nEXTRACTED INFORMATION:", 1)[0]
    assert data["scrape_stats"] == {
        "line_count": page_text.count("\n") + 1,
        "char_count": len(page_text),
        "last_char_line": page_text.count("\n") + 1,
        "all_content_displayed": True,
    }
    assert output.meta["source"] == "web" and output.meta["kind"] == "html"


def test_a_repeated_read_comes_from_the_cache(tmp_path: Path, pages: PageServer) -> None:
    backend = RecordingReplay(["first", "second", "third"])
    server = ScrapeServer(make_settings(tmp_path, pages), lambda: backend)
    before = pages.hits["/plain.txt"]
    _, first = scrape(server, pages.url("/plain.txt"), "notes")
    _, second = scrape(server, pages.url("/plain.txt"), "other question")
    assert pages.hits["/plain.txt"] == before + 1
    assert (first.meta["source"], second.meta["source"]) == ("web", "cache")
    assert (
        backend.last_messages[0].split("CONTENT TO ANALYZE:")[1]
        == backend.last_messages[1].split("CONTENT TO ANALYZE:")[1]
    )
    # A new process (new server object) still finds it: the cache is on disk.
    fresh = ScrapeServer(make_settings(tmp_path, pages), lambda: backend)
    _, third = scrape(fresh, pages.url("/plain.txt"), "third question")
    assert third.meta["source"] == "cache" and pages.hits["/plain.txt"] == before + 1


def test_a_cached_page_is_not_served_once_its_host_is_refused(tmp_path: Path, pages: PageServer) -> None:
    """Policy before cache: the page cache answers only for a URL the address policy allows now."""
    backend = RecordingReplay(["first", "second", "third", "fourth"])
    allowed = ScrapeServer(make_settings(tmp_path, pages), lambda: backend)
    data, _ = scrape(allowed, pages.url("/article"), "notes")
    assert data["success"]
    before = dict(pages.hits)
    # The same cache on disk, and an operator who no longer opens 127.0.0.1 to the model.
    closed = ScrapeServer(make_settings(tmp_path, pages, **{"scrape.allow_hosts": []}), lambda: backend)
    data, output = scrape(closed, pages.url("/article"), "notes again")
    assert not data["success"] and "refusing to fetch from 127.0.0.1" in output.text
    assert "cache" not in json.dumps(output.meta) and pages.hits == before
    assert ARTICLE_FACTS["engineer"] not in output.text  # nothing of the cached page's text
    # Opened again, the cached copy serves as before.
    _, again = scrape(ScrapeServer(make_settings(tmp_path, pages), lambda: backend), pages.url("/article"), "q")
    assert again.meta["source"] == "cache" and pages.hits == before


def test_a_cached_redirect_to_a_refused_host_is_not_served(tmp_path: Path) -> None:
    """The page a URL was redirected to must be allowed now too, not only the URL asked for."""
    from tests.pagefixtures import html, serving

    inner_page = {"/secret": html("<html><body><p>Internal secret page text.</p></body></html>")}
    with serving(inner_page) as inner, serving(standard_routes(other_port=inner.port)) as outer:
        backend = RecordingReplay(["first", "second"])
        both = [f"127.0.0.1:{outer.port}", f"127.0.0.1:{inner.port}"]
        opened = ScrapeServer(make_settings(tmp_path, outer, **{"scrape.allow_hosts": both}), lambda: backend)
        data, _ = scrape(opened, outer.url("/to-loopback"), "notes")
        assert data["success"] and inner.hits["/secret"] == 1
        only_outer = make_settings(tmp_path, outer, **{"scrape.allow_hosts": [f"127.0.0.1:{outer.port}"]})
        data, output = scrape(ScrapeServer(only_outer, lambda: backend), outer.url("/to-loopback"), "again")
        assert not data["success"] and "refusing to fetch" in output.text
        assert "Internal secret" not in output.text and inner.hits["/secret"] == 1


def test_custom_headers_are_sent_and_bypass_the_cache(tmp_path: Path, pages: PageServer) -> None:
    backend = RecordingReplay(["a", "b"])
    server = ScrapeServer(make_settings(tmp_path, pages), lambda: backend)
    before = pages.hits["/article"]
    for _ in range(2):
        data, _ = scrape(server, pages.url("/article"), custom_headers={"X-Session": "abc123", "Host": "evil.example"})
        assert data["success"]
    assert pages.hits["/article"] == before + 2
    assert pages.last_headers["/article"]["x-session"] == "abc123"
    assert pages.last_headers["/article"]["host"] == f"127.0.0.1:{pages.port}"
    bad, _ = scrape(server, pages.url("/article"), custom_headers={"X-Bad": "a\r\nInjected: 1"})
    assert "invalid value for header" in bad["error"]


def test_pdf_is_converted(tmp_path: Path, pages: PageServer) -> None:
    backend = RecordingReplay(["Lead: 3.4 ppb."])
    server = ScrapeServer(make_settings(tmp_path, pages), lambda: backend)
    data, output = scrape(server, pages.url("/report-octet"), "lead level")
    assert data["extracted_info"] == "Lead: 3.4 ppb." and output.meta["kind"] == "pdf"
    assert "The 90th percentile lead level was 3.4 ppb" in backend.last_messages[0]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/latin1", "Le café crème coûte 3,50 € à la brasserie"),
        ("/sjis", SJIS_TEXT),
    ],
)
def test_non_utf8_pages_are_decoded(tmp_path: Path, pages: PageServer, path: str, message: str) -> None:
    backend = RecordingReplay(["ok"])
    server = ScrapeServer(make_settings(tmp_path, pages), lambda: backend)
    assert scrape(server, pages.url(path))[0]["success"]
    assert message in backend.last_messages[0]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/loop-a", "redirect loop"),
        ("/chain/0", "more than 5 redirects"),
        ("/to-private", "refusing to fetch from 10.255.255.1"),
        ("/to-metadata", "refusing to fetch from 169.254.169.254"),
        ("/huge", "over the 100,000-byte limit"),
        ("/slow", "took longer than 2s"),
        ("/image.png", "content type is image/png"),
        ("/archive.zip", "content type is application/zip"),
        ("/missing", "HTTP 404 Not Found"),
        ("/js-only", "no readable text"),
    ],
)
def test_failures_are_reported_without_calling_the_model(
    tmp_path: Path, pages: PageServer, path: str, error: str
) -> None:
    backend = RecordingReplay([])
    server = ScrapeServer(make_settings(tmp_path, pages), lambda: backend)
    data, _ = scrape(server, pages.url(path))
    assert data["success"] is False and data["error"].startswith("Scraping failed: ")
    assert error in data["error"]
    assert data["scrape_stats"] == {} and data["tokens_used"] == 0 and data["extracted_info"] == ""
    assert backend.last_messages == []


def test_loopback_is_refused_unless_allowed(tmp_path: Path, pages: PageServer) -> None:
    server = ScrapeServer(make_settings(tmp_path, pages, **{"scrape.allow_hosts": []}), lambda: RecordingReplay([]))
    before = pages.hits["/article"]
    data, _ = scrape(server, pages.url("/article"))
    assert "refusing to fetch from 127.0.0.1" in data["error"] and pages.hits["/article"] == before


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "", "javascript:alert(1)"])
def test_non_http_urls_are_refused(tmp_path: Path, pages: PageServer, url: str) -> None:
    server = ScrapeServer(make_settings(tmp_path, pages), lambda: RecordingReplay([]))
    data, _ = scrape(server, url)
    assert data["success"] is False and data["error"].startswith("Scraping failed: ")


def test_huggingface_datasets_are_refused_like_the_reference(tmp_path: Path, pages: PageServer) -> None:
    server = ScrapeServer(make_settings(tmp_path, pages), lambda: RecordingReplay([]))
    data, _ = scrape(server, "https://huggingface.co/datasets/gaia-benchmark/GAIA")
    assert data["error"] == HF_REFUSAL


def test_corpus_documents_are_read_without_network(tmp_path: Path, pages: PageServer) -> None:
    doc = tmp_path / "handbook.md"
    doc.write_text("# Handbook\n\nThe fire assembly point is the north car park.\n", encoding="utf-8")
    corpus = Corpus(tmp_path / "corpus.db")
    corpus.add(doc)
    [hit] = corpus.search("assembly point", 1)
    backend = RecordingReplay(["North car park."])
    settings = make_settings(tmp_path, pages, **{"search.corpus_db": str(corpus.path), "scrape.allow_hosts": []})
    server = ScrapeServer(settings, lambda: backend)
    data, output = scrape(server, hit.link, "Where is the assembly point?")
    assert data["extracted_info"] == "North car park." and output.meta["source"] == "corpus"
    assert "The fire assembly point is the north car park." in backend.last_messages[0]
    missing, _ = scrape(server, "corpus://999/nothing.md")
    assert "no document 999" in missing["error"]


def test_long_pages_are_split_and_the_extracts_merged(tmp_path: Path, pages: PageServer) -> None:
    probe = RecordingReplay([], context_length=1200)
    extractor = Extractor(probe, max_tokens=200)
    info = "What was the record snowfall?"
    reader_server = ScrapeServer(make_settings(tmp_path, pages), lambda: probe)
    text = reader_server.read(pages.url("/long")).text
    parts = split_to_fit(text, extractor.content_budget(info), probe.count_tokens)
    assert len(parts) >= 3

    answers = [f"part {i}: nothing relevant" for i in range(1, len(parts) + 1)]
    backend = RecordingReplay(
        [*answers, "merge: 14.6 metres in 1935", "final: 14.6 metres in the winter of 1935"], context_length=1200
    )
    settings = make_settings(tmp_path, pages, **{"extraction.max_tokens": 200})
    data, output = scrape(ScrapeServer(settings, lambda: backend), pages.url("/long"), info)
    assert data["success"], data["error"]
    assert output.meta["parts"] == len(parts)
    part_prompts = backend.last_messages[: len(parts)]
    merge_prompts = backend.last_messages[len(parts) :]
    assert all(backend.count_messages([ChatMessage("user", p)]) <= 1200 - 200 for p in backend.last_messages)
    # Nothing of the page is lost between the parts.
    for n in range(1, 61):
        assert any(f"Section {n}. The survey crews" in p for p in part_prompts)
    assert sum("14.6 metres" in p for p in part_prompts) == 1
    assert "[Extract from part 1 of" in merge_prompts[0]
    assert data["extracted_info"] == backend.turns[len(backend.last_messages) - 1].content
    assert output.meta["extraction_calls"] == len(backend.last_messages)


def test_thinking_is_stripped_and_repetition_retried(tmp_path: Path, pages: PageServer) -> None:
    assert clean_reply("<think>\nlet me look\n</think>\n\nOpened in 1915.") == "Opened in 1915."
    assert clean_reply("<think>ran out of tokens while thinking") == "ran out of tokens while thinking"
    looping = "the same line again and again. " * 20
    backend = RecordingReplay([looping, "<think>ok</think>Opened in 1915."])
    data, output = scrape(ScrapeServer(make_settings(tmp_path, pages), lambda: backend), pages.url("/article"))
    assert data["extracted_info"] == "Opened in 1915." and output.meta["extraction_calls"] == 2


def test_extraction_failures_are_results_not_crashes(tmp_path: Path, pages: PageServer) -> None:
    exhausted = RecordingReplay([])
    data, _ = scrape(ScrapeServer(make_settings(tmp_path, pages), lambda: exhausted), pages.url("/article"))
    assert (
        data["success"] is False and "the extraction model failed" in data["error"] and "replay file" in data["error"]
    )

    settings = make_settings(tmp_path, pages, **{"extraction.backend": "llamacpp"})
    data, _ = scrape(ScrapeServer(settings, lambda: exhausted), pages.url("/article"))
    assert "extraction model is unavailable" in data["error"] and "[extraction] path" in data["error"]

    empty = RecordingReplay(["", ""])
    data, _ = scrape(ScrapeServer(make_settings(tmp_path, pages), lambda: empty), pages.url("/plain.txt"))
    assert data["error"] == "the extraction model returned an empty answer"


def test_toolbox_maps_success_and_failure(tmp_path: Path, pages: PageServer) -> None:
    backend = RecordingReplay(["Opened in 1915."])
    toolbox = ToolBox([ScrapeServer(make_settings(tmp_path, pages), lambda: backend)])
    ctx = CallContext("t", tmp_path, tmp_path, tmp_path)
    ok = toolbox.call(
        SCRAPE_SERVER, "scrape_and_extract_info", {"url": pages.url("/article"), "info_to_extract": "x"}, ctx
    )
    bad = toolbox.call(
        SCRAPE_SERVER, "scrape_and_extract_info", {"url": pages.url("/missing"), "info_to_extract": "x"}, ctx
    )
    missing_arg = toolbox.call(SCRAPE_SERVER, "scrape_and_extract_info", {"url": "x"}, ctx)
    assert (ok.status, bad.status, missing_arg.status) == ("ok", "error", "bad_arguments")
    toolbox.close()


def test_tiny_gguf_extracts_through_llama_cpp(tmp_path: Path, pages: PageServer, tiny_gguf: Path) -> None:
    grammar = tmp_path / "answer.gbnf"
    grammar.write_text('root ::= "The railway opened in 1915."\n', encoding="utf-8")
    settings = make_settings(
        tmp_path,
        pages,
        **{
            "model.backend": "llamacpp",
            "model.path": str(tiny_gguf),
            "model.context_length": 1024,
            "extraction.output_grammar": str(grammar),
            "extraction.max_tokens": 64,
        },
    )
    from appliance.llm.factory import build_backend

    backend: Backend = build_backend(settings)
    server = ScrapeServer(settings, lambda: backend)
    data, output = scrape(server, pages.url("/article"))
    assert data["success"], data["error"]
    assert data["extracted_info"] == "The railway opened in 1915."
    assert data["model_used"] == "tiny.gguf" and data["tokens_used"] > 0
    # The article does not fit a 1,024-token context with this byte-level vocabulary: it was split and merged.
    assert output.meta["parts"] > 1 and output.meta["extraction_calls"] == output.meta["parts"] + 1
    assert build_prompt("q", "c").endswith("EXTRACTED INFORMATION:")
