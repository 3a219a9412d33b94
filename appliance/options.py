"""Command-line options shared by every face (`appliance`, its subcommands, the eval harness, the TUI).

They map onto settings overrides ("section.key"), the top layer of the
configuration precedence (see appliance/config.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.config import Settings, load_settings

_COMMON = [
    click.option("--profile", help="Hardware/model profile (see `appliance profiles`)."),
    click.option("--backend", type=str, help="llamacpp | openai | replay"),
    click.option("--replay", "replay", type=click.Path(path_type=Path), help="JSONL of scripted assistant turns."),
    click.option("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1"),
    click.option("--model", "model", help="GGUF file (llamacpp) or model name (openai)."),
    click.option("--max-turns", type=int, help="Turn budget (default 600)."),
    click.option("--keep-last", type=int, help="Tool results kept in context (default 5, -1 = all)."),
    click.option(
        "--attempts",
        type=int,
        help="Runs after the first for a task without an answer, each with a failure summary (default 5, 0 = one run).",
    ),
    click.option("--workspace", type=click.Path(path_type=Path), help="Host directory used as the sandbox home."),
    click.option("--db", type=click.Path(path_type=Path), help="History database (default: data dir)."),
    click.option(
        "--web",
        help="live (default: the network, archived), archive:RUN_ID, or a WARC file or directory "
        "(answer searches and fetches from that archive only, never the network).",
    ),
    click.option(
        "--attach",
        multiple=True,
        type=click.Path(path_type=Path),
        help="File or directory the model may upload into its sandbox (repeatable).",
    ),
]


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_COMMON):
        func = option(func)
    return func


def collect_common(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """Options given to a subcommand win over the same options given before it."""
    merged = dict(ctx.obj or {})
    for key, value in values.items():
        if value not in (None, ()):
            merged[key] = value
    return merged


def option_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Command-line options as "section.key" settings overrides (None: not given)."""
    overrides: dict[str, Any] = {
        "model.backend": options.get("backend"),
        # Absolute, so `appliance resume` finds the script from any directory.
        "model.replay": str(Path(options["replay"]).expanduser().resolve()) if options.get("replay") else None,
        "model.base_url": options.get("base_url"),
        "agent.max_turns": options.get("max_turns"),
        "agent.keep_last": options.get("keep_last"),
        "archive.web": web_mode(options["web"]) if options.get("web") else None,
        "agent.attempts": options.get("attempts"),
    }
    model = options.get("model")
    if model:
        backend = options.get("backend")
        is_file = model.endswith(".gguf") or Path(model).expanduser().exists()
        overrides["model.path" if is_file and backend != "openai" else "model.name"] = model
    if options.get("replay") and not options.get("backend"):
        overrides["model.backend"] = "replay"
    return overrides


def web_mode(value: str) -> str:
    """`--web` as the [archive] web setting: live, archive:RUN_ID|PATH, or a bare WARC path made absolute."""
    value = value.strip()
    if value in ("", "live"):
        return "live"
    if value.startswith("archive:"):
        target = value.removeprefix("archive:")
        path = Path(target).expanduser()
        # A path is made absolute so a resumed run finds it from any directory; a run id stays as is.
        return f"archive:{path.resolve()}" if path.exists() else value
    return f"archive:{Path(value).expanduser().resolve()}"


def settings_from_options(options: dict[str, Any]) -> Settings:
    return load_settings(profile=options.get("profile"), overrides=option_overrides(options))
