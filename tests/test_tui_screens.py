"""History and status screens, errors shown in place, resizing, themes: driven with Pilot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, TextArea

from appliance.install.doctor import Check
from appliance.store import open_history
from appliance.tui.app import ApplianceApp
from appliance.tui.dialogs import ConfirmDialog
from appliance.tui.history_screen import HistoryScreen
from appliance.tui.status_screen import Diagnosis, StatusScreen
from appliance.tui.toolcall import ToolCallView
from appliance.tui.widgets import AnswerPanel, ErrorPanel, TaskView, TurnView
from tests.tui_support import answer, command, screen_text, search, use_scripted_tools, wait_for, write_script

pytestmark = pytest.mark.asyncio


@pytest.fixture
def tools(appliance_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_scripted_tools(monkeypatch)
    return appliance_home


def options(tmp_path: Path, script: Path | None = None, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"db": tmp_path / "history.db"}
    if script is not None:
        base.update(backend="replay", replay=script)
    return {**base, **extra}


async def run_task(pilot: Any, app: ApplianceApp, task: str) -> None:
    before = app.main.run_id
    await pilot.click("#task")
    await pilot.press(*task)
    await pilot.press("ctrl+s")
    await wait_for(lambda: app.main.phase == "done" and app.main.run_id != before, what=f"the run of {task!r}")


def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    first = write_script(
        tmp_path / "first.jsonl",
        [search("phobos discovery year"), command("echo 1877"), "It was 1877.", answer("1877")],
    )
    second = write_script(tmp_path / "second.jsonl", [search("deimos diameter"), "About 12 km.", answer("12 km")])
    return first, second


async def test_open_a_past_run_from_the_history(tools: Path, tmp_path: Path) -> None:
    first, second = two_runs(tmp_path)
    app = ApplianceApp(options(tmp_path, first))
    async with app.run_test(size=(100, 30)) as pilot:
        await run_task(pilot, app, "When was Phobos discovered?")
        live_calls = [(v.call.tool, v.finished.result if v.finished else None) for v in app.main.query(ToolCallView)]
        first_id = app.main.run_id
        assert app.factory is not None
        app.factory.options["replay"] = second
        await run_task(pilot, app, "How wide is Deimos?")
        assert app.main.query_one(AnswerPanel).answer == "12 km"

        await pilot.press("f2")
        history = app.screen
        assert isinstance(history, HistoryScreen)
        table = history.query_one("#runs", DataTable)
        await wait_for(lambda: table.row_count == 2, what="the list of runs")
        # Newest first: the Phobos run is the second row.
        await pilot.press("down", "enter")
        await wait_for(lambda: app.screen is app.main and app.main.phase == "done", what="the replay")
        main = app.main
        assert main.run_id == first_id and main.run_status == "answered"
        replayed = [(v.call.tool, v.finished.result if v.finished else None) for v in main.query(ToolCallView)]
        assert replayed == live_calls
        panel = main.query_one(AnswerPanel)
        assert panel.answer == "1877"
        # Only a search, no page read: sources are what a run read, so there are none (a search's
        # top result is not a source the answer rests on).
        assert panel.sources == []
        assert main.meter.state == "answered" and not main.meter.live
        assert "When was Phobos discovered?" in str(main.query_one(TaskView).render())
        assert "replay:first.jsonl" in screen_text(app)


async def test_history_search_and_delete_with_confirmation(tools: Path, tmp_path: Path) -> None:
    first, second = two_runs(tmp_path)
    app = ApplianceApp(options(tmp_path, first))
    async with app.run_test(size=(80, 24)) as pilot:
        await run_task(pilot, app, "When was Phobos discovered?")
        assert app.factory is not None
        app.factory.options["replay"] = second
        await run_task(pilot, app, "How wide is Deimos?")
        await pilot.press("f2")
        screen = app.screen
        assert isinstance(screen, HistoryScreen)
        table = screen.query_one("#runs", DataTable)
        await wait_for(lambda: table.row_count == 2, what="the list")

        await pilot.press("slash")
        assert screen.query_one("#history-search", Input).has_focus
        await pilot.press(*"deimos", "enter")
        await wait_for(lambda: table.row_count == 1, what="the search")
        (only,) = screen.rows.values()
        assert only.task == "How wide is Deimos?"

        # Delete asks first; "n" keeps the run.
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        assert app.screen is screen
        with open_history(tmp_path / "history.db") as history:
            assert len(history.list_runs()) == 2
        await pilot.press("d")
        await pilot.press("y")
        await wait_for(lambda: table.row_count == 0, what="the deleted run to leave the list")
        await pilot.press("escape")
        assert app.screen is app.main
        # The main screen was showing the deleted run: it starts afresh rather than point at nothing.
        assert app.main.run_id is None and not app.main.query(TurnView)
        assert not app.main.check_action("export", ())
    with open_history(tmp_path / "history.db") as history:
        assert [r.task for r in history.list_runs()] == ["When was Phobos discovered?"]


async def test_resume_an_interrupted_run_from_the_history(tools: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    script = write_script(tmp_path / "run.jsonl", [command("wait release"), "Released.", answer("done")])
    app = ApplianceApp(options(tmp_path, script, workspace=workspace))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.click("#task")
        await pilot.press(*"wait", "ctrl+s")
        await wait_for(lambda: (workspace / "waiting").exists(), what="the tool to start")
        await pilot.press("escape")
        await wait_for(lambda: app.main.phase == "done", what="the cancel")
        await pilot.press("ctrl+n")
        assert not app.main.query(TurnView)
        (workspace / "release").write_text("go", encoding="utf-8")
        await pilot.press("f2")
        screen = app.screen
        assert isinstance(screen, HistoryScreen)
        await wait_for(lambda: screen.query_one("#runs", DataTable).row_count == 1, what="the list")
        assert screen.check_action("resume", ())
        await pilot.press("r")
        await wait_for(lambda: app.main.run_status == "answered", what="the resumed run")
        assert app.main.query_one(AnswerPanel).answer == "done"


async def test_a_missing_model_is_shown_in_place_with_its_fix(tools: Path, tmp_path: Path) -> None:
    missing = tmp_path / "models" / "absent.gguf"
    app = ApplianceApp(options(tmp_path, model=str(missing), backend="llamacpp"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.click("#task")
        await pilot.press(*"What is the answer?", "ctrl+s")
        await wait_for(lambda: app.main.phase == "idle" and bool(app.main.query(ErrorPanel)), what="the error")
        panel = app.main.query_one(ErrorPanel)
        text = str(panel.render())
        assert f"model file {missing} not found" in text
        assert "Fix: run `appliance install`" in text
        assert "model is unavailable" in text
        # Nothing was lost: the app runs on, the task is back in its box, no run was recorded.
        area = app.main.query_one("#task", TextArea)
        assert area.has_focus and area.text == "What is the answer?"
        assert app.is_running
        with open_history(tmp_path / "history.db") as history:
            assert history.list_runs() == []


async def test_a_broken_config_file_is_shown_in_place(appliance_home: Path, tmp_path: Path) -> None:
    config = appliance_home / "config.toml"
    config.write_text("[model\nbackend = 'replay'\n", encoding="utf-8")
    app = ApplianceApp(options(tmp_path))
    assert app.setup_error is not None
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.main.query_one(ErrorPanel)
        assert "is not valid TOML" in str(panel.render())
        first_line = screen_text(app).splitlines()[0]
        assert "● error" in first_line and "ready" not in first_line  # nothing can run: not "ready"
        await pilot.press(*"a task", "ctrl+s")
        await pilot.pause()
        assert app.main.phase == "idle" and app.is_running


async def test_status_screen_shows_checks_with_fixes_and_the_effective_config(tools: Path, tmp_path: Path) -> None:
    script = write_script(tmp_path / "s.jsonl", [answer("1")])
    seen: list[str] = []

    def diagnose(settings: Any) -> Diagnosis:
        seen.append(settings.model.backend)
        return Diagnosis(
            "CPU: test",
            "profile cpu-8b: fits",
            [
                Check("model", "skip", "replay backend"),
                Check("sandbox (bwrap)", "fail", "bubblewrap is not installed", "apt-get install bubblewrap"),
                Check("disk", "ok", "10.0 GiB free"),
            ],
        )

    app = ApplianceApp(options(tmp_path, script, max_turns=7), diagnose=diagnose)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        assert isinstance(screen, StatusScreen)
        await wait_for(lambda: bool(screen.query(".check")), what="the checks")
        checks = "\n".join(str(w.render()) for w in screen.query(".check"))
        assert "[FAIL] sandbox (bwrap): bubblewrap is not installed" in checks
        assert "fix: apt-get install bubblewrap" in checks
        assert seen == ["replay"]
        table = screen.query_one("#config", DataTable)
        row = table.get_row("agent.max_turns")
        assert [str(c) for c in row] == ["agent.max_turns", "7", "command line"]
        assert [str(c) for c in table.get_row("model.context_length")][2].startswith("profile")
        await pilot.press("escape")
        assert app.screen is app.main


async def test_resize_during_a_run_and_both_themes(tools: Path, tmp_path: Path) -> None:
    turns: list[str | dict[str, Any]] = [
        {"content": search(f"query {i}", "Looking " * 30), "delay": 0.05} for i in range(6)
    ]
    script = write_script(tmp_path / "r.jsonl", [*turns, "All searched.", answer("done")])
    app = ApplianceApp(options(tmp_path, script))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.click("#task")
        await pilot.press(*"resize me", "ctrl+s")
        for size in [(40, 12), (200, 60), (80, 24), (20, 8), (120, 30)]:
            await pilot.resize_terminal(*size)
            await pilot.pause(0.05)
        await wait_for(lambda: app.main.phase == "done", what="the run")
        assert app.main.run_status == "answered"
        await pilot.press("f4")
        assert app.theme == "textual-light"
        await pilot.resize_terminal(60, 20)
        await pilot.press("f2")
        await pilot.resize_terminal(140, 40)
        await pilot.press("escape", "f3")
        await pilot.resize_terminal(30, 10)
        await pilot.press("escape", "f4")
        assert app.theme == "textual-dark"
        assert app.is_running
