"""Kiwix ZIM archives built by libzim's creator: full-text and title search, reading entries offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import Settings, load_settings
from appliance.tools.base import CallContext
from appliance.tools.scrape.reader import PageReader, ReadError
from appliance.tools.search.server import SearchServer
from appliance.tools.search.zim import ZimLibrary, best_window, entry_url, parse_entry_url

ARTICLES = {
    "A/Green_tea": (
        "Green tea",
        "Green tea is made from unoxidised leaves. Brew it with water at 70 to 80 degrees for two minutes; "
        "boiling water makes it bitter. Sencha and gyokuro are Japanese green teas.",
    ),
    "A/Bicycle_brake": (
        "Bicycle brake",
        "A bicycle brake slows a bicycle. Disc brakes use a caliper that squeezes pads against a rotor; "
        "rim brakes press pads against the wheel rim.",
    ),
    "A/Lighthouse": (
        "Lighthouse",
        "A lighthouse is a tower with a lamp that guides ships. The Bell Rock Lighthouse, finished in 1810, "
        "is the oldest surviving sea-washed lighthouse.",
    ),
}


def build_zim(path: Path, *, indexed: bool) -> Path:
    from libzim.writer import Creator, Hint, Item, StringProvider

    class Article(Item):  # type: ignore[misc]
        def __init__(self, entry_path: str, title: str, text: str) -> None:
            super().__init__()
            self.entry_path, self.title, self.text = entry_path, title, text

        def get_path(self) -> str:
            return self.entry_path

        def get_title(self) -> str:
            return self.title

        def get_mimetype(self) -> str:
            return "text/html"

        def get_contentprovider(self) -> StringProvider:
            nav = "".join(f'<a href="/{p}">{t}</a> ' for p, (t, _) in ARTICLES.items())
            return StringProvider(
                f"<html><head><title>{self.title}</title><style>p {{ margin: 0 }}</style></head>"
                f"<body><nav>{nav}</nav><h1>{self.title}</h1><p>{self.text}</p></body></html>"
            )

        def get_hints(self) -> dict[object, bool]:
            return {Hint.FRONT_ARTICLE: True}

    with Creator(str(path)).config_indexing(indexed, "eng") as creator:
        creator.set_mainpath("A/Green_tea")
        for entry_path, (title, text) in ARTICLES.items():
            creator.add_item(Article(entry_path, title, text))
        creator.add_redirection("A/Pharos", "Pharos", "A/Lighthouse", {Hint.FRONT_ARTICLE: False})
        creator.add_metadata("Title", "Test wiki")
        creator.add_metadata("Language", "eng")
    return path


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("zim")
    return build_zim(root / "wiki_indexed.zim", indexed=True), build_zim(root / "wiki_titles.zim", indexed=False)


def settings_with(tmp_path: Path, zims: list[str]) -> Settings:
    return load_settings(
        overrides={"search.zim_paths": zims, "search.sources": ["zim"]},
        environ={"APPLIANCE_HOME": str(tmp_path / "home")},
    )


def test_fulltext_search_in_an_indexed_archive(archives: tuple[Path, Path]) -> None:
    library = ZimLibrary([str(archives[0])])
    assert library.describe()[0]["fulltext_index"] is True
    hits = library.search("wiki_indexed", "caliper rotor", 5)
    assert [h.title for h in hits] == ["Bicycle brake"]
    assert hits[0].link == "zim://wiki_indexed/A/Bicycle_brake"
    assert "caliper that squeezes pads against a rotor" in hits[0].snippet
    assert "margin" not in hits[0].snippet  # styles are not text


def test_title_search_without_an_index(archives: tuple[Path, Path]) -> None:
    library = ZimLibrary([str(archives[1])])
    assert library.describe()[0]["fulltext_index"] is False
    assert [h.title for h in library.search("wiki_titles", "light", 5)] == ["Lighthouse"]
    assert library.search("wiki_titles", "caliper", 5) == []  # body text is not searchable without an index


def test_archives_are_searched_through_google_search(tmp_path: Path, archives: tuple[Path, Path]) -> None:
    server = SearchServer(settings_with(tmp_path, [str(archives[0]), str(archives[1])]))
    output = server.call("google_search", {"q": "lighthouse"}, CallContext("t", tmp_path, tmp_path, tmp_path))
    data = json.loads(output.text)
    links = [e["link"] for e in data["organic"]]
    # Each archive is its own ranked list; their first hits tie in the fusion and keep source order.
    # The indexed archive also finds the word in every page's navigation bar, ranked lower.
    assert links[:2] == ["zim://wiki_indexed/A/Lighthouse", "zim://wiki_titles/A/Lighthouse"]
    assert sorted(links[2:]) == ["zim://wiki_indexed/A/Bicycle_brake", "zim://wiki_indexed/A/Green_tea"]
    assert data["searchParameters"]["engine"] == "zim"
    # No dates in ZIM archives: a time filter leaves them out, as SearXNG does with such engines.
    filtered = server.call(
        "google_search", {"q": "lighthouse", "tbs": "qdr:d"}, CallContext("t", tmp_path, tmp_path, tmp_path)
    )
    assert filtered.meta.get("empty") is True
    server.close()


def test_entries_are_read_offline_and_redirects_followed(tmp_path: Path, archives: tuple[Path, Path]) -> None:
    reader = PageReader(settings_with(tmp_path, [str(archives[0])]))
    page = reader.read("zim://wiki_indexed/A/Pharos")
    assert page.source == "zim" and page.title == "Lighthouse"
    assert page.final_url == "zim://wiki_indexed/A/Lighthouse"
    assert "The Bell Rock Lighthouse, finished in 1810" in page.text
    with pytest.raises(ReadError, match="no entry"):
        reader.read("zim://wiki_indexed/A/Nothing")
    with pytest.raises(ReadError, match="no ZIM archive named"):
        reader.read("zim://other/A/Lighthouse")
    reader.close()


def test_missing_archive_is_a_clear_error(tmp_path: Path) -> None:
    server = SearchServer(settings_with(tmp_path, [str(tmp_path / "gone.zim")]))
    output = server.call("google_search", {"q": "x"}, CallContext("t", tmp_path, tmp_path, tmp_path))
    assert output.is_error and "gone.zim does not exist" in json.loads(output.text)["error"]
    server.close()


def test_entry_urls_round_trip() -> None:
    url = entry_url("wiki en", "A/Café_(bar)?")
    assert parse_entry_url(url) == ("wiki en", "A/Café_(bar)?")
    assert parse_entry_url("https://example.org/A/x") is None


def test_best_window_prefers_the_densest_stretch() -> None:
    text = "intro " * 100 + "the kettle boils while the kettle whistles " + "outro " * 100
    window = best_window(text, "kettle whistles", 80)
    assert "kettle whistles" in window and window.startswith("…") and window.endswith("…")
    assert best_window("short text", "x") == "short text"


def test_a_file_that_is_not_a_zim_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "broken.zim"
    bad.write_bytes(b"not a zim archive at all")
    server = SearchServer(settings_with(tmp_path, [str(bad)]))
    output = server.call("google_search", {"q": "x"}, CallContext("t", tmp_path, tmp_path, tmp_path))
    assert output.is_error and "cannot open ZIM archive" in json.loads(output.text)["error"]
    server.close()
