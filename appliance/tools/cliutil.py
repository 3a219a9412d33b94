"""Small helpers for the tool subcommands (`appliance search`, `corpus`, `searxng`, `fetch`).

Those commands live beside their tools and may not import appliance.cli (the
layers contract), so they read the options given before the subcommand
(`appliance --profile X search ...`, kept in ctx.obj) themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click

from appliance.config import Settings, load_settings


def settings_from_context(ctx: click.Context, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings with the top-level model options (--profile, --backend, --model, --replay, --base-url) applied."""
    options: dict[str, Any] = dict(ctx.find_root().obj or {})
    merged: dict[str, Any] = {
        "model.backend": options.get("backend"),
        "model.replay": str(options["replay"]) if options.get("replay") else None,
        "model.base_url": options.get("base_url"),
    }
    model = options.get("model")
    if model:
        is_file = str(model).endswith(".gguf") or Path(str(model)).expanduser().exists()
        merged["model.path" if is_file and options.get("backend") != "openai" else "model.name"] = str(model)
    if options.get("replay") and not options.get("backend"):
        merged["model.backend"] = "replay"
    merged.update(overrides or {})
    return load_settings(profile=options.get("profile"), overrides=merged)


def exit_with(code: int) -> NoReturn:
    """End the command with `code`.

    `ctx.exit(code)` is not enough here: appliance.cli.main runs click with
    standalone_mode=False, where click returns that code instead of exiting.
    """
    raise SystemExit(int(code))
