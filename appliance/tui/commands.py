"""The UI's commands, for the command palette (`/` in the task box, ctrl+p) and the help. No textual import.

Each command names the screen action it runs and the key that runs it too, so
the palette, the footer and the help cannot disagree. Profiles are offered for
the next run only when they can run here: a local profile whose model file is
installed, a server profile (its server is checked by f3 and when the run
starts); the others are listed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import available_profiles
from appliance.errors import ApplianceError
from appliance.options import settings_from_options


@dataclass(frozen=True)
class Command:
    title: str
    help: str
    action: str  # an action of the app ("app.x") or of the main screen ("x")
    key: str


COMMANDS = (
    Command("New run", "clear the screen for a new task", "new", "ctrl+n"),
    Command("Run the task", "run the task in the box (after a finished run: as a follow-up of it)", "run", "ctrl+s"),
    Command(
        "Ask a follow-up",
        "ask the finished run on screen a question: its conversation goes on as a new linked run",
        "followup",
        "ctrl+s",
    ),
    Command("Open history", "past runs: open, resume, delete, search", "app.history", "f2"),
    Command("Resume the run", "continue the interrupted or failed run on screen", "resume", "ctrl+r"),
    Command("Export the run", "write the run on screen as a Markdown report", "export", "ctrl+f"),
    Command("Show settings", "the configuration in effect and the health of every component", "app.status", "f3"),
    Command("Toggle thinking", "show or hide the model's thinking", "thinking", "ctrl+t"),
    Command("Attach files", "files the model may upload into its sandbox", "attach", "ctrl+o"),
    Command("Help", "every command and its key", "app.help", "f1"),
)


@dataclass(frozen=True)
class ProfileChoice:
    name: str
    usable: bool
    reason: str  # what the profile runs, or why it cannot run here


def profile_choice(name: str, options: dict[str, Any]) -> ProfileChoice:
    """Whether `name` can run the next run with these command-line options (flags still win over it)."""
    try:
        settings = settings_from_options({**options, "profile": name})
    except ApplianceError as exc:
        return ProfileChoice(name, False, exc.one_line())
    model = settings.model
    if model.backend == "replay":
        return ProfileChoice(name, True, f"replay {Path(model.replay).name if model.replay else 'script'}")
    if model.backend == "openai":
        return ProfileChoice(name, True, f"model server at {model.base_url}")
    path = settings.model_path()
    if path is None:
        return ProfileChoice(name, False, "no model file configured: pass --model PATH.gguf")
    if not path.is_file():
        return ProfileChoice(name, False, f"{path.name} is not installed: run `appliance install --profile {name}`")
    return ProfileChoice(name, True, path.name)


def profile_choices(options: dict[str, Any]) -> list[ProfileChoice]:
    return [profile_choice(name, options) for name in available_profiles()]


def help_text() -> str:
    """Every command with its key, for the help dialog."""
    width = max(len(c.key) for c in COMMANDS)
    lines = [f"{c.key.ljust(width)}  {c.title}: {c.help}" for c in COMMANDS]
    lines += [
        f"{'/'.ljust(width)}  in an empty task box: this list as a palette, filtered as you type (also ctrl+p)",
        f"{'up/down'.ljust(width)}  in a one-line task box: earlier tasks",
        f"{'ctrl+p'.ljust(width)}  Switch profile: the next run's profile (installed ones; the others say why)",
    ]
    return "\n".join(lines)
