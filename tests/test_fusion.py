"""Reciprocal rank fusion, and google_search merging a real SearXNG with the local corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import ConfigError
from appliance.tools.base import CallContext
from appliance.tools.search.corpus import Corpus
from appliance.tools.search.results import Hit, decode_urls, fuse, safe_unquote
from appliance.tools.search.server import SearchServer, create_server
from tests.searxng_fixture import SearxngInstance, searxng  # noqa: F401


def hits(source: str, *links: str) -> list[Hit]:
    return [Hit(link.upper(), link, "", source) for link in links]


def test_lists_interleave_by_rank() -> None:
    fused = fuse([hits("a", "a1", "a2", "a3"), hits("b", "b1", "b2")])
    assert [h.link for h in fused] == ["a1", "b1", "a2", "b2", "a3"]


def test_a_document_found_twice_rises() -> None:
    # b3 is third in one list and second in the other: 1/63 + 1/62 beats 1/61 alone.
    fused = fuse([hits("a", "a1", "b3", "a3"), hits("b", "b1", "x", "b3")])
    assert [h.link for h in fused][:2] == ["b3", "a1"]


def test_same_url_spellings_merge_and_keep_the_best_entry() -> None:
    first = [Hit("Page", "https://www.example.org/page/", "from a", "a")]
    second = [Hit("Other", "x", "", "b"), Hit("Page again", "http://example.org/page", "from b", "b")]
    fused = fuse([first, second])
    assert [h.snippet for h in fused] == ["from a", ""]
    assert len(fused) == 2


def test_k_controls_how_much_rank_matters() -> None:
    lists = [hits("a", "a1", "a2", "a3", "a4"), hits("b", "b1", "b2", "a4")]
    assert fuse(lists, k=1)[0].link == "a1"  # small k: rank 1 dominates
    assert fuse(lists, k=1000)[0].link == "a4"  # large k: agreement dominates


def test_safe_unquote_matches_the_reference() -> None:
    assert safe_unquote("https://zh.wikipedia.org/wiki/%E4%B8%AD%E5%9B%BD") == "https://zh.wikipedia.org/wiki/中国"
    assert safe_unquote("https://x.org/a%2Fb?q=%26%3D&s=%20x%41") == "https://x.org/a%2Fb?q=%26%3D&s=%20xA"
    assert decode_urls({"organic": [{"link": "https://x.org/caf%C3%A9", "n": 1}]}) == {
        "organic": [{"link": "https://x.org/café", "n": 1}]
    }
    assert decode_urls("no url %41 here") == "no url %41 here"


def test_searxng_and_corpus_are_merged(searxng: SearxngInstance, tmp_path: Path) -> None:  # noqa: F811
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("# Tea at the office\n\nThe office kettle makes green tea at 80 degrees.\n")
    (docs / "more-tea.md").write_text("# Tea stock\n\nWe keep oolong and green tea in the cupboard.\n")
    corpus = Corpus(tmp_path / "corpus.db")
    list(corpus.add_paths([docs]))
    settings = load_settings(
        overrides={"search.searxng_url": searxng.url, "search.corpus_db": str(corpus.path)},
        environ={"APPLIANCE_HOME": str(tmp_path / "home")},
    )
    server = SearchServer(settings)
    output = server.call("google_search", {"q": "green tea"}, CallContext("t", tmp_path, tmp_path, tmp_path))
    data = json.loads(output.text)
    links = [e["link"] for e in data["organic"]]
    assert links[0] == "https://localdocs.example/tea/green"  # SearXNG's first, winning the tie by source order
    assert links[1].startswith("corpus://")
    assert sum(link.startswith("corpus://") for link in links) == 2
    assert [e["position"] for e in data["organic"]] == list(range(1, len(links) + 1))
    assert data["searchParameters"]["engine"] == "searxng+corpus"
    assert output.meta["sources"] == ["searxng", "corpus"]
    server.close()


def test_offline_sources_answer_when_searxng_is_down(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("# Tea at the office\n\nThe office kettle makes green tea at 80 degrees.\n")
    corpus = Corpus(tmp_path / "corpus.db")
    list(corpus.add_paths([docs]))
    settings = load_settings(
        overrides={"search.searxng_url": "http://127.0.0.1:9", "search.corpus_db": str(corpus.path)},
        environ={"APPLIANCE_HOME": str(tmp_path / "home")},
    )
    server = SearchServer(settings)
    output = server.call("google_search", {"q": "kettle"}, CallContext("t", tmp_path, tmp_path, tmp_path))
    data = json.loads(output.text)
    assert not output.is_error
    assert data["organic"][0]["link"].startswith("corpus://")
    assert "searxng is unavailable" in data["warnings"][0] and "not reachable" in data["warnings"][0]
    assert output.meta["warnings"] == data["warnings"]
    server.close()


def test_no_source_configured(tmp_path: Path) -> None:
    settings = load_settings(
        overrides={"search.searxng_url": "", "search.sources": ["searxng", "corpus"]},
        environ={"APPLIANCE_HOME": str(tmp_path / "home")},
    )
    output = SearchServer(settings).call("google_search", {"q": "x"}, CallContext("t", tmp_path, tmp_path, tmp_path))
    assert output.is_error and "No search source is configured" in json.loads(output.text)["error"]


def test_unknown_source_names_are_a_config_error(tmp_path: Path) -> None:
    settings = load_settings(
        overrides={"search.sources": ["searxng", "bing"]}, environ={"APPLIANCE_HOME": str(tmp_path)}
    )
    with pytest.raises(ConfigError, match="unknown search source 'bing'"):
        create_server(settings, lambda: pytest.fail("no model"))
