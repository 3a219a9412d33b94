"""The common command-line options as settings: shared by the CLI and the terminal UI.

Kept apart from appliance.cli so the UI (a layer below the CLI) can read the
same flags the same way without importing the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.config import Settings, load_settings


def option_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Command-line options as "section.key" settings overrides (None: not given)."""
    overrides: dict[str, Any] = {
        "model.backend": options.get("backend"),
        # Absolute, so `appliance resume` finds the script from any directory.
        "model.replay": str(Path(options["replay"]).expanduser().resolve()) if options.get("replay") else None,
        "model.base_url": options.get("base_url"),
        "agent.max_turns": options.get("max_turns"),
        "agent.keep_last": options.get("keep_last"),
    }
    model = options.get("model")
    if model:
        backend = options.get("backend")
        is_file = model.endswith(".gguf") or Path(model).expanduser().exists()
        overrides["model.path" if is_file and backend != "openai" else "model.name"] = model
    if options.get("replay") and not options.get("backend"):
        overrides["model.backend"] = "replay"
    return overrides


def settings_from_options(options: dict[str, Any]) -> Settings:
    return load_settings(profile=options.get("profile"), overrides=option_overrides(options))
