"""`appliance dataset build OUT_DIR`: the history as SFT trajectories and DPO pairs (docs/dataset.md)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from appliance.config import McpServerConfig, Settings, load_settings
from appliance.dataset.build import (
    BuildOptions,
    Dataset,
    Redactor,
    Selection,
    build,
    eval_names,
    eval_scores,
    score_of,
    select_runs,
)
from appliance.dataset.files import SIDE_TITLES, check_output, manifest, write_dataset
from appliance.dataset.filters import FILTER_NAMES, SIDES, Candidate, Thresholds
from appliance.errors import ConfigError
from appliance.policy import STATUSES
from appliance.store.cli import db_path, parse_age
from appliance.store.history import open_history

# Shorter values are not worth hiding and would blank out ordinary words.
_MIN_SECRET_CHARS = 6


def parse_when(text: str, *, end_of_day: bool = False) -> dt.datetime:
    """An ISO date or time (local unless it says otherwise), or an age such as 30d meaning that long ago."""
    try:
        return dt.datetime.now(dt.UTC) - parse_age(text)
    except click.BadParameter:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date; write it like 2026-11-30, 2026-11-30T14:00 or 30d") from None
    if end_of_day and len(text.strip()) == 10:  # a bare date includes that whole day
        when += dt.timedelta(days=1)
    return when if when.tzinfo else when.astimezone()


def configured_secrets(settings: Settings) -> tuple[str, ...]:
    """The values of the API keys, MCP environments and headers the configuration holds."""
    values = [settings.model.api_key, settings.extraction.api_key, settings.eval.judge_api_key]
    server: McpServerConfig
    for server in settings.mcp_servers.values():
        values += [*server.env.values(), *server.headers.values()]
    return tuple(sorted({v for v in values if v and len(v) >= _MIN_SECRET_CHARS}, key=len, reverse=True))


@click.group("dataset")
def dataset() -> None:
    """Fine-tuning datasets from past runs."""


@dataset.command("build")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--eval", "evals", multiple=True, help="Runs of this eval (repeatable: any of them).")
@click.option("--tag", "tags", multiple=True, help="Only runs with this tag (repeatable: every one of them).")
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="Only these statuses (repeatable)."
)
@click.option("--since", help="Runs started at or after: a date (2026-11-30), a time, or an age (30d).")
@click.option("--until", help="Runs started before: a date (that day included), a time, or an age.")
@click.option(
    "--eval-dir", "eval_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
    help="An eval directory whose results.jsonl scores runs (default: DATA_DIR/evals/NAME of each eval).",
)  # fmt: skip
@click.option(
    "--view", type=click.Choice(["context", "full"]), default="context", show_default=True,
    help="context: tool results as the model saw them at the end (old ones as the placeholder); full: all whole.",
)  # fmt: skip
@click.option("--no-filter", "disabled", multiple=True, type=click.Choice(FILTER_NAMES), help="Turn a filter off.")
@click.option(
    "--ngram-size", type=click.IntRange(1), default=Thresholds.ngram_size, show_default=True,
    help="repetition: the n of the word n-grams.",
)  # fmt: skip
@click.option(
    "--max-ngram-repeat", type=click.FloatRange(0, 1), default=Thresholds.max_ngram_repeat, show_default=True,
    help="repetition: the largest share of a reply's n-grams that may repeat.",
)  # fmt: skip
@click.option(
    "--max-same-reply", type=click.IntRange(1), default=Thresholds.max_same_reply, show_default=True,
    help="duplicate_reply: how many times one reply text may appear.",
)  # fmt: skip
@click.option(
    "--max-same-call", type=click.IntRange(1), default=Thresholds.max_same_call, show_default=True,
    help="duplicate_call, pathological_success: how many times one call may be made.",
)  # fmt: skip
@click.option(
    "--max-error-streak", type=click.IntRange(1), default=Thresholds.max_error_streak, show_default=True,
    help="pathological_success: this many failed calls in a row.",
)  # fmt: skip
@click.option(
    "--action-loop", type=click.IntRange(2), default=Thresholds.action_loop, show_default=True,
    help="trivial_failure: the same call this many times.",
)  # fmt: skip
@click.option("--redact-paths", is_flag=True, help="Replace home and workspace paths by ~ and <workspace>.")
@click.option("--force", is_flag=True, help="Replace the dataset files in an existing OUT directory.")
@click.option("--db", type=click.Path(path_type=Path, dir_okay=False), help="History database (default: data dir).")
@click.pass_context
def build_command(
    ctx: click.Context,
    /,
    out: Path,
    evals: tuple[str, ...],
    tags: tuple[str, ...],
    statuses: tuple[str, ...],
    since: str | None,
    until: str | None,
    eval_dirs: tuple[Path, ...],
    view: str,
    disabled: tuple[str, ...],
    redact_paths: bool,
    force: bool,
    db: Path | None,
    **thresholds: Any,
) -> None:
    """Write OUT/sft.jsonl (filtered trajectories), OUT/dpo.jsonl (correct vs incorrect runs of the same task),
    OUT/manifest.json and OUT/README.md from the runs that match the selection (all runs by default).

    Scores come from the evals the runs belong to and from labels put with
    `appliance history tag RUN_ID correct` (or incorrect), which win.
    """
    out = out.expanduser()
    check_output(out, force=force)  # before any work: an existing directory is refused at once
    selection = Selection(
        evals=evals,
        tags=tags,
        statuses=statuses,
        since=parse_when(since) if since else None,
        until=parse_when(until, end_of_day=True) if until else None,
    )
    settings = load_settings()
    with open_history(db_path(ctx, db), create=False) as history:
        runs = [history.get_run(summary.run_id) for summary in select_runs(history, selection)]
    if not runs:
        raise ConfigError(
            "no run matches the selection" + _describe(selection),
            "see what is recorded with `appliance history list` (--tag eval:NAME for an eval's runs)",
        )
    directories = [*eval_dirs, *(settings.dirs.data_dir / "evals" / name for name in eval_names(runs))]
    from_evals = eval_scores(dict.fromkeys(directories))
    candidates = [Candidate(run, *score_of(run, from_evals)) for run in runs]
    options = BuildOptions(
        view="full" if view == "full" else "context", thresholds=Thresholds(**thresholds), disabled=frozenset(disabled)
    )
    redactor = Redactor(configured_secrets(settings), str(Path.home()), redact_paths)
    result = build(candidates, options, redactor)
    meta = manifest(result, selection, options, redact_paths=redact_paths)
    write_dataset(out, result, meta, force=force)
    _report(out, result, meta)


def _describe(selection: Selection) -> str:
    parts = [f"{key} {', '.join(map(str, value)) if isinstance(value, list) else value}"
             for key, value in selection.describe().items() if value]  # fmt: skip
    return f" ({'; '.join(parts)})" if parts else " (the history is empty)"


def _report(out: Path, result: Dataset, meta: dict[str, Any]) -> None:
    scores = meta["scores"]
    click.echo(
        f"{out}: {len(result.sft)} SFT trajectories, {len(result.dpo)} DPO pairs from {len(result.runs)} runs "
        f"({scores['correct']} correct, {scores['incorrect']} incorrect, {scores['unscored']} unscored)"
    )
    for side in SIDES:
        counts = ", ".join(f"{r.name} {len(r.removed) if r.enabled else 'off'}" for r in result.filters[side])
        click.echo(f"  removed for {SIDE_TITLES[side]}: {counts}")
    for note in result.dpo_notes:
        click.echo(f"appliance dataset: {note}", err=True)
    if not result.sft and not result.dpo:
        click.echo(
            f"appliance dataset: nothing passed the filters; {out}/manifest.json says what removed each run "
            "(--no-filter NAME or the threshold options relax them)",
            err=True,
        )
