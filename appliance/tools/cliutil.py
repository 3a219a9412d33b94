"""Small helpers for the tool subcommands (`appliance search`, `corpus`, `searxng`, `fetch`).

Those commands live beside their tools and may not import appliance.cli (the
layers contract); they read the options given before the subcommand
(`appliance --profile X search ...`, kept in ctx.obj) through appliance.options.
"""

from __future__ import annotations

from typing import Any, NoReturn

import click

from appliance.config import Settings, load_settings
from appliance.options import option_overrides


def settings_from_context(ctx: click.Context, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings with the options given before the subcommand (--profile, --backend, --model, ...) applied."""
    options: dict[str, Any] = dict(ctx.find_root().obj or {})
    return load_settings(profile=options.get("profile"), overrides={**option_overrides(options), **(overrides or {})})


def exit_with(code: int) -> NoReturn:
    """End the command with `code`.

    `ctx.exit(code)` is not enough here: appliance.cli.main runs click with
    standalone_mode=False, where click returns that code instead of exiting.
    """
    raise SystemExit(int(code))
