"""Research you can check and run again, end to end: runs archive what they read, reports cite it,
re-runs and evals replay it offline (a tripwire server fails the test if it is contacted)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from warcio.archiveiterator import ArchiveIterator

from appliance.config import load_settings
from appliance.tools.archive import archive_dir, open_run_web, warc_files
from appliance.tools.base import CallContext
from appliance.tools.search.server import SearchServer
from tests.conftest import REPO_ROOT, cli_env, run_cli, tool_call, write_replay
from tests.pagefixtures import PageServer, boilerplate_article, report_pdf, serving, standard_routes
from tests.searxng_fixture import SearxngInstance, searxng  # noqa: F401

SECRET = "Bearer TOPSECRET-TOKEN-42"


def scrape(url: str, info: str, headers: dict[str, str] | None = None) -> str:
    arguments: dict[str, object] = {"url": url, "info_to_extract": info}
    if headers:
        arguments["custom_headers"] = headers
    return tool_call("jina_scrape_llm_summary", "scrape_and_extract_info", arguments)


def research_script(path: Path, base: str) -> Path:
    """Two pages read (one through a redirect, with a credential header), then the answer."""
    return write_replay(
        path,
        [
            scrape(f"{base}/to-article", "What is the article about?", {"Authorization": SECRET}),
            "The article is about the Kettle Valley Railway in British Columbia.",  # the extractor's answer
            scrape(f"{base}/report.pdf", "What was the lead level?"),
            "The 90th percentile lead level was 3.4 ppb.",
            "<think>\nBoth pages read.\n</think>\n\nThe water report measured 3.4 ppb of lead.",
            "<think>\nDone.\n</think>\n\nThe lead level was 3.4 ppb, per the water report. \\boxed{3.4 ppb}",
        ],
    )


def env_for(port: int, **extra: str) -> dict[str, str]:
    return {
        "APPLIANCE_TOOLS_ENABLED": "jina_scrape_llm_summary",
        "APPLIANCE_SCRAPE_ALLOW_HOSTS": f"127.0.0.1:{port}",
        **extra,
    }


def records_of(db: Path, run_id: str) -> list[dict[str, Any]]:
    connection = sqlite3.connect(db)
    connection.row_factory = sqlite3.Row
    try:
        rows = connection.execute(
            "SELECT a.*, c.tool FROM archive_records a JOIN tool_calls c ON c.id = a.tool_call_id "
            "WHERE a.run_id = ? ORDER BY a.id",
            (run_id,),
        ).fetchall()
        return [dict(r) for r in rows]
    finally:
        connection.close()


@pytest.fixture
def recorded(appliance_home: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """One research run against local pages, recorded; the server is closed afterwards."""
    with serving(standard_routes()) as pages:
        script = research_script(tmp_path / "research.jsonl", pages.base)
        result = run_cli(
            ["--task", "What was the lead level?", "--backend", "replay", "--replay", str(script), "--json"],
            env=env_for(pages.port),
        )
        hits = dict(pages.hits)
        port = pages.port
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    yield {"payload": payload, "port": port, "hits": hits, "home": appliance_home, "tmp": tmp_path}


def test_a_run_archives_what_it_read_and_cites_it(recorded: dict[str, Any]) -> None:
    payload, port, home = recorded["payload"], recorded["port"], recorded["home"]
    run_id = payload["run_id"]
    assert payload["status"] == "answered" and payload["answer"] == "3.4 ppb"
    base = f"http://127.0.0.1:{port}"
    sources = payload["sources"]
    assert [s["url"] for s in sources] == [f"{base}/to-article", f"{base}/report.pdf"]
    for source in sources:
        assert source["archive"]["file"].endswith(".warc.gz") and source["archived_at"].endswith("Z")
        assert source["origin"] == "web"
    assert "Kettle Valley Railway" in sources[0]["passage"] and "lead level" in sources[1]["passage"]
    # The history links each call to its records; the archived copies read back byte for byte.
    rows = records_of(home / "history.db", run_id)
    assert [(r["kind"], r["status"]) for r in rows] == [("response", 301), ("response", 200), ("response", 200)]
    archive = archive_dir(home / "runs" / run_id)
    for row, expected in ((rows[1], boilerplate_article().encode()), (rows[2], report_pdf())):
        with (archive / row["warc_file"]).open("rb") as handle:
            handle.seek(row["warc_offset"])
            record = next(iter(ArchiveIterator(handle, check_digests="raise")))
            assert record.content_stream().read() == expected
    # The credential header never reached the archive, the history or any report.
    for path in warc_files(archive):
        assert b"TOPSECRET" not in gzip.decompress(path.read_bytes())
    # (The model's own reply keeps what it wrote; what the tools recorded does not.)
    connection = sqlite3.connect(home / "history.db")
    stored = (
        connection.execute("SELECT arguments FROM tool_calls").fetchall()
        + connection.execute("SELECT * FROM archive_records").fetchall()
    )
    connection.close()
    assert stored and "TOPSECRET" not in repr(stored)
    report = (home / "runs" / run_id / "report.md").read_text(encoding="utf-8")
    shown = run_cli(["history", "show", "--report", run_id]).stdout
    exported_md = run_cli(["history", "export", "--format", "md", run_id]).stdout
    exported_html = run_cli(["history", "export", "--format", "html", run_id]).stdout
    shown_json = json.loads(run_cli(["history", "show", "--json", run_id]).stdout)
    for text in (report, shown, exported_md):
        assert "## Answer" in text and "3.4 ppb" in text and "## Reasoning summary" in text
        assert f"1. <{base}/to-article>" in text and f"2. <{base}/report.pdf>" in text
        assert "fetched 20" in text and "archived copy: `archive/" in text and "cited in the answer" not in text
        assert "lead level" in text.lower() and "TOPSECRET" not in text
    assert exported_html.startswith("<!DOCTYPE html>") and f'href="{base}/report.pdf"' in exported_html
    assert "TOPSECRET" not in exported_html and "<script" not in exported_html
    assert [s["url"] for s in shown_json["sources"]] == [s["url"] for s in sources]


def test_rerun_from_the_archive_makes_no_network_request(recorded: dict[str, Any]) -> None:
    payload, port, tmp = recorded["payload"], recorded["port"], recorded["tmp"]
    run_id = payload["run_id"]
    tripwire = PageServer({}, port=port)  # where the pages were: any request lands here
    try:
        result = run_cli(["rerun", run_id, "--web", f"archive:{run_id}", "--json"], env=env_for(port))
        assert result.returncode == 0, result.stderr
        rerun = json.loads(result.stdout)
        assert rerun["run_id"] != run_id and rerun["answer"] == "3.4 ppb"
        assert [s["origin"] for s in rerun["sources"]] == [f"archive:{run_id}"] * 2
        # A page the archive does not hold is a clear tool result, not a network call.
        script = write_replay(
            tmp / "missing.jsonl",
            [scrape(f"http://127.0.0.1:{port}/never-fetched", "anything"), "No luck.", "\\boxed{none}"],
        )
        missing = run_cli(
            ["--task", "t", "--replay", str(script), "--web", f"archive:{run_id}", "--json"], env=env_for(port)
        )
        assert missing.returncode == 0, missing.stderr
        shown = run_cli(["history", "show", "--full", json.loads(missing.stdout)["run_id"]]).stdout
        assert "not archived: http://127.0.0.1" in shown and f"is not in archive:{run_id}" in shown
    finally:
        tripwire.close()
    assert tripwire.requests == []


def test_a_damaged_archive_is_a_clear_error_and_the_history_untouched(recorded: dict[str, Any]) -> None:
    payload, home = recorded["payload"], recorded["home"]
    run_id = payload["run_id"]
    (file,) = warc_files(archive_dir(home / "runs" / run_id))
    broken = recorded["tmp"] / "broken.warc.gz"
    broken.write_bytes(file.read_bytes()[:-200])
    before = run_cli(["history", "list", "--json"]).stdout
    run_dirs = sorted((home / "runs").iterdir())
    result = run_cli(["rerun", run_id, "--web", str(broken)], env=env_for(recorded["port"]))
    assert result.returncode == 2
    assert "appliance: error: the web archive" in result.stderr and "truncated" in result.stderr
    assert "Fix:" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert run_cli(["history", "list", "--json"]).stdout == before
    assert sorted((home / "runs").iterdir()) == run_dirs  # not even an empty run directory


def test_a_resumed_run_takes_what_it_had_fetched_from_its_archive(appliance_home: Path, tmp_path: Path) -> None:
    with serving(standard_routes()) as pages:
        slow = write_replay(tmp_path / "slow.jsonl", [scrape(pages.url("/article"), "topic")])
        with slow.open("a", encoding="utf-8") as handle:  # the extractor takes its time: the kill lands there
            handle.write(json.dumps({"content": "The Kettle Valley Railway.", "delay": 60}) + "\n")
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--task", "What is it about?", "--replay", str(slow)],
            env=cli_env(env_for(pages.port)),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        runs = appliance_home / "runs"
        while not (runs.is_dir() and any(warc_files(archive_dir(d)) for d in runs.iterdir())):
            assert time.monotonic() < deadline and process.poll() is None, "the run never fetched its page"
            time.sleep(0.1)
        time.sleep(0.3)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        (run_dir,) = list(runs.iterdir())
        resumed_script = write_replay(
            tmp_path / "resumed.jsonl",
            ["(the recorded reply)", "The Kettle Valley Railway.", "Enough.", "\\boxed{the railway}"],
        )
        result = run_cli(["resume", run_dir.name, "--replay", str(resumed_script), "--json"], env=env_for(pages.port))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["answer"] == "the railway"
        assert pages.hits["/article"] == 1  # fetched once, before the kill; the redo read the archive
    rows = records_of(appliance_home / "history.db", run_dir.name)
    assert [(r["kind"], r["origin"]) for r in rows] == [("response", "reused")]


def test_search_responses_are_archived_and_replayed_offline(
    searxng: SearxngInstance,  # noqa: F811
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    live_settings = load_settings(
        overrides={"search.searxng_url": searxng.url, "search.sources": ["searxng"]},
        environ={"APPLIANCE_HOME": str(home)},
    )
    runs = live_settings.dirs.runs_dir

    def context(run_id: str, settings: Any) -> CallContext:
        run_dir = runs / run_id
        web = open_run_web(settings.archive, settings.scrape, settings.dirs.run_dir, run_id, run_dir)
        return CallContext(run_id, run_dir, run_dir, run_dir, web=web)

    server = SearchServer(live_settings)
    live = server.call("google_search", {"q": "release notes"}, context("run-s", live_settings))
    server.close()
    assert live.meta["archive"][0]["uri"].startswith(f"{searxng.url}/search?")
    first = json.loads(live.text)
    assert first["organic"]
    # Offline: SearXNG's address is now a closed port, and the answer comes from the archive.
    offline_settings = load_settings(
        overrides={
            "search.searxng_url": "http://127.0.0.1:9",
            "search.sources": ["searxng"],
            "archive.web": "archive:run-s",
        },
        environ={"APPLIANCE_HOME": str(home)},
    )
    server = SearchServer(offline_settings)
    replayed = server.call("google_search", {"q": "release notes"}, context("run-t", offline_settings))
    other = server.call("google_search", {"q": "never searched"}, context("run-t", offline_settings))
    server.close()
    assert json.loads(replayed.text)["organic"] == first["organic"]
    assert replayed.meta["archive"][0]["origin"] == "archive:run-s"
    assert other.is_error and "not archived: the search" in json.loads(other.text)["error"]


def test_eval_records_the_web_once_and_replays_it(appliance_home: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "tasks.jsonl"
    scripts = tmp_path / "replays"
    scripts.mkdir()
    web = tmp_path / "web"
    with serving(standard_routes()) as pages:
        rows = [
            {"task_id": "lead", "Question": "What was the lead level?", "Final answer": "3.4 ppb", "Level": 1},
            {"task_id": "topic", "Question": "What is the article about?", "Final answer": "library", "Level": 1},
        ]
        dataset.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        write_replay(
            scripts / "lead.jsonl",
            [scrape(pages.url("/report.pdf"), "lead level"), "3.4 ppb of lead.", "Done.", "\\boxed{3.4 ppb}"],
        )
        write_replay(
            scripts / "topic.jsonl",
            [scrape(pages.url("/to-article"), "topic"), "A library.", "Done.", "\\boxed{library}"],
        )
        args = ["eval", str(dataset), "--backend", "replay", "--replay", str(scripts), "--web-archive", str(web)]
        first = run_cli([*args, "--name", "first"], env=env_for(pages.port), timeout=300)
        assert first.returncode == 0, first.stderr
        live_hits = sum(pages.hits.values())
        port = pages.port
    assert live_hits == 3  # the PDF, the redirect and its target, once each
    assert sorted(p.name for p in web.iterdir()) == ["lead.warc.gz", "topic.warc.gz"]
    tripwire = PageServer({}, port=port)
    try:
        second = run_cli([*args, "--name", "second"], env=env_for(port), timeout=300)
    finally:
        tripwire.close()
    assert second.returncode == 0, second.stderr
    assert tripwire.requests == []
    assert "first: avg@1 100.0%" in first.stdout and "second: avg@1 100.0%" in second.stdout
    reports = {n: (appliance_home / "evals" / n / "report.md").read_text(encoding="utf-8") for n in ("first", "second")}
    assert "Web: live, recorded into the web archive." in reports["first"]
    assert "Web: replayed from the web archive (no network)." in reports["second"]


def test_an_archive_that_cannot_be_written_leaves_a_recorded_gap(appliance_home: Path, tmp_path: Path) -> None:
    with serving(standard_routes()) as pages:
        script = research_script(tmp_path / "research.jsonl", pages.base)
        result = run_cli(
            ["--task", "What was the lead level?", "--replay", str(script), "--json"],
            env=env_for(pages.port, APPLIANCE_ARCHIVE_MAX_MB="0"),  # no room at all: every record is a gap
        )
    assert result.returncode == 0, result.stderr  # the run goes on
    payload = json.loads(result.stdout)
    assert payload["answer"] == "3.4 ppb"
    assert "warning: the run's web archive reached its cap of 0 MB" in result.stderr
    rows = records_of(appliance_home / "history.db", payload["run_id"])
    assert [r["kind"] for r in rows] == ["gap", "gap"] and all("[archive] max_mb" in r["note"] for r in rows)
    assert [s["archive"] for s in payload["sources"]] == [None, None]
    shown = run_cli(["history", "show", payload["run_id"]]).stdout
    assert "warning: the run's web archive reached its cap" in shown
    assert "no archived copy" in run_cli(["history", "show", "--report", payload["run_id"]]).stdout
