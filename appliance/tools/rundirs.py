"""A run's identity and directories on the host, shared by agent runs and `appliance mcp serve`."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.tools.archive import RunWeb, open_run_web
from appliance.tools.base import CallContext
from appliance.tools.sandbox.workspace import check_workspace


def new_run_id(now: dt.datetime | None = None, prefix: str = "") -> str:
    """Sortable and readable: 20261126-094512-3fa9c1 (with a prefix: mcp-20261126-094512-3fa9c1)."""
    now = now or dt.datetime.now()
    return f"{prefix}{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class RunDirs:
    run_dir: Path
    workspace: Path  # the sandboxes' /home/user
    output_dir: Path  # files handed back to the user


def run_dirs(settings: Settings, run_id: str, workspace: Path | None = None) -> RunDirs:
    """The run's directories, made; a workspace the user named is checked (ConfigError), never made."""
    run_dir = settings.dirs.run_dir(run_id)
    named = check_workspace(workspace, settings) if workspace is not None else None
    dirs = RunDirs(run_dir, named or (run_dir / "workspace").expanduser().resolve(), run_dir / "output")
    for path in (dirs.run_dir, dirs.workspace, dirs.output_dir):
        if path != named:
            path.mkdir(parents=True, exist_ok=True)
    return dirs


def call_context(
    settings: Settings, run_id: str, dirs: RunDirs, attachments: tuple[Path, ...], web: RunWeb | None = None
) -> CallContext:
    """What the run's tool calls may touch, and for how long (and, for an agent run, its web archive)."""
    return CallContext(
        run_id=run_id,
        run_dir=dirs.run_dir,
        workspace=dirs.workspace,
        output_dir=dirs.output_dir,
        attachments=attachments,
        timeout=settings.agent.tool_timeout,
        web=web,
    )


def run_web(settings: Settings, run_id: str, reuse_runs: Sequence[str] = ()) -> RunWeb:
    """The run's web from [archive] and [scrape]: its own archive (reused on resume), `reuse_runs`' archives
    (a re-run's original), and an archive to replay offline. ArchiveError for an archive that cannot be used;
    nothing is created on disk, so call it before run_dirs to fail without leaving a directory behind."""
    return open_run_web(
        settings.archive,
        settings.scrape,
        settings.dirs.run_dir,
        run_id,
        settings.dirs.run_dir(run_id),
        reuse_runs=reuse_runs,
    )


def check_attachments(paths: Sequence[Path]) -> tuple[Path, ...]:
    """The host paths the model may upload from, resolved; a missing one is a usage error."""
    resolved = []
    for path in paths:
        full = path.expanduser().resolve()
        if not full.exists():
            raise ConfigError(f"attachment {path} does not exist", "pass an existing file or directory to --attach")
        resolved.append(full)
    return tuple(resolved)
