"""Prompt recall: ↑/↓ in the task box bring back earlier tasks from the history database (Pilot)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import TextArea

from appliance.store import open_history
from appliance.tui.app import ApplianceApp
from appliance.tui.recall import PromptRecall
from tests.tui_support import answer, record_fixed_run, wait_for, write_script


def recorded(tmp_path: Path) -> Path:
    db = tmp_path / "history.db"
    record_fixed_run(db, "20250101-090000-aaaaaa", "Oldest question?", started_at="2025-01-01T09:00:00.000+00:00")
    record_fixed_run(db, "20250102-090000-bbbbbb", "Middle question?", started_at="2025-01-02T09:00:00.000+00:00")
    record_fixed_run(db, "20250103-090000-cccccc", "Oldest question?", started_at="2025-01-03T09:00:00.000+00:00")
    record_fixed_run(db, "20250104-090000-dddddd", "Bell\x07 question?", started_at="2025-01-04T09:00:00.000+00:00")
    return db


def test_recent_tasks_are_newest_first_each_once(appliance_home: Path, tmp_path: Path) -> None:
    with open_history(recorded(tmp_path)) as history:
        assert history.recent_tasks() == ["Bell\x07 question?", "Oldest question?", "Middle question?"]
        assert history.recent_tasks(limit=1) == ["Bell\x07 question?"]


def test_recall_walks_back_and_returns_to_the_draft() -> None:
    recall = PromptRecall(["new", "old"])
    assert recall.newer() is None  # nothing newer than the draft
    assert recall.older("my draft") == "new"
    assert recall.older("new") == "old"
    assert recall.older("old") is None  # the oldest: the box stays as it is
    assert recall.newer() == "new"
    assert recall.newer() == "my draft"
    assert recall.newer() is None


@pytest.mark.asyncio
async def test_up_and_down_recall_tasks_of_earlier_sessions(appliance_home: Path, tmp_path: Path) -> None:
    db = recorded(tmp_path)
    script = write_script(tmp_path / "s.jsonl", ["Done.", answer("ok")])
    app = ApplianceApp({"db": db, "backend": "replay", "replay": script, "tools_enabled": ""})
    async with app.run_test(size=(100, 30)) as pilot:
        area = app.main.query_one("#task", TextArea)
        await pilot.click("#task")
        await pilot.press(*"dra")
        await pilot.press("up")
        assert area.text == "Bell\\x07 question?"  # the control character shown, not sent to the terminal
        await pilot.press("up")
        assert area.text == "Oldest question?"
        await pilot.press("up", "up")
        assert area.text == "Middle question?"  # the oldest: ↑ stays
        await pilot.press("down", "down", "down")
        assert area.text == "dra"  # back to what was being typed

        # Several lines typed: the arrows move the cursor, the text stays.
        area.text = ""
        await pilot.press(*"line one", "enter", *"line two")
        typed = area.text
        assert typed == "line one\nline two"
        await pilot.press("up")
        assert area.text == typed and area.cursor_location[0] == 0

        # A run's task joins the recall at once, newest first.
        area.text = ""
        await pilot.press(*"Fresh question?", "ctrl+s")
        await wait_for(lambda: app.main.phase == "done", what="the run")
        await pilot.click("#task")
        await pilot.press("up")
        assert area.text == "Fresh question?"
