"""Opening the history: migrations from empty and from the first schema, and files that must be left alone."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from appliance.agent import runtime
from appliance.agent.events import AgentEvent
from appliance.session import Backends, resume_session
from appliance.store import StoreError, open_history
from appliance.store.migrations import known_names
from appliance.store.report import research_report
from appliance.store.sources import run_sources
from tests.conftest import run_cli
from tests.store_support import call, finished, write_script

FIXTURE = Path(__file__).parent / "fixtures" / "history-v1.db"
LATEST_TABLES = {"runs", "messages", "tool_calls", "events", "tags", "runs_fts", "tool_calls_fts", "archive_records"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def applied(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations ORDER BY id")]


def test_a_new_file_gets_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "history.db"
    with open_history(path) as history:
        tables = set(history.db.table_names())
        assert tables >= LATEST_TABLES
        assert history.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert history.db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        columns = {c.name for c in history.db["tool_calls"].columns}
        assert {"arguments", "result", "status", "duration_s", "truncated", "raw_chars"} <= columns
    assert applied(path) == known_names()
    # Opening again applies nothing and changes nothing.
    with open_history(path):
        pass
    assert applied(path) == known_names()


def test_an_empty_file_is_a_new_history(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.touch()
    with open_history(path) as history:
        assert history.list_runs() == []
    assert applied(path) == known_names()


def test_the_first_schema_upgrades_with_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    shutil.copy(FIXTURE, path)
    assert applied(path) == ["m001_initial"]
    with open_history(path) as history:
        assert applied(path) == known_names()
        runs = {r.run_id: r for r in history.list_runs()}
        assert runs["20250101-120000-aaaaaa"].answer == "Mont Blanc"
        assert runs["20250101-120000-aaaaaa"].tags == ("geography",)
        assert runs["20250102-120000-bbbbbb"].status == "interrupted"
        run = history.get_run("20250101-120000-aaaaaa")
        assert [s.reply.kind for s in run.kept_steps] == ["turn", "turn", "turn", "summary"]
        assert run.kept_steps[1].calls[0].tool == "scrape_and_extract_info"
        # A run from before the web archive: its report says so, its sources have no archived copy.
        assert run.kept_steps[1].calls[0].archived == ()
        report = research_report(run)
        assert "**Web:** live (not archived: recorded before the web archive existed)" in report
        assert all(not source.archived for source in run_sources(run))
        # Rows written before the search index existed are indexed by the migration.
        assert [(h.run_id, h.field) for h in history.search("Vienna")] == [("20250102-120000-bbbbbb", "task")]
        assert ("20250101-120000-aaaaaa", "answer") in {(h.run_id, h.field) for h in history.search("blanc")}
        assert any(h.field == "tool_result" for h in history.search("Mont Blanc"))


def test_a_run_interrupted_under_the_first_schema_resumes_after_the_upgrade(
    tmp_path: Path, appliance_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")
    path = tmp_path / "history.db"
    shutil.copy(FIXTURE, path)
    # The script the fixture was recorded with (its path then was a temporary file).
    script = write_script(
        tmp_path / "s.jsonl",
        [
            call("google_search", q="tallest mountain in the alps"),
            call("scrape_and_extract_info", url="https://example.org/mont-blanc", info_to_extract="height"),
            "<think>Done.</think> Done.",
            "The tallest mountain in the Alps is \\boxed{Mont Blanc}.",
        ],
    )
    with open_history(path) as history:
        point = history.load_resume("20250102-120000-bbbbbb")
        assert (point.state.turn, point.replay_position, point.redo_calls) == (2, 2, 1)
        (tmp_path / "ws").mkdir()
        events: list[AgentEvent] = []
        with (
            Backends() as backends,
            resume_session(
                history,
                "20250102-120000-bbbbbb",
                {"model.replay": str(script)},
                backends=backends,
                workspace=tmp_path / "ws",
            ) as session,
        ):
            session.drive(events.append)
        assert finished(events).answer == "Mont Blanc"
        run = history.get_run("20250102-120000-bbbbbb")
        assert run.status == "answered" and run.tool_calls == 2 and run.resumes == 1
        assert [len(s.calls) for s in run.kept_steps] == [1, 1, 0, 0]


def test_a_database_from_a_newer_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with open_history(path) as history:
        history.db.conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('appliance', 'm099_future', 'x')"
        )
        history.db.conn.commit()
    before = digest(path)
    with pytest.raises(StoreError, match="newer version") as caught:
        open_history(path)
    assert "m099_future" in caught.value.message and caught.value.fix
    assert digest(path) == before


def test_a_corrupt_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"this is not a database, it is a note\n" * 200)
    before = digest(path)
    with pytest.raises(StoreError, match="corrupt or not an SQLite file") as caught:
        open_history(path)
    assert str(path) in caught.value.one_line() and "mv" in caught.value.one_line()
    assert digest(path) == before
    assert not Path(str(path) + "-wal").exists()


def test_damaged_pages_give_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    shutil.copy(FIXTURE, path)
    data = bytearray(path.read_bytes())
    page = 4096
    data[page * 2 : page * 6] = b"\xff" * (page * 4)  # tables' pages, not the header
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"), open_history(path) as history:
        history.list_runs()
        history.get_run("20250101-120000-aaaaaa")


def test_an_sqlite_file_of_another_program_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    before = digest(path)
    with pytest.raises(StoreError, match="not an appliance history"):
        open_history(path)
    assert digest(path) == before


def test_paths_that_cannot_hold_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        open_history(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the directory"):
        open_history(blocker / "sub" / "history.db")
    with pytest.raises(StoreError, match="no history database"):
        open_history(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_the_cli_reports_a_bad_database_in_one_line_and_runs_nothing(appliance_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00garbage" * 500)
    before = digest(bad)
    script = write_script(tmp_path / "s.jsonl", ["\\boxed{1}", "\\boxed{1}"])
    result = run_cli(["--task", "q", "--replay", str(script), "--db", str(bad)])
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "corrupt" in lines[0] and "Fix:" in lines[0]
    listing = run_cli(["history", "--db", str(bad), "list"])
    assert listing.returncode == 3 and "corrupt" in listing.stderr
    assert digest(bad) == before
    assert not (appliance_home / "runs").exists() or not any((appliance_home / "runs").iterdir())
