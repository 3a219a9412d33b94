"""Small helpers for the tool subcommands (`appliance search`, `corpus`, `searxng`, `fetch`).

Those commands live beside their tools and may not import appliance.cli (the
layers contract); they read the options given before the subcommand
(`appliance --profile X search ...`, kept in ctx.obj) through appliance.options.
"""

from __future__ import annotations

import codecs
import os
import threading
from typing import IO, Any, NoReturn

import click

from appliance.config import Settings, load_settings
from appliance.options import option_overrides
from appliance.textutil import for_terminal


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


def relay_for_terminal(source: IO[bytes], sink: IO[str]) -> threading.Thread:
    """Copy a command's output to a terminal as it comes, with control characters made visible.

    Bytes that are not UTF-8 show as \\udcXX escapes instead of being dropped; the
    thread ends when the command's end of the pipe closes.
    """

    def pump() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        fd = source.fileno()
        while True:
            chunk = os.read(fd, 65536)
            text = decoder.decode(chunk, final=not chunk)
            if text:
                sink.write(for_terminal(text))
                sink.flush()
            if not chunk:
                return

    thread = threading.Thread(target=pump, name="terminal-relay", daemon=True)
    thread.start()
    return thread
