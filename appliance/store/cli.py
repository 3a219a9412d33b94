"""`appliance history list|show|search|export|prune|tag|delete`.

Everything printed for a person goes through textutil.for_terminal (model and
tool text is untrusted); JSON output is textutil.safe_json (controls and bidi
characters as JSON escapes). An export keeps the exact text when it goes to a
file (--output, or stdout redirected), and never replaces a file without --force.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import click

from appliance.errors import ExitCode
from appliance.paths import app_dirs
from appliance.policy import STATUSES, RunStatus
from appliance.store.db import StoreError, StoreUsageError
from appliance.store.export import chatml, markdown_report
from appliance.store.history import History, open_history
from appliance.store.records import RunSummary
from appliance.store.report import report_html, research_report
from appliance.store.sources import run_sources
from appliance.textutil import for_terminal, one_line, safe_json

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
# SQLite's LIMIT is a 64-bit integer; a bigger -n would be a database error instead of a usage error.
MAX_LIMIT = 1_000_000_000
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}


def parse_age(text: str) -> dt.timedelta:
    """ "30d", "12h", "2w", "90m"; a bare number means days."""
    m = _AGE.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not an age; write it like 30d, 12h, 2w or 90m")
    return dt.timedelta(seconds=float(m.group(1)) * _AGE_UNITS[m.group(2).lower()])


def parse_size(text: str) -> int:
    """ "500MB", "2G", "750k", "1GiB"; a bare number means bytes (powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size; write it like 500MB or 2GB")
    power = " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * 1024**power)


def db_path(ctx: click.Context, db: Path | None) -> Path:
    root = ctx.find_root().obj or {}
    chosen = db or root.get("db")
    return Path(chosen) if chosen else app_dirs().default_db


@contextmanager
def _history(ctx: click.Context, *, create: bool = False) -> Iterator[History]:
    path = db_path(ctx, ctx.obj.get("history_db") if isinstance(ctx.obj, dict) else None)
    history = open_history(path, create=create)
    try:
        yield history
    finally:
        history.close()


def _local_time(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return dt.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso[:16]


def _summary_json(run: RunSummary) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "task": run.task,
        "answer": run.answer,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "turns": run.turns,
        "tool_calls": run.tool_calls,
        "elapsed_s": run.elapsed_s,
        "model": run.model,
        "tags": list(run.tags),
        "error": run.error,
        "parent_run": run.parent_run,
    }


@click.group("history")
@click.option("--db", "history_db", type=click.Path(path_type=Path), help="History database (default: data dir).")
@click.pass_context
def history(ctx: click.Context, history_db: Path | None) -> None:
    """Browse, search, export and prune past runs."""
    obj = dict(ctx.obj or {})
    obj["history_db"] = history_db
    ctx.obj = obj


@history.command("list")
@click.option(
    "--limit", "-n", type=click.IntRange(0, MAX_LIMIT), default=20, show_default=True, help="Runs to show (0 = all)."
)
@click.option("--status", type=click.Choice(STATUSES), help="Only runs with this status.")
@click.option("--tag", help="Only runs with this tag.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_command(ctx: click.Context, limit: int, status: str | None, tag: str | None, as_json: bool) -> None:
    """Recent runs, newest first, with status and answer."""
    try:
        with _history(ctx) as store:
            runs = store.list_runs(limit=limit, status=status, tag=tag)
    except StoreError as exc:
        if "there is no history database" not in exc.message:
            raise
        # Nothing recorded yet is an empty list (no JSON lines), not an error.
        if not as_json:
            click.echo(f"No runs recorded yet ({exc.message.split(' at ', 1)[-1]} does not exist).", err=True)
        return
    if as_json:
        for run in runs:
            click.echo(safe_json(_summary_json(run)))
        return
    if not runs:
        click.echo("No runs match." if (status or tag) else "No runs recorded yet.", err=True)
        return
    width = shutil.get_terminal_size((120, 20)).columns
    click.echo(f"{'RUN ID':<22}  {'STATUS':<11}  {'STARTED':<16}  {'TURNS':>5}  {'CALLS':>5}  TASK -> ANSWER")
    for run in runs:
        answer = run.answer if run.answer is not None else ("…" if run.status == "running" else "-")
        started = _local_time(run.started_at)
        head = f"{run.run_id:<22}  {run.status:<11}  {started:<16}  {run.turns:>5}  {run.tool_calls:>5}  "
        room = max(20, width - len(head))
        answer_text = one_line(answer, max(8, room // 3))
        task_text = run.thread_mark + one_line(run.task, max(10, room - len(answer_text) - 4))
        tags = f" [{', '.join(run.tags)}]" if run.tags else ""
        click.echo(f"{head}{task_text} -> {answer_text}{for_terminal(tags)}")


@history.command("show")
@click.argument("run_id")
@click.option("--full", is_flag=True, help="Show tool results and thinking in full (default: cut at 2,000 characters).")
@click.option("--report", is_flag=True, help="The research report: answer, reasoning summary, numbered sources.")
@click.option("--json", "as_json", is_flag=True, help="The run as JSON (ChatML trajectory plus metadata and sources).")
@click.pass_context
def show_command(ctx: click.Context, run_id: str, full: bool, report: bool, as_json: bool) -> None:
    """A run as readable Markdown: task, each step, sources, answer (--report: the research report)."""
    with _history(ctx) as store:
        run = store.get_run(run_id)
        attempts = store.task_attempts(run.run_id)
        earlier = store.thread(run.run_id)[:-1]
    if as_json:
        payload = chatml(run)
        payload["sources"] = [source.as_json() for source in run_sources(run)]
        payload["attempts"] = [
            {"attempt": a.attempt, "run_id": a.run_id, "status": a.status, "answer": a.answer} for a in attempts
        ]
        # The follow-up chain before this run, its first question first.
        payload["thread"] = [
            {"run_id": r.run_id, "task": r.task, "status": r.status, "answer": r.answer, "context_mode": r.context_mode}
            for r in earlier
        ]
        click.echo(safe_json(payload))
        return
    if report:
        click.echo(for_terminal(research_report(run)), nl=False)
        return
    limit = None if full else 2000
    # A follow-up: the runs it follows come first, each under its own heading.
    parts = [
        f"# Thread, question {n} of {len(earlier) + 1} (run {r.run_id}, {r.status})\n\n"
        + markdown_report(r, limit=limit)
        for n, r in enumerate(earlier, 1)
    ]
    if len(attempts) == 1:
        parts.append(markdown_report(run, limit=limit))
    else:
        # A task of several attempts: every one, in order, each under its own heading.
        parts += [
            f"# Attempt {a.attempt} of {len(attempts)} (run {a.run_id}, {a.status})\n\n"
            + markdown_report(a, limit=limit)
            for a in attempts
        ]
    click.echo(for_terminal("\n---\n\n".join(parts)), nl=False)


@history.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option(
    "--limit", "-n", type=click.IntRange(1, MAX_LIMIT), default=20, show_default=True, help="Matches to show."
)
@click.option("--raw", is_flag=True, help='Pass the query to SQLite FTS5 as is (OR, NOT, NEAR, "phrases").')
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def search_command(ctx: click.Context, query: tuple[str, ...], limit: int, raw: bool, as_json: bool) -> None:
    """Full-text search over tasks, answers and tool results (exit 1 when nothing matches, as `search`)."""
    with _history(ctx) as store:
        hits = store.search(" ".join(query), limit=limit, raw=raw)
    if not hits:
        click.echo(f"appliance: no matches for {one_line(' '.join(query), 80)!r}", err=True)
        sys.exit(ExitCode.NO_ANSWER)
    if as_json:
        for hit in hits:
            click.echo(
                safe_json(
                    {
                        "run_id": hit.run_id,
                        "field": hit.field,
                        "turn": hit.turn,
                        "tool": hit.tool,
                        "snippet": hit.snippet,
                        "task": hit.task,
                        "status": hit.status,
                        "started_at": hit.started_at,
                    }
                )
            )
        return
    for hit in hits:
        where = hit.field.replace("_", " ")
        if hit.turn is not None:
            where += f", turn {hit.turn} ({hit.tool})"
        click.echo(f"{hit.run_id}  {hit.status:<11} {one_line(hit.task, 70)}")
        click.echo(f"    {where}: {one_line(hit.snippet, 160)}")


@history.command("export")
@click.argument("run_ids", nargs=-1)
@click.option(
    "--format", "fmt", type=click.Choice(["chatml", "markdown", "md", "html"]), default="chatml", show_default=True,
    help="chatml: one JSON line per run with the messages as the model saw them; markdown: every step; "
    "md / html: the research report (answer, reasoning summary, numbered sources).",
)  # fmt: skip
@click.option(
    "--view", type=click.Choice(["full", "context"]), default="full", show_default=True,
    help="chatml only. full: every tool result whole; context: the last-K view of the final turn.",
)  # fmt: skip
@click.option("--all", "all_runs", is_flag=True, help="Every run (with --status / --tag to narrow).")
@click.option("--status", type=click.Choice(STATUSES), help="With --all: only runs with this status.")
@click.option("--tag", help="With --all: only runs with this tag.")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), help="Write to FILE (default stdout).")
@click.option("--force", is_flag=True, help="Replace the --output file if it exists.")
@click.pass_context
def export_command(
    ctx: click.Context,
    run_ids: tuple[str, ...],
    fmt: str,
    view: str,
    all_runs: bool,
    status: str | None,
    tag: str | None,
    output: Path | None,
    force: bool,
) -> None:
    """Export runs as a ChatML JSONL trajectory (for fine-tuning), every step in Markdown, or the research report."""
    if not run_ids and not all_runs:
        raise click.UsageError("name one or more RUN_IDs, or pass --all")
    if fmt == "html" and (all_runs or len(run_ids) > 1):
        raise click.UsageError("--format html writes one run per page: name one RUN_ID (and -o FILE for each)")
    with _history(ctx) as store:
        # A named run brings the runs it follows up (first question first), then every attempt of its
        # task (each its own sample in ChatML).
        named = [r.run_id for run_id in run_ids for r in store.thread(run_id)]
        ids = list(dict.fromkeys(a.run_id for run_id in named for a in store.task_attempts(run_id)))
        if all_runs:
            listed = store.list_runs(limit=0, status=status, tag=tag)
            ids += [r.run_id for r in listed if RunStatus.of(r.status) is not RunStatus.RUNNING]
        runs = [store.get_run(run_id) for run_id in ids]
    # A report shown on a terminal is made safe to show; written to a file or a pipe it stays exact.
    shown = for_terminal if output is None and sys.stdout.isatty() else str
    with _open_output(output, replace=force) as out:
        for index, run in enumerate(runs):
            if fmt == "chatml":
                out.write(safe_json(chatml(run, "context" if view == "context" else "full")) + "\n")
            elif fmt == "md":
                out.write(shown(("\n---\n\n" if index else "") + research_report(run)))
            elif fmt == "html":
                out.write(shown(report_html(run)))
            else:
                out.write(shown(("\n---\n\n" if index else "") + markdown_report(run, limit=None)))
    if output is not None:
        click.echo(f"wrote {len(runs)} run(s) to {output}", err=True)


@contextmanager
def _open_output(path: Path | None, *, replace: bool) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    try:
        handle = path.open("w" if replace else "x", encoding="utf-8")
    except FileExistsError as exc:
        raise StoreUsageError(f"{path} exists", "choose another --output path, or pass --force to replace it") from exc
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}", "choose a writable --output path") from exc
    with handle:
        yield handle


def _remove_run_dirs(run_ids: list[str] | tuple[str, ...]) -> list[str]:
    """The run directories under the data dir (workspace and output); a --workspace elsewhere is kept."""
    runs_dir = app_dirs().runs_dir.resolve()
    removed = []
    for run_id in run_ids:
        path = (runs_dir / run_id).resolve()
        if path.parent == runs_dir and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


@history.command("prune")
@click.option("--older-than", "older_than", help="Delete runs started longer ago than this (30d, 12h, 2w).")
@click.option("--max-size", "max_size", help="Then delete the oldest runs until the database fits (500MB, 2GB).")
@click.option("--include-tagged", is_flag=True, help="Prune tagged runs too (kept by default).")
@click.option("--files", is_flag=True, help="Also delete the pruned runs' directories (workspace, output).")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; change nothing.")
@click.pass_context
def prune_command(
    ctx: click.Context, older_than: str | None, max_size: str | None, include_tagged: bool, files: bool, dry_run: bool
) -> None:
    """Delete old runs by age or to fit a size. Running runs are never pruned."""
    age = parse_age(older_than) if older_than else None
    size = parse_size(max_size) if max_size else None
    with _history(ctx) as store:
        report = store.prune(older_than=age, max_bytes=size, include_tagged=include_tagged, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for run_id in report.run_ids:
        click.echo(f"{verb} {run_id}")
    removed = _remove_run_dirs(report.run_ids) if files and not dry_run else []
    mb = 1024 * 1024
    click.echo(
        f"{verb} {len(report.run_ids)} run(s); database {report.bytes_before / mb:.1f} MB"
        + ("" if dry_run else f" -> {report.bytes_after / mb:.1f} MB")
        + (f"; removed {len(removed)} run director{'y' if len(removed) == 1 else 'ies'}" if removed else ""),
        err=True,
    )


@history.command("tag")
@click.argument("run_id")
@click.argument("tag")
@click.option("--remove", is_flag=True, help="Remove the tag instead.")
@click.pass_context
def tag_command(ctx: click.Context, run_id: str, tag: str, remove: bool) -> None:
    """Tag a run (tagged runs survive prune). The tags correct and incorrect label its answer for `dataset build`."""
    with _history(ctx) as store:
        if remove:
            store.untag_run(run_id, tag)
        else:
            store.tag_run(run_id, tag)


@history.command("delete")
@click.argument("run_id")
@click.option("--files", is_flag=True, help="Also delete the run's directory (workspace, output).")
@click.pass_context
def delete_command(ctx: click.Context, run_id: str, files: bool) -> None:
    """Delete one run from the history."""
    with _history(ctx) as store:
        resolved = store.resolve(run_id)
        store.delete_run(resolved)
    removed = _remove_run_dirs([resolved]) if files else []
    click.echo(f"deleted {resolved}" + (" and its directory" if removed else ""), err=True)
