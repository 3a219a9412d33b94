"""Untrusted text (the model's, a tool's, a web page's) reaches the screen as text: no markup, no actions,
no terminal escape sequences. Written the way an attacker would try it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.content import Content
from textual.widgets import DataTable, Static

from appliance.tui.app import ApplianceApp
from appliance.tui.base import literal
from appliance.tui.history_screen import HistoryScreen
from appliance.tui.toolcall import ToolCallView
from tests.conftest import tool_call
from tests.tui_support import screen_text, use_scripted_tools, wait_for, write_script

pytestmark = pytest.mark.asyncio

ATTACKS = [
    "[@click=app.quit]click me[/]",
    "[bold red]LOUD[/bold red]",
    "[$accent]themed[/]",
    "[link=https://evil.example]phish[/link]",
]
ESCAPES = [
    "\x1b[2J\x1b[H",  # clear the screen
    "\x1b]52;c;ZXZpbA==\x07",  # OSC 52: write the clipboard
    "\x1b]8;;https://evil.example\x07hyper\x1b]8;;\x07",  # OSC 8 hyperlink
    "\x1b[?1049l",  # leave the alternate screen
    "\x9b31m",  # C1 CSI
]
PAYLOAD = " ".join(ATTACKS) + "".join(ESCAPES)


@pytest.mark.filterwarnings("ignore::pytest.PytestWarning")
def test_literal_content_has_no_markup_spans_or_control_characters() -> None:
    content = literal(PAYLOAD)
    assert isinstance(content, Content)
    assert content.spans == []
    for attack in ATTACKS:
        assert attack in content.plain
    assert not any(ch in content.plain for ch in "\x1b\x07\x9b")
    # The check below is able to see markup: parsed, the same text would carry an action.
    assert "@click=app.quit" in [span.style for span in Content.from_markup(ATTACKS[0]).spans]


@pytest.fixture
def tools(appliance_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_scripted_tools(monkeypatch)
    return appliance_home


def _no_actions(app: ApplianceApp) -> None:
    """No rendered span anywhere carries an action (what a [@click=...] tag would create)."""
    for widget in app.screen.query(Static):
        visual = widget.visual
        if isinstance(visual, Content):
            for span in visual.spans:
                # A markup tag would leave its style here: "@click=app.quit", "bold red", "$accent".
                style = span.style if isinstance(span.style, str) else repr(span.style)
                assert "app.quit" not in style and "bold red" not in style, (widget, span)


async def test_model_and_tool_text_is_shown_literally(tools: Path, tmp_path: Path) -> None:
    hostile_search = tool_call(
        "search_and_scrape_webpage", "google_search", {"q": PAYLOAD}, thinking=f"I think {PAYLOAD}"
    )
    said = f"Some **markdown** and {ATTACKS[0]} and {ATTACKS[1]} {ESCAPES[0]}{ESCAPES[1]}"
    script = write_script(
        tmp_path / "evil.jsonl",
        [hostile_search, said, f"<think>{PAYLOAD}</think>\\boxed{{{ATTACKS[0]} {ESCAPES[2]}}}"],
    )
    app = ApplianceApp({"backend": "replay", "replay": script, "db": tmp_path / "h.db"})
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.click("#task")
        await pilot.press(*"task [bold]x[/bold] [@click=app.quit]y[/]", "ctrl+s")
        await wait_for(lambda: app.main.phase == "done", what="the run")
        for view in app.main.query(ToolCallView):
            view.collapsed = False
        await pilot.pause()
        app.main.query_one("#transcript").scroll_home(animate=False)
        await pilot.pause()
        text = screen_text(app)
        assert "[@click=app.quit]" in text
        assert "[bold red]LOUD[/bold red]" in text or "[bold red]LOUD" in text
        assert "task [bold]x[/bold] [@click=app.quit]y[/]" in text
        assert not any(ch in text for ch in "\x1b\x07\x9b")
        _no_actions(app)
        assert app.main.run_status == "answered"
        answer = app.main.query_one(".answer-body", Static)
        assert ATTACKS[0] in str(answer.render())
        # Clicking where the fake action is does nothing but click text.
        await pilot.press("ctrl+g")
        assert app.clipboard.startswith(ATTACKS[0])
        assert "\x1b" not in app.clipboard
        # The history lists the hostile task as text too.
        await pilot.press("f2")
        screen = app.screen
        assert isinstance(screen, HistoryScreen)
        await wait_for(lambda: screen.query_one("#runs", DataTable).row_count == 1, what="the list")
        await pilot.pause()
        assert "[@click=app.quit]y[/]" in screen_text(app)
        assert app.is_running


async def test_tool_arguments_and_results_with_markup(tools: Path, tmp_path: Path) -> None:
    arguments = {"command": PAYLOAD, "sandbox_id": "[b]x[/b]"}
    script = write_script(
        tmp_path / "args.jsonl",
        [tool_call("tool-python", "run_command", arguments), "ok", "\\boxed{1}"],
    )
    app = ApplianceApp({"backend": "replay", "replay": script, "db": tmp_path / "h.db"})
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.click("#task")
        await pilot.press(*"go", "ctrl+s")
        await wait_for(lambda: app.main.phase == "done", what="the run")
        view = app.main.query_one(ToolCallView)
        view.collapsed = False
        await pilot.pause()
        app.main.query_one("#transcript").scroll_home(animate=False)
        await pilot.pause()
        text = screen_text(app)
        assert '"sandbox_id": "[b]x[/b]"' in text
        assert "ran: [@click=app.quit]click me[/]" in text
        assert json.dumps(ATTACKS[2])[1:-1] in text
        _no_actions(app)
