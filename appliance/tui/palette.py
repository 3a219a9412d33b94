"""The command palette's provider (Textual's `textual.command` API): the commands of commands.py and the profiles."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

from appliance.tui.commands import COMMANDS, ProfileChoice, profile_choices

if TYPE_CHECKING:
    from appliance.tui.app import ApplianceApp

Entry = tuple[str, str, Callable[[], object]]


class ApplianceCommands(Provider):
    """Every UI command with its key, then "Switch profile: NAME" for each profile (why not, when it cannot run)."""

    async def startup(self) -> None:
        from appliance.tui.app import ApplianceApp

        app = self.app
        assert isinstance(app, ApplianceApp)
        self._entries = entries(app, profile_choices(app.options))

    async def discover(self) -> Hits:
        for title, help_text, callback in self._entries:
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._entries:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)


def entries(app: ApplianceApp, profiles: list[ProfileChoice]) -> list[Entry]:
    listed: list[Entry] = [(c.title, f"{c.help} · {c.key}", partial(app.run_ui_command, c)) for c in COMMANDS]
    for choice in profiles:
        current = " (in use)" if choice.name == app.profile_name else ""
        help_text = choice.reason if choice.usable else f"cannot run here: {choice.reason}"
        listed.append((f"Switch profile: {choice.name}{current}", help_text, partial(app.switch_profile, choice)))
    return listed
