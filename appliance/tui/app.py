"""`appliance` with no arguments: the terminal UI.

A thin face over the headless core: runs are assembled by runs.RunFactory from
the same options as `appliance --task`, recorded by the store's recorder, and
shown by subscribing to the loop's events. Problems found at start (a bad
config file, a history that cannot be opened) are shown in the UI with their fix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import Provider

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.options import settings_from_options
from appliance.store import History, open_history
from appliance.tui.commands import Command, ProfileChoice
from appliance.tui.dialogs import HelpDialog
from appliance.tui.history_screen import HistoryScreen, RunDeleted
from appliance.tui.main_screen import MainScreen
from appliance.tui.palette import ApplianceCommands
from appliance.tui.runs import RunFactory
from appliance.tui.status_screen import Diagnose, StatusScreen, doctor_diagnosis

THEMES = {"dark": "textual-dark", "light": "textual-light"}


def model_label(settings: Settings) -> str:
    model = settings.model
    if model.backend == "replay":
        return f"replay:{Path(model.replay).name}" if model.replay else "replay"
    if model.backend == "openai":
        return model.name or model.base_url
    path = settings.model_path()
    return path.name if path else "no model file"


class ApplianceApp(App[int]):
    # Absolute: a relative path would be read beside the file of any subclass.
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "appliance"
    COMMANDS: ClassVar[set[type[Provider] | Callable[[], type[Provider]]]] = App.COMMANDS | {ApplianceCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "help", "Help", show=False),
        Binding("f2", "history", "History"),
        Binding("f3", "status", "Status"),
        Binding("f4", "toggle_theme", "Theme", show=False),
        # Shown in the welcome text; the footer has no room for it at 80 columns.
        Binding("ctrl+q", "quit", "Quit", priority=True, show=False),
    ]

    def __init__(
        self,
        options: dict[str, Any],
        *,
        factory: RunFactory | None = None,
        diagnose: Diagnose = doctor_diagnosis,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.options = dict(options)
        self.diagnose = diagnose
        self.clock = clock
        self.setup_error: ApplianceError | None = None
        self.settings: Settings | None = None
        self.history: History | None = None
        self.factory: RunFactory | None = None
        self._main: MainScreen | None = None
        try:
            self.settings = settings_from_options(self.options)
            db = self.options.get("db")
            self.history = open_history(Path(db) if db else self.settings.dirs.default_db)
            self.factory = factory or RunFactory(self.options)
        except ApplianceError as exc:
            self.setup_error = exc
        wanted = self.settings.ui.theme if self.settings else "dark"
        self.theme = THEMES.get(wanted, wanted if wanted in self.available_themes else "textual-dark")

    @property
    def profile_name(self) -> str:
        return self.settings.profile if self.settings else ""

    @property
    def model_label(self) -> str:
        return model_label(self.settings) if self.settings else ""

    @property
    def main(self) -> MainScreen:
        assert self._main is not None, "the app is not mounted"
        return self._main

    def on_mount(self) -> None:
        attachments = [Path(p).expanduser().resolve() for p in self.options.get("attach") or ()]
        self._main = MainScreen(attachments, self.clock)
        self.install_screen(self._main, "main")
        self.push_screen("main")

    def action_history(self) -> None:
        if isinstance(self.screen, HistoryScreen) or self.history is None:
            return

        async def chosen(choice: tuple[str, str] | None) -> None:
            if choice is None:
                return
            verb, run_id = choice
            await self.main.open_run(run_id, then_resume=verb == "resume")

        self.push_screen(HistoryScreen(), chosen)

    async def on_run_deleted(self, message: RunDeleted) -> None:
        main = self.main
        if main.run_id == message.run_id and main.phase != "running":
            await main.action_new()

    def action_status(self) -> None:
        if not isinstance(self.screen, StatusScreen):
            self.push_screen(StatusScreen(self.diagnose))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpDialog):
            self.push_screen(HelpDialog())

    async def run_ui_command(self, command: Command) -> None:
        """A command chosen in the palette: the same action its key runs."""
        if command.action.startswith("app."):
            await self.run_action(command.action.removeprefix("app."))
            return
        if self.screen is not self.main:
            self.notify(f"{command.title}: go back to the main screen first (escape).", severity="warning")
            return
        await self.main.run_action(command.action)

    def switch_profile(self, choice: ProfileChoice) -> None:
        """Use another profile for the next run (the one going on keeps its own)."""
        if not choice.usable or self.factory is None:
            self.notify(f"Profile {choice.name} cannot run here: {choice.reason}", severity="error", timeout=10)
            return
        self.options["profile"] = self.factory.options["profile"] = choice.name
        self.settings = self.factory.settings()
        main = self.main
        if main.phase != "running":
            main.meter.profile, main.meter.model = self.profile_name, self.model_label
            main.status_bar.refresh_meter()
        self.notify(f"The next run uses profile {choice.name} ({choice.reason}).")

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    async def action_quit(self) -> None:
        # A live run is cancelled and allowed to record itself as interrupted before the app goes.
        main = self.main
        if main.phase == "running":
            main.action_cancel()
            await main.wait_idle(timeout=15)
        self.exit(0)

    def on_unmount(self) -> None:
        if self.factory is not None:
            self.factory.release()
        if self.history is not None:
            self.history.close()


def run_app(options: dict[str, Any]) -> int:
    """Open the UI with the common command-line options; the exit code of `appliance`."""
    app = ApplianceApp(options)
    code = app.run()
    return int(code or 0)
