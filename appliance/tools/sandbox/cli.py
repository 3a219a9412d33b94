"""`appliance sandbox`: run a command in the agent's sandbox, check it, clean old workspaces.

    appliance sandbox exec [--timeout S] [--workspace DIR] -- CMD...
    appliance sandbox check
    appliance sandbox clean [--older-than DAYS] [--all] [--dry-run] [RUN_ID...]

`exec` streams the command's output and exits with its exit code (124 when
the time limit stopped it). Output bound for a terminal has its control
characters made visible (textutil.for_terminal); redirected, it is the
command's exact bytes. Without bwrap, or where user namespaces are off,
every subcommand exits 3 with the fix; nothing ever runs unsandboxed.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from appliance.config import Settings, load_settings
from appliance.errors import ConfigError, ExitCode
from appliance.tools.cliutil import relay_for_terminal
from appliance.tools.sandbox.bwrap import SANDBOX_HOME
from appliance.tools.sandbox.host import is_real_root
from appliance.tools.sandbox.process import kill_group, spawn
from appliance.tools.sandbox.registry import REGISTRY_FILE, SANDBOXES_DIR
from appliance.tools.sandbox.server import SandboxServer
from appliance.tools.sandbox.transfer import DOWNLOADS_DIR
from appliance.tools.sandbox.workspace import check_workspace


@click.group("sandbox")
def sandbox() -> None:
    """Run commands in the agent's sandbox (bubblewrap), check it, clean old workspaces."""


@sandbox.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--timeout", type=float, help="Seconds before the command is killed (default: [sandbox] command_timeout)."
)
@click.option(
    "--workspace",
    type=click.Path(path_type=Path),
    help="An existing host directory mounted at /home/user (default: a fresh temporary one, removed afterwards).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(timeout: float | None, workspace: Path | None, command: tuple[str, ...]) -> None:
    """Run CMD in the sandbox, stream its output and exit with its exit code (124 on timeout)."""
    settings = load_settings()
    limit = settings.sandbox.command_timeout if timeout is None else timeout
    if not 0 < limit < math.inf:
        raise ConfigError(f"--timeout must be positive, got {limit:g}", "pass --timeout SECONDS")
    named = check_workspace(workspace, settings) if workspace is not None else None
    server = SandboxServer(settings)
    host = server.host()
    with tempfile.TemporaryDirectory(prefix="appliance-sandbox-") as scratch:
        home = named or Path(scratch, "home")
        layout = server.layout(home, Path(scratch, "tmp"), None, owned=named is None)
        launch = host.build(layout, host.argv_command(server.limits, command))
        # Untrusted output reaches a terminal shown, never obeyed; a pipe or file gets it exactly.
        pipes = {name: subprocess.PIPE for name in ("stdout", "stderr") if getattr(sys, name).isatty()}
        process = spawn(launch, **pipes)
        relays = [
            relay_for_terminal(pipe, stream)
            for pipe, stream in ((process.stdout, sys.stdout), (process.stderr, sys.stderr))
            if pipe is not None
        ]
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_group(process)
            process.wait()
            click.echo(f"appliance: sandbox: the command was killed after {limit:g} seconds", err=True)
            code = ExitCode.TIMEOUT
        except KeyboardInterrupt:
            kill_group(process)
            process.wait()
            code = ExitCode.INTERRUPTED
        for relay in relays:
            relay.join(timeout=5)
    sys.exit(int(code) if code >= 0 else 128 - code)


@sandbox.command("check")
def check_command() -> None:
    """Start one sandbox and print what it isolates (exit 3 with the fix if it cannot)."""
    settings = load_settings()
    server = SandboxServer(settings)
    host = server.host()
    limits = server.limits
    mode = (
        "root: each sandbox runs as its own unprivileged uid; a --workspace you name is id-mapped, never chowned"
        if is_real_root()
        else "user namespace, uid 1000 (files it writes are yours)"
    )
    click.echo(f"bwrap:   {host.bwrap}")
    click.echo(f"python:  {host.python.executable} ({host.python.version}), read-only: {', '.join(host.python.binds)}")
    click.echo(f"mode:    {mode}")
    click.echo(f"home:    {SANDBOX_HOME} (the run's workspace); /tmp: the sandbox's own directory")
    click.echo("network: none (a new network namespace with only a loopback)")
    click.echo(f"limits:  {limits.ulimit_command()}; wall clock {settings.sandbox.command_timeout:g} s")
    click.echo("sandbox: ok")


def _size(path: Path) -> int:
    total = 0
    for directory, _dirs, names in os.walk(path, followlinks=False):
        for name in names:
            try:
                total += Path(directory, name).lstat().st_size
            except OSError:
                pass
    return total


def _remove(path: Path) -> None:
    """rmtree, after making every directory writable: a sandbox may have locked some (chmod 500)."""
    for directory, dirnames, _names in os.walk(path, followlinks=False):
        for name in dirnames:
            child = Path(directory, name)
            if not child.is_symlink():
                try:
                    child.chmod(0o700)
                except OSError:
                    pass
    shutil.rmtree(path)


def workspace_dirs(settings: Settings, run_id: str) -> list[Path]:
    """What `clean` removes for a run: its workspace, its other sandboxes and /tmp dirs, the sandbox list."""
    run_dir = settings.dirs.run_dir(run_id)
    candidates = [run_dir / "workspace", run_dir / SANDBOXES_DIR, run_dir / DOWNLOADS_DIR, run_dir / REGISTRY_FILE]
    return [path for path in candidates if path.exists() or path.is_symlink()]


@sandbox.command("clean")
@click.argument("run_ids", nargs=-1)
@click.option("--older-than", "older_than", type=float, help="Only runs not touched for this many days.")
@click.option("--all", "clean_all", is_flag=True, help="Every run's workspaces.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed.")
def clean_command(run_ids: tuple[str, ...], older_than: float | None, clean_all: bool, dry_run: bool) -> None:
    """Remove sandbox workspaces of finished runs (the run's output files and history stay)."""
    settings = load_settings()
    runs_dir = settings.dirs.runs_dir
    if not run_ids and older_than is None and not clean_all:
        raise ConfigError("say which workspaces to remove", "pass RUN_ID..., --older-than DAYS or --all")
    if run_ids:
        chosen = []
        for run_id in run_ids:
            if "/" in run_id or run_id in (".", "..") or not (runs_dir / run_id).is_dir():
                raise ConfigError(f"no run {run_id!r} in {runs_dir}", "see `appliance history list` for run ids")
            chosen.append(run_id)
    else:
        chosen = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    cutoff = time.time() - older_than * 86400 if older_than is not None else None
    freed = removed = 0
    for run_id in chosen:
        run_dir = runs_dir / run_id
        if cutoff is not None and run_dir.stat().st_mtime > cutoff:
            continue
        for path in workspace_dirs(settings, run_id):
            size = _size(path) if path.is_dir() and not path.is_symlink() else path.lstat().st_size
            click.echo(f"{'would remove' if dry_run else 'removed'} {path} ({size:,} bytes)")
            if not dry_run:
                if path.is_dir() and not path.is_symlink():
                    _remove(path)
                else:
                    path.unlink()
            freed += size
            removed += 1
    verb = "would free" if dry_run else "freed"
    click.echo(f"{removed} item{'s' if removed != 1 else ''}, {verb} {freed:,} bytes")
