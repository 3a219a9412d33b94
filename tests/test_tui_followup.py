"""Follow-ups in the TUI, driven with Pilot: the task box under a finished run's answer asks a follow-up.

ctrl+s sends the question as a follow-up of the run on screen (a new run linked
to it); ctrl+n clears the screen and the next task is a run of its own; the
palette's "Ask a follow-up" sends the question in the box. Replay backend, real
history.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import TextArea

from appliance.store import open_history
from appliance.tui.app import ApplianceApp
from appliance.tui.main_screen import FOLLOWUP_PLACEHOLDER, TASK_PLACEHOLDER
from tests.test_tui_palette import hits, open_palette
from tests.tui_support import answer, wait_for, write_script


async def send(pilot: object, app: ApplianceApp, text: str) -> str:
    """Type `text` in the task box, ctrl+s, wait for the run to end; its run id."""
    main = app.main
    before = main.run_id
    await pilot.click("#task")  # type: ignore[attr-defined]
    await pilot.press(*text, "ctrl+s")  # type: ignore[attr-defined]
    await wait_for(lambda: main.phase == "done" and main.run_id != before, what=f"the run of {text!r}")
    assert main.run_id is not None
    return main.run_id


@pytest.mark.asyncio
async def test_the_task_box_under_an_answer_asks_a_follow_up(appliance_home: Path, tmp_path: Path) -> None:
    script = write_script(tmp_path / "s.jsonl", ["Done.", answer("ok")])
    db = tmp_path / "history.db"
    app = ApplianceApp({"db": db, "backend": "replay", "replay": script, "tools_enabled": ""})
    async with app.run_test(size=(100, 30)) as pilot:
        main = app.main
        area = main.query_one("#task", TextArea)
        assert area.placeholder == TASK_PLACEHOLDER and main.followup_target is None
        first = await send(pilot, app, "Capital of France?")
        assert main.run_status == "answered" and main.followup_target == first
        assert area.placeholder == FOLLOWUP_PLACEHOLDER

        second = await send(pilot, app, "And of Germany?")
        assert main.run_status == "answered" and main.followup_target == second

        # The palette's follow-up sends what is in the box, as a follow-up of the run on screen.
        await pilot.click("#task")
        await pilot.press(*"And of Italy?", "ctrl+p")
        await open_palette(pilot, app, "follow-up")
        assert hits(app)[0] == "Ask a follow-up"
        await pilot.press("enter")
        await wait_for(lambda: main.phase == "done" and main.run_id != second, what="the palette's follow-up")
        third = main.run_id

        # ctrl+n: a new task of its own.
        await pilot.press("ctrl+n")
        await wait_for(lambda: main.phase == "idle", what="a new task")
        assert main.followup_target is None and area.placeholder == TASK_PLACEHOLDER
        fourth = await send(pilot, app, "Capital of Spain?")

    with open_history(db) as history:
        runs = {run_id: history.get_run(run_id) for run_id in (first, second, third, fourth)}
    assert runs[first].parent_run is None and runs[fourth].parent_run is None
    assert runs[second].parent_run == first and runs[third].parent_run == second
    assert runs[second].task == "And of Germany?" and runs[second].context_mode == "conversation"
    assert runs[third].task == "And of Italy?"


@pytest.mark.asyncio
async def test_an_interrupted_run_on_screen_is_not_followed_up(appliance_home: Path, tmp_path: Path) -> None:
    script = write_script(tmp_path / "s.jsonl", [{"content": "Thinking slowly. " * 40, "delay": 30}])
    db = tmp_path / "history.db"
    app = ApplianceApp({"db": db, "backend": "replay", "replay": script, "tools_enabled": ""})
    async with app.run_test(size=(100, 30)) as pilot:
        main = app.main
        await pilot.click("#task")
        await pilot.press(*"Slow question", "ctrl+s")
        await wait_for(lambda: main.phase == "running" and main.meter.turn >= 1, what="the run to start")
        await pilot.press("escape")
        await wait_for(lambda: main.phase == "done", timeout=30, what="the cancel")
        assert main.run_status == "interrupted" and main.followup_target is None
        assert main.query_one("#task", TextArea).placeholder == TASK_PLACEHOLDER
        await pilot.press("ctrl+p")
        await open_palette(pilot, app, "follow-up")
        await pilot.press("enter")
        await wait_for(lambda: app.screen is main, what="the main screen")
        assert any("needs a finished run" in n.message for n in app._notifications)
