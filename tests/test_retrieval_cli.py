"""`appliance search`, `appliance fetch` and a whole replayed run through the real search and scrape servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli, tool_call, write_replay
from tests.pagefixtures import PageServer, standard_routes
from tests.searxng_fixture import SearxngInstance, searxng, searxng_factory  # noqa: F401

RETRIEVAL_TOOLS = json.dumps(["search_and_scrape_webpage", "jina_scrape_llm_summary"])


@pytest.fixture(scope="module")
def pages() -> Iterator[PageServer]:
    server = PageServer(standard_routes())
    yield server
    server.close()


def env_for(tmp_path: Path, searxng_url: str = "", pages: PageServer | None = None) -> dict[str, str]:
    env = {"APPLIANCE_HOME": str(tmp_path / "home"), "APPLIANCE_TOOLS_ENABLED": RETRIEVAL_TOOLS}
    if searxng_url:
        env["APPLIANCE_SEARXNG_URL"] = searxng_url
    if pages is not None:
        env["APPLIANCE_SCRAPE_ALLOW_HOSTS"] = json.dumps([f"127.0.0.1:{pages.port}"])
    return env


def test_search_command(searxng: SearxngInstance, tmp_path: Path) -> None:  # noqa: F811
    env = env_for(tmp_path, searxng.url)
    shown = run_cli(["search", "green", "tea"], env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[:2] == [
        "1. Brewing green tea at the right temperature",
        "   https://localdocs.example/tea/green",
    ]
    as_json = run_cli(["search", "release notes", "--json", "--num", "3", "--page", "2"], env=env)
    data = json.loads(as_json.stdout)
    assert [e["position"] for e in data["organic"]] == [4, 5, 6]
    empty = run_cli(["search", "quantum marmalade"], env=env)
    assert empty.returncode == 1 and "no results for 'quantum marmalade'" in empty.stderr


def test_search_command_when_searxng_is_down(tmp_path: Path) -> None:
    done = run_cli(["search", "tea"], env=env_for(tmp_path, "http://127.0.0.1:9"))
    assert done.returncode == 3
    assert "SearXNG at http://127.0.0.1:9 is not reachable (connection refused)" in done.stderr
    assert "appliance searxng start" in done.stderr and "Traceback" not in done.stderr


def test_search_command_rejects_bad_input(tmp_path: Path) -> None:
    done = run_cli(["search", "tea", "--source", "bing"], env=env_for(tmp_path))
    assert done.returncode == 2 and "Invalid value for '--source'" in done.stderr


def test_fetch_command(tmp_path: Path, pages: PageServer) -> None:
    env = env_for(tmp_path, pages=pages)
    shown = run_cli(["fetch", pages.url("/article")], env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("# Kettle Valley Railway - Rail History Weekly\n")
    assert "The line opened in 1915" in shown.stdout and "Sponsored" not in shown.stdout
    assert "(html, web," in shown.stderr

    blocked = run_cli(["fetch", pages.url("/to-private")], env=env)
    assert blocked.returncode == 2 and "refusing to fetch from 10.255.255.1" in blocked.stderr
    assert "[scrape] allow_hosts" in blocked.stderr
    missing = run_cli(["fetch", pages.url("/missing")], env=env)
    assert missing.returncode == 1 and "HTTP 404 Not Found" in missing.stderr


def test_fetch_command_with_extraction(tmp_path: Path, pages: PageServer) -> None:
    script = write_replay(tmp_path / "extract.jsonl", ["<think>look for the year</think>It opened in 1915."])
    env = env_for(tmp_path, pages=pages)
    done = run_cli(
        ["--backend", "replay", "--replay", str(script), "fetch", pages.url("/article"), "--extract", "opening year"],
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "It opened in 1915."
    as_json = run_cli(
        ["--replay", str(script), "fetch", pages.url("/article"), "--extract", "opening year", "--json"], env=env
    )
    data = json.loads(as_json.stdout)
    assert data["success"] and data["extracted_info"] == "It opened in 1915."
    # No model configured: the page is read, then the extractor is reported unavailable.
    no_model = run_cli(["fetch", pages.url("/article"), "--extract", "year"], env=env)
    assert no_model.returncode == 3 and "extraction model is unavailable" in no_model.stderr


def test_replayed_run_searches_scrapes_and_answers(
    searxng: SearxngInstance,  # noqa: F811
    pages: PageServer,
    tmp_path: Path,
) -> None:
    turns = [
        tool_call("search_and_scrape_webpage", "google_search", {"q": "quantum marmalade"}, "Search first."),
        tool_call("search_and_scrape_webpage", "google_search", {"q": "green tea temperature"}, "Try again."),
        tool_call(
            "jina_scrape_llm_summary",
            "scrape_and_extract_info",
            {"url": pages.url("/article"), "info_to_extract": "When did the Kettle Valley Railway open?"},
            "Read the article.",
        ),
        # Consumed by the extraction model (the agent's own backend by default).
        "The Kettle Valley Railway opened in 1915.",
        "<think>\nThe page says 1915.\n</think>\n\nThe railway opened in 1915. \\boxed{1915}",
        "\\boxed{1915}",
    ]
    script = write_replay(tmp_path / "run.jsonl", turns)
    before = pages.hits["/article"]
    done = run_cli(
        [
            "--task",
            "When did the Kettle Valley Railway open?",
            "--backend",
            "replay",
            "--replay",
            str(script),
            "--json",
        ],
        env=env_for(tmp_path, searxng.url, pages),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "answered" and result["answer"] == "1915"
    assert pages.hits["/article"] == before + 1
    assert "reply discarded (empty_search)" in done.stderr
    assert "search_and_scrape_webpage/google_search" in done.stderr
    assert "jina_scrape_llm_summary/scrape_and_extract_info" in done.stderr


def test_prompt_lists_the_retrieval_tools(tmp_path: Path) -> None:
    done = run_cli(["prompt", "--date", "2025-01-01"], env=env_for(tmp_path, "http://127.0.0.1:9"))
    assert done.returncode == 0, done.stderr
    assert "## Server name: search_and_scrape_webpage" in done.stdout
    assert "## Server name: jina_scrape_llm_summary" in done.stdout
