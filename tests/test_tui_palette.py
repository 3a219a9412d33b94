"""The command palette (`/` in the task box, ctrl+p), profile switching and the help: driven with Pilot."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import TextArea

from appliance.tui.app import ApplianceApp
from appliance.tui.commands import COMMANDS, help_text, profile_choice
from appliance.tui.dialogs import HelpDialog
from appliance.tui.history_screen import HistoryScreen
from tests.tui_support import answer, wait_for, write_script


def demo_profile(home: Path, script: Path) -> None:
    profiles = home / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "demo.toml").write_text(
        f'[profile]\nname = "demo"\n[model]\nbackend = "replay"\nreplay = "{script}"\n', encoding="utf-8"
    )


def app_for(tmp_path: Path) -> ApplianceApp:
    script = write_script(tmp_path / "s.jsonl", ["Done.", answer("ok")])
    return ApplianceApp({"db": tmp_path / "history.db", "backend": "replay", "replay": script, "tools_enabled": ""})


def hits(app: ApplianceApp) -> list[str]:
    results = app.screen.query_one(CommandList)
    return [str(results.get_option_at_index(i).prompt).split("\n")[0] for i in range(results.option_count)]


async def open_palette(pilot: object, app: ApplianceApp, query: str) -> None:
    await wait_for(lambda: isinstance(app.screen, CommandPalette), what="the palette")
    await pilot.press(*query)  # type: ignore[attr-defined]
    await wait_for(lambda: bool(hits(app)), what=f"hits for {query!r}")


def test_profiles_offered_only_when_they_can_run(appliance_home: Path, tmp_path: Path) -> None:
    demo_profile(appliance_home, tmp_path / "s.jsonl")
    assert profile_choice("demo", {}).usable
    missing = profile_choice("cpu-8b", {})
    assert (
        not missing.usable
        and "not installed" in missing.reason
        and "appliance install --profile cpu-8b" in (missing.reason)
    )
    assert profile_choice("remote", {}).usable  # a server profile: its server is checked when the run starts
    bad = profile_choice("nosuch", {})
    assert not bad.usable and "nosuch" in bad.reason


def test_help_lists_every_command_with_its_key() -> None:
    text = help_text()
    for command in COMMANDS:
        assert command.title in text and command.key in text
    assert "ctrl+p" in text and "/" in text and "up/down" in text


@pytest.mark.asyncio
async def test_slash_opens_the_palette_filtered_as_you_type(appliance_home: Path, tmp_path: Path) -> None:
    app = app_for(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.click("#task")
        await pilot.press("/")
        await open_palette(pilot, app, "history")
        assert hits(app)[0] == "Open history"
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, HistoryScreen), what="the history screen")
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.main, what="the main screen")
        # `/` inside a task is just a character.
        area = app.main.query_one("#task", TextArea)
        await pilot.click("#task")
        await pilot.press(*"a/b")
        assert area.text == "a/b" and app.screen is app.main


@pytest.mark.asyncio
async def test_ctrl_p_runs_commands_and_switches_the_profile(appliance_home: Path, tmp_path: Path) -> None:
    demo_profile(appliance_home, write_script(tmp_path / "s.jsonl", ["Done.", answer("ok")]))
    # No --backend flag: the profile decides (a flag would win over any profile).
    app = ApplianceApp({"db": tmp_path / "history.db", "tools_enabled": "", "profile": "cpu-8b"})
    async with app.run_test(size=(120, 30)) as pilot:
        shown = app.main.transcript.show_thinking
        await pilot.press("ctrl+p")
        await open_palette(pilot, app, "toggle think")
        assert hits(app)[0] == "Toggle thinking"
        await pilot.press("enter")
        await wait_for(lambda: app.main.transcript.show_thinking != shown, what="thinking toggled")

        await pilot.press("ctrl+p")
        await open_palette(pilot, app, "switch profile")
        listed = hits(app)
        assert any(h.startswith("Switch profile: demo") for h in listed)
        assert "Switch profile: cpu-8b (in use)" in listed

        # A profile whose model is not installed is refused with the reason; nothing changes.
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await open_palette(pilot, app, "profile: cpu-8b")
        await pilot.press("enter")
        await wait_for(lambda: app.screen is app.main, what="the main screen")
        assert app.options["profile"] == "cpu-8b" and app.main.meter.profile == "cpu-8b"
        assert any("not installed" in n.message for n in app._notifications)

        await pilot.press("ctrl+p")
        await open_palette(pilot, app, "profile: demo")
        await pilot.press("enter")
        await wait_for(lambda: app.options.get("profile") == "demo", what="the profile switched")
        assert app.profile_name == "demo" and app.main.meter.profile == "demo"
        assert app.factory is not None and app.factory.settings().profile == "demo"

        await pilot.press("f1")
        await wait_for(lambda: isinstance(app.screen, HelpDialog), what="the help")
        assert "Toggle thinking" in str(app.screen.query_one("#help-text").render())
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.main, what="the main screen")

        # Back to a profile that cannot run here: refused, the demo profile stays.
        await pilot.press("ctrl+p")
        await open_palette(pilot, app, "profile: cpu-8b")
        await pilot.press("enter")
        await wait_for(lambda: app.screen is app.main, what="the main screen")
        assert app.options["profile"] == "demo" and app.main.meter.profile == "demo"
