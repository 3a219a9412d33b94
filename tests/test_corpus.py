"""The local corpus with real files: indexing, bm25 search with snippets, updates, removal, and its CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.tools.search.corpus import Corpus, match_queries, parse_document_url
from appliance.tools.search.engine import SearchEngine
from appliance.tools.search.results import SearchRequest
from tests.conftest import run_cli
from tests.pagefixtures import boilerplate_article, report_pdf


def write_library(root: Path) -> Path:
    """A small mixed library: Markdown, HTML, PDF, Word, text, plus files the indexer must skip."""
    import docx

    root.mkdir(parents=True, exist_ok=True)
    (root / "trip.md").write_text(
        "# Alpine hut trip\n\nWe stay two nights at the Lindauer hut. The hut warden asks for cash only.\n\n"
        "## Gear\n\nCrampons are not needed in August.\n",
        encoding="utf-8",
    )
    (root / "railway.html").write_text(boilerplate_article(), encoding="utf-8")
    (root / "water.pdf").write_bytes(report_pdf())
    letter = docx.Document()
    letter.add_paragraph("Dear tenants, the heating will be serviced on 12 October by Calor Services.")
    letter.save(str(root / "letter.docx"))
    (root / "notes.txt").write_text("Kettle descaling: use citric acid, not vinegar.\n", encoding="utf-8")
    long_lines = [f"Paragraph {n}: the survey log records weather and snow depth." for n in range(1, 200)]
    long_lines.insert(150, "The avalanche bulletin on day 151 warned of wind slabs above 2400 metres.")
    (root / "log.md").write_text("\n\n".join(long_lines), encoding="utf-8")
    (root / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    hidden = root / ".git"
    hidden.mkdir()
    (hidden / "HEAD.md").write_text("secret hut notes", encoding="utf-8")
    return root


@pytest.fixture
def library(tmp_path: Path) -> Path:
    return write_library(tmp_path / "library")


@pytest.fixture
def corpus(tmp_path: Path, library: Path) -> Corpus:
    corpus = Corpus(tmp_path / "corpus.db")
    results = {Path(r.path).name: r for r in corpus.add_paths([library])}
    assert {name: r.status for name, r in results.items()} == {
        "letter.docx": "added",
        "log.md": "added",
        "notes.txt": "added",
        "railway.html": "added",
        "trip.md": "added",
        "water.pdf": "added",
    }
    return corpus


def test_search_ranks_and_snippets(corpus: Corpus) -> None:
    hits = corpus.search("lead level", 5)
    assert hits[0].title == "Annual Water Quality Report 2023"
    assert "lead level was 3.4 ppb" in hits[0].snippet
    assert hits[0].link.startswith("corpus://") and hits[0].link.endswith("/water.pdf")
    hut = corpus.search("hut warden cash", 5)
    assert [h.title for h in hut][:1] == ["Alpine hut trip"]


def test_title_matches_rank_first(corpus: Corpus) -> None:
    # "railway" is in the railway page's title and body, and only in the body elsewhere (if at all).
    assert corpus.search("railway", 3)[0].title.startswith("Kettle Valley Railway")


def test_stemming_and_diacritics(corpus: Corpus) -> None:
    assert corpus.search("serviced heatings", 3)[0].link.endswith("/letter.docx")
    assert corpus.search("crampon", 3)[0].title == "Alpine hut trip"


def test_long_document_hit_comes_from_the_matching_chunk(corpus: Corpus) -> None:
    hit = corpus.search("avalanche bulletin", 3)[0]
    assert hit.link.endswith("/log.md")
    assert "wind slabs above 2400 metres" in hit.snippet
    doc_id = parse_document_url(hit.link)
    assert doc_id is not None
    document, text = corpus.read(doc_id)
    assert document.chunks > 5 and "Paragraph 199" in text


def test_any_term_fills_in_after_all_terms(corpus: Corpus) -> None:
    hits = corpus.search("citric unrelatedword", 5)
    assert hits and hits[0].link.endswith("/notes.txt")


@pytest.mark.parametrize(
    "query", ['"unbalanced', "AND OR NOT", "title:secret", "*", "-x", "NEAR(a b)", "a^b", "(", "'; DROP TABLE", "™"]
)
def test_user_text_never_breaks_fts_syntax(corpus: Corpus, query: str) -> None:
    corpus.search(query, 5)  # must not raise


def test_match_queries_quote_every_term() -> None:
    assert match_queries('green "oolong tea" -x') == [
        '"oolong tea" "green" "x"',
        '"oolong tea" OR "green" OR "x" OR "oolong" OR "tea"',
    ]
    assert match_queries("***") == []


def test_readding_skips_unchanged_and_updates_changed(corpus: Corpus, library: Path) -> None:
    trip = library / "trip.md"
    [first] = corpus.search("warden", 5)
    assert corpus.add(trip).status == "unchanged"
    os.utime(trip, (time.time() + 5, time.time() + 5))  # touched, same bytes
    assert corpus.add(trip).status == "unchanged"

    trip.write_text("# Alpine hut trip\n\nThe hut is now run by a new keeper who takes cards.\n", encoding="utf-8")
    result = corpus.add(trip)
    assert result.status == "updated" and result.doc_id == parse_document_url(first.link)
    assert corpus.search("warden", 5) == []
    assert corpus.search("keeper cards", 5)[0].link == first.link
    assert len(corpus.documents()) == 6


def test_remove_by_path_url_and_directory(corpus: Corpus, library: Path) -> None:
    [hit] = corpus.search("descaling", 1)
    assert [d.path for d in corpus.remove(hit.link)] == [str((library / "notes.txt").resolve())]
    assert corpus.search("descaling", 1) == []
    assert len(corpus.remove(str(library / "trip.md"))) == 1
    assert len(corpus.remove(str(library))) == 4
    assert corpus.documents() == []


def test_refresh_drops_vanished_files(corpus: Corpus, library: Path) -> None:
    (library / "notes.txt").unlink()
    statuses = {Path(r.path).name: r.status for r in corpus.refresh()}
    assert statuses["notes.txt"] == "removed" and statuses["trip.md"] == "unchanged"
    assert corpus.stats()["documents"] == 5


def test_unreadable_inputs_are_skipped_with_reasons(tmp_path: Path) -> None:
    corpus = Corpus(tmp_path / "c.db")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 10)
    results = {
        Path(r.path).name: r
        for r in corpus.add_paths([tmp_path / "empty.txt", tmp_path / "bin.dat", tmp_path / "nope"])
    }
    assert results["empty.txt"].detail == "no text in the file"
    assert "not HTML, PDF" in results["bin.dat"].detail
    assert results["nope"].detail == "no such file or directory"
    assert all(r.status == "skipped" for r in results.values())


def test_time_filter_uses_file_modification_time(tmp_path: Path, corpus: Corpus, library: Path) -> None:
    old = time.time() - 90 * 86400
    os.utime(library / "notes.txt", (old, old))
    corpus.add(library / "notes.txt")
    settings = load_settings(
        overrides={"search.corpus_db": str(corpus.path), "search.sources": ["corpus"]},
        environ={"APPLIANCE_HOME": str(tmp_path / "home")},
    )
    engine = SearchEngine(settings.search, settings.dirs)
    assert engine.search(SearchRequest("descaling")).status == "ok"
    assert engine.search(SearchRequest("descaling", tbs="qdr:m")).status == "empty"
    assert engine.search(SearchRequest("descaling", tbs="qdr:y")).status == "ok"


def test_corpus_cli(tmp_path: Path, library: Path) -> None:
    env = {"APPLIANCE_HOME": str(tmp_path / "home")}
    added = run_cli(["corpus", "add", str(library), str(tmp_path / "missing.md")], env=env)
    assert added.returncode == 0, added.stderr
    assert "added" in added.stdout and "6 added" in added.stdout and "1 skipped" in added.stdout
    assert (tmp_path / "home" / "corpus.db").is_file()

    again = run_cli(["corpus", "add", str(library)], env=env)
    assert "6 unchanged" in again.stdout

    listed = run_cli(["corpus", "list", "--json"], env=env)
    documents = json.loads(listed.stdout)
    assert sorted(Path(d["path"]).name for d in documents) == [
        "letter.docx",
        "log.md",
        "notes.txt",
        "railway.html",
        "trip.md",
        "water.pdf",
    ]
    assert all(d["url"].startswith("corpus://") for d in documents)

    stats = json.loads(run_cli(["corpus", "stats", "--json"], env=env).stdout)
    assert stats["documents"] == 6 and stats["kinds"]["markdown"] == 2

    searched = run_cli(["corpus", "search", "lead level"], env=env)
    assert searched.returncode == 0 and "Annual Water Quality Report 2023" in searched.stdout

    removed = run_cli(["corpus", "remove", str(library / "notes.txt")], env=env)
    assert removed.returncode == 0 and "removed 1" in removed.stdout
    nothing = run_cli(["corpus", "remove", str(library / "notes.txt")], env=env)
    assert nothing.returncode == 1 and "nothing matched" in nothing.stderr


def test_corpus_cli_without_a_corpus(tmp_path: Path) -> None:
    env = {"APPLIANCE_HOME": str(tmp_path / "home")}
    listed = run_cli(["corpus", "list"], env=env)
    assert listed.returncode == 0 and "no documents" in listed.stdout
    searched = run_cli(["corpus", "search", "x"], env=env)
    assert searched.returncode == 1


def test_a_damaged_corpus_is_reported_not_fatal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "corpus.db").write_bytes(b"this is not a database, just bytes " * 100)
    env = {"APPLIANCE_HOME": str(home)}
    listed = run_cli(["corpus", "list"], env=env)
    assert listed.returncode == 3 and "cannot be used: file is not a database" in listed.stderr
    assert "Traceback" not in listed.stderr
    settings = load_settings(overrides={"search.sources": ["corpus"]}, environ={"APPLIANCE_HOME": str(home)})
    outcome = SearchEngine(settings.search, settings.dirs).search(SearchRequest("anything"))
    assert outcome.status == "unavailable" and "file is not a database" in str(outcome.error)
