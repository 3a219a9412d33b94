"""The TUI's status screen lists the configured MCP servers with their health (real servers)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable

from appliance.install import doctor
from appliance.tui.app import ApplianceApp
from appliance.tui.status_screen import Diagnosis, StatusScreen, config_rows
from tests.conftest import REPO_ROOT, tool_call
from tests.tui_support import answer, use_scripted_tools, wait_for, write_script

pytestmark = pytest.mark.asyncio

SERVERS = str(REPO_ROOT / "tests" / "mcpservers.py")


def write_notes_and_ghost(home: Path, notes_extra: str = "") -> None:
    """A working server (`notes`) and one that exits before the handshake (`ghost`)."""
    (home / "config.toml").write_text(
        f"""
[mcp_servers.notes]
command = ["{sys.executable}", "{SERVERS}", "notes"]
{notes_extra}

[mcp_servers.ghost]
command = ["{sys.executable}", "{SERVERS}", "broken-start"]
""",
        encoding="utf-8",
    )


async def test_status_screen_lists_mcp_servers_and_their_health(
    appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_scripted_tools(monkeypatch)
    write_notes_and_ghost(appliance_home, 'env = { NOTES_TOKEN = "tok-status-123" }')

    def diagnose(settings: Any) -> Diagnosis:
        # The MCP part of `appliance doctor`, as the screen's default diagnosis runs it,
        # without the minute of llama.cpp and bwrap checks this test does not need.
        return Diagnosis("", "", doctor.check_mcp_servers(settings))

    script = write_script(tmp_path / "s.jsonl", [answer("1")])
    app = ApplianceApp({"db": tmp_path / "history.db", "backend": "replay", "replay": script}, diagnose=diagnose)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        assert isinstance(screen, StatusScreen)
        await wait_for(lambda: len(screen.query(".check")) == 2, what="the MCP checks", timeout=60)
        checks = "\n".join(str(w.render()) for w in screen.query(".check"))
        assert "[ ok ] MCP server notes: stdio" in checks and "add_note" in checks
        assert "[FAIL] MCP server ghost" in checks and "cannot open database" in checks
        assert "fix: check [mcp_servers.ghost] command" in checks
        table = screen.query_one("#config", DataTable)
        assert str(table.get_row("mcp_servers.notes")[0]) == "mcp_servers.notes"
        assert app.settings is not None
        rows = {key: (value, origin) for key, value, origin in config_rows(app.settings)}
        value, origin = rows["mcp_servers.notes"]
        assert '"NOTES_TOKEN": "***"' in value and "tok-status-123" not in value
        assert origin == str(appliance_home / "config.toml")


async def test_a_run_in_the_ui_shows_mcp_failures_and_goes_on(
    appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_scripted_tools(monkeypatch)
    write_notes_and_ghost(appliance_home)
    script = write_script(
        tmp_path / "s.jsonl",
        [
            tool_call("notes", "crash", {}),
            tool_call("notes", "add_note", {"title": "Deimos", "body": "outer moon"}),
            "Noted.",
            answer("Deimos"),
        ],
    )
    app = ApplianceApp({"db": tmp_path / "history.db", "backend": "replay", "replay": script})
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.click("#task")
        await pilot.press(*"note it", "ctrl+s")
        await wait_for(lambda: app.main.phase == "done", what="the run", timeout=60)
        assert app.main.run_status == "answered"
        notes = [str(w.render()) for w in app.main.query(".note.-warning")]
        assert any("MCP server 'ghost' could not start" in n for n in notes), notes
        assert any("MCP server 'notes' exited during the call" in n for n in notes), notes
