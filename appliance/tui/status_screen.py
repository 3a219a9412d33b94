"""The status screen: the health of each component with its fix (from `appliance doctor`), then the
effective configuration with where each value came from."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.install.doctor import Check
from appliance.textutil import one_line
from appliance.tui import format as fmt

if TYPE_CHECKING:
    from appliance.tui.app import ApplianceApp


@dataclass(frozen=True)
class Diagnosis:
    hardware: str
    plan: str
    checks: list[Check]


Diagnose = Callable[[Settings], Diagnosis]

MARKS = {"ok": ("ok", "bold $success"), "warn": ("WARN", "bold $warning"), "fail": ("FAIL", "bold $error")}


def doctor_diagnosis(settings: Settings) -> Diagnosis:
    """The checks of `appliance doctor`, run the same way."""
    from appliance.install import doctor
    from appliance.install.hardware import detect

    hardware = detect(disk_path=settings.dirs.data_dir)
    plan, checks = doctor.diagnose(settings, hardware)
    return Diagnosis(hardware.summary(), plan, checks)


def config_rows(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, value, where it came from) for every setting; secrets stay redacted."""
    rows = [("profile", settings.profile, "active profile")]
    for section, values in settings.as_dict(redact=True).items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)
            dotted = f"{section}.{key}"
            rows.append((dotted, shown if shown != "" else '""', settings.origins.get(dotted, "default")))
    return rows


def check_content(check: Check) -> Content:
    word, style = MARKS.get(check.status, ("skip", "$text-muted"))
    parts: list[str | tuple[str, str]] = [
        (f"[{word:^4}] ", style),
        (fmt.clean(check.component), "bold"),
        f": {fmt.clean(check.detail)}",
    ]
    if check.fix and check.status in ("warn", "fail"):
        parts += [("\n       fix: ", "bold"), fmt.clean(check.fix)]
    return Content.assemble(*parts)


def config_widths(terminal_width: int) -> tuple[int, int, int]:
    """Setting, value and origin column widths: the value takes what the other two leave (26 at least)."""
    key_width, origin_width = 25, 19 if terminal_width < 120 else 26
    # Each column pads one cell either side; the screen keeps two cells of margin and a scrollbar.
    value_width = max(26, terminal_width - key_width - origin_width - 6 - 4)
    return key_width, value_width, origin_width


class StatusScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("r", "recheck", "Check again"),
    ]

    def __init__(self, diagnose: Diagnose) -> None:
        super().__init__(id="status-screen")
        self.diagnose = diagnose
        self._widths = (0, 0, 0)

    @property
    def appliance(self) -> ApplianceApp:
        from appliance.tui.app import ApplianceApp

        assert isinstance(self.app, ApplianceApp)
        return self.app

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="status-body"):
            yield Static("", id="status-title", classes="screen-title")
            yield Static(Content.styled("Components", "bold $accent"), classes="section-title")
            yield Vertical(id="checks")
            yield Static("", id="hardware")
            yield Static(Content.styled("Configuration", "bold $accent"), classes="section-title")
            yield DataTable(id="config", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        app = self.appliance
        settings = app.settings
        title: list[str | tuple[str, str]] = [("Status", "bold")]
        if settings is not None:
            title.append((f"  profile {settings.profile}", "$accent"))
        if app.history is not None:
            title.append((f"  history {fmt.clean(str(app.history.path))}", "$text-muted"))
        self.query_one("#status-title", Static).update(Content.assemble(*title))
        self._fill_config(self.app.size.width)
        self.query_one("#status-body").focus()
        self.action_recheck()

    def on_resize(self, event: events.Resize) -> None:
        if config_widths(event.size.width) != self._widths:
            self._fill_config(event.size.width)

    def _fill_config(self, terminal_width: int) -> None:
        """The settings table, its values as wide as the terminal allows (cut with … only beyond that)."""
        self._widths = key_width, value_width, origin_width = config_widths(terminal_width)
        table = self.query_one("#config", DataTable)
        table.clear(columns=True)
        table.add_column("Setting", key="key", width=key_width)
        table.add_column("Value", key="value", width=value_width)
        table.add_column("From", key="origin", width=origin_width)
        settings = self.appliance.settings
        if settings is not None:
            # rich Text from plain strings: a str cell would be parsed as markup.
            for key, value, origin in config_rows(settings):
                row = (Text(key), Text(one_line(value, value_width)), Text(one_line(origin, origin_width)))
                table.add_row(*row, key=key)

    def action_back(self) -> None:
        self.dismiss(None)

    def action_recheck(self) -> None:
        checks = self.query_one("#checks", Vertical)
        checks.remove_children()
        app = self.appliance
        if app.setup_error is not None:
            error = app.setup_error
            checks.mount(Static(check_content(Check("configuration", "fail", error.message, error.fix or ""))))
        if app.settings is None:
            return
        checks.mount(Static(Content.styled("checking…", "italic $text-muted"), id="checking"))
        self._run_checks(app.settings)

    @work(thread=True, exclusive=True, group="doctor", exit_on_error=False)
    def _run_checks(self, settings: Settings) -> None:
        try:
            diagnosis = self.diagnose(settings)
        except ApplianceError as exc:
            diagnosis = Diagnosis("", "", [Check("doctor", "fail", exc.message, exc.fix or "")])
        except Exception as exc:
            diagnosis = Diagnosis("", "", [Check("doctor", "fail", f"{type(exc).__name__}: {exc}", "")])
        self.app.call_from_thread(self._show, diagnosis)

    def _show(self, diagnosis: Diagnosis) -> None:
        checks = self.query_one("#checks", Vertical)
        for widget in checks.query("#checking"):
            widget.remove()
        checks.mount_all([Static(check_content(check), classes=f"check -{check.status}") for check in diagnosis.checks])
        lines: list[Any] = []
        if diagnosis.plan:
            lines += [("Plan: ", "bold"), fmt.clean(diagnosis.plan)]
        if diagnosis.hardware:
            lines += [("\n" if lines else "", ""), fmt.clean(diagnosis.hardware)]
        self.query_one("#hardware", Static).update(Content.assemble(*lines))
