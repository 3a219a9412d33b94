"""The TUI offers resume only when it can succeed, says why not, and shows a resumed run in order.

Both screens ask appliance.session.resume_blocker (the line `appliance resume`
would print): a run it blocks has its Resume key shown disabled (stopped
early) or hidden (finished, live elsewhere), and the key says why instead of
starting anything. Real SQLite, replay runs, tmp dirs only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from appliance.store import open_history
from appliance.tui.app import ApplianceApp
from appliance.tui.history_screen import HistoryScreen
from appliance.tui.widgets import AnswerPanel, TurnView
from tests.store_support import run_in_process, settings_for
from tests.store_support import write_script as write_store_script
from tests.tui_support import (
    answer,
    command,
    screen_text,
    transcript_outline,
    use_scripted_tools,
    wait_for,
    write_script,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
def tools(appliance_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_scripted_tools(monkeypatch)
    return appliance_home


def notices(app: ApplianceApp) -> list[str]:
    return [n.message for n in app._notifications]


def run_count(db: Path) -> int:
    with open_history(db) as history:
        return len(history.list_runs())


async def interrupt_a_waiting_run(pilot: Any, app: ApplianceApp, workspace: Path) -> None:
    await pilot.click("#task")
    await pilot.press(*"wait", "ctrl+s")
    await wait_for(lambda: (workspace / "waiting").exists(), what="the tool to start")
    await pilot.press("escape")
    await wait_for(lambda: app.main.phase == "done", what="the cancel")


async def open_history_screen(pilot: Any, app: ApplianceApp, rows: int) -> HistoryScreen:
    await pilot.press("f2")
    screen = app.screen
    assert isinstance(screen, HistoryScreen)
    await wait_for(lambda: screen.query_one("#runs", DataTable).row_count == rows, what="the list")
    return screen


async def select(pilot: Any, screen: HistoryScreen, run_id: str) -> None:
    table = screen.query_one("#runs", DataTable)
    table.move_cursor(row=table.get_row_index(run_id))
    await pilot.pause()
    assert screen.selected() == run_id


async def test_a_resumable_run_is_offered_and_one_whose_script_is_gone_is_not(tools: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    script = write_script(tmp_path / "run.jsonl", [command("wait release"), "Released.", answer("done")])
    db = tmp_path / "history.db"
    app = ApplianceApp({"db": db, "backend": "replay", "replay": script, "workspace": workspace})
    async with app.run_test(size=(100, 30)) as pilot:
        main = app.main
        await interrupt_a_waiting_run(pilot, app, workspace)
        # Offered: shown and enabled in the footer.
        assert main.resume_blocked is None and main.check_action("resume", ()) is True
        await wait_for(lambda: "^r Resume" in screen_text(app).splitlines()[-1], what="Resume in the footer")
        run_id = main.run_id
        assert run_id is not None

        # The replay script the resume would read is gone: the history screen says so before the key.
        script.unlink()
        screen = await open_history_screen(pilot, app, 1)
        reason = f"cannot read replay file {script}: it does not exist"
        assert screen.check_action("resume", ()) is None  # shown disabled
        assert reason in str(screen.query_one("#history-detail", Static).render())
        await pilot.press("r")
        await pilot.pause()
        assert app.screen is screen  # nothing started
        assert any(reason in n and "Fix: pass an existing JSONL file" in n for n in notices(app))

        # Opened on the main screen: ctrl+r says why and starts nothing.
        await pilot.press("enter")
        await wait_for(lambda: app.screen is main and main.phase == "done", what="the replayed run")
        assert main.resume_blocked is not None and reason in main.resume_blocked
        assert main.check_action("resume", ()) is None and main.check_action("why_no_resume", ())
        shown = len(notices(app))
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert main.phase == "done" and main.run_status == "interrupted"
        assert len(notices(app)) == shown + 1 and reason in notices(app)[-1]
    with open_history(db) as history:
        run = history.get_run(run_id)
        assert run.status == "interrupted" and run.resumes == 0 and run.turns == 1


async def test_finished_and_live_runs_are_not_offered_and_the_key_says_why(tools: Path, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    script = write_store_script(tmp_path / "s.jsonl", ["\\boxed{1}", "\\boxed{1}"])
    settings = settings_for(script, **{"tools.enabled": []})
    with open_history(db) as history:
        run_in_process(history, settings, "finished task", "done")
        # Recorded as running by this (live) test process, as another appliance would hold it.
        run_in_process(history, settings, "live task", "alive", stop_after=1)
        assert history.get_run("alive").status == "running"
    app = ApplianceApp({"db": db})
    async with app.run_test(size=(100, 30)) as pilot:
        main = app.main
        screen = await open_history_screen(pilot, app, 2)
        for run_id, reason in (("done", "already finished (answered)"), ("alive", "is still running")):
            await select(pilot, screen, run_id)
            assert screen.check_action("resume", ()) is False  # hidden
            assert screen.check_action("why_no_resume", ())
            await pilot.press("r")
            await pilot.pause()
            assert app.screen is screen
            assert reason in notices(app)[-1]
        # Opened on the main screen: not offered there either; ctrl+r says why.
        for run_id, reason in (("done", "already finished (answered)"), ("alive", "is still running")):
            if app.screen is not screen:
                screen = await open_history_screen(pilot, app, 2)
            await select(pilot, screen, run_id)
            await pilot.press("enter")
            await wait_for(lambda: app.screen is main and main.phase == "done", what="the replayed run")
            await wait_for(lambda wanted=run_id: main.run_id == wanted, what=f"run {run_id} on the main screen")
            assert main.check_action("resume", ()) is False
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert main.phase == "done" and reason in notices(app)[-1]
    with open_history(db) as history:
        assert history.get_run("alive").status == "running" and history.get_run("done").resumes == 0


async def test_a_run_resumed_from_the_history_reads_in_order(tools: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    script = write_script(tmp_path / "run.jsonl", [command("wait release"), "Released.", answer("done")])
    db = tmp_path / "history.db"
    app = ApplianceApp({"db": db, "backend": "replay", "replay": script, "workspace": workspace})
    async with app.run_test(size=(100, 30)) as pilot:
        main = app.main
        await interrupt_a_waiting_run(pilot, app, workspace)
        await pilot.press("ctrl+n")
        assert not main.query(TurnView)
        (workspace / "release").write_text("go", encoding="utf-8")
        screen = await open_history_screen(pilot, app, 1)
        assert screen.check_action("resume", ()) is True
        await pilot.press("r")
        await wait_for(lambda: main.run_status == "answered", what="the resumed run")
        # The recorded turn (replayed from the history) comes first, then the resume and its notes,
        # then what the resumed run did, once each.
        lines = transcript_outline(main)
        resumed = lines.index("Resumed after turn 1.")
        assert lines[:resumed] == ["stopped call"], lines
        assert "did not finish and run again" in lines[resumed + 1], lines
        summary = "Asking for the final answer: the model called no more tools."
        assert lines[resumed + 2 :] == ["finished call", "turn", summary, "turn", "answer"], lines
        assert len(main.query(AnswerPanel)) == 1 and main.query_one(AnswerPanel).answer == "done"
    assert run_count(db) == 1
