"""`appliance eval DATASET.jsonl`: run a GAIA-format benchmark and write a report."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import click

from appliance.config import EVICTION_MODES, Settings, load_settings
from appliance.errors import ConfigError, ExitCode
from appliance.eval.dataset import EvalTask, RowError, parse_dataset
from appliance.eval.judge import Judge
from appliance.eval.report import render_csv, render_markdown, scores
from appliance.eval.runner import EvalRunner, RunResult, load_results
from appliance.llm.factory import read_grammar
from appliance.llm.openai import OpenAIBackend
from appliance.options import collect_common, common_options, option_overrides, settings_from_options
from appliance.paths import make_named_dir
from appliance.textutil import one_line


def sample_dir() -> Path:
    """The offline sample shipped with the package: tasks, a small corpus, scripted replays."""
    return Path(str(resources.files("appliance.eval") / "data" / "sample"))


def _index_sample_corpus(out_dir: Path) -> Path:
    from appliance.tools.search.corpus import Corpus

    database = out_dir / "sample-corpus.db"
    for _ in Corpus(database).add_paths([sample_dir() / "corpus"]):
        pass  # re-adding unchanged files is a no-op, so a resumed eval pays nothing
    return database


def _settings(options: dict[str, Any], extra: dict[str, Any]) -> Settings:
    overrides = option_overrides(options)
    overrides.update(extra)
    return load_settings(profile=options.get("profile"), overrides=overrides)


def _judge(settings: Settings, url: str | None, model: str | None) -> Judge | None:
    base_url = url or settings.eval.judge_url
    if not base_url:
        return None
    backend = OpenAIBackend(
        base_url,
        model=model or settings.eval.judge_model,
        api_key=settings.eval.judge_api_key,
        temperature=0.0,
        top_p=1.0,
        repeat_penalty=1.0,
        retries=settings.model.retries,
        grammar=read_grammar(settings.eval.judge_grammar, "judge_grammar") or "",
    )
    return Judge(backend)


def _progress(total: int, already: int) -> Any:
    count = [already]

    def report(result: RunResult) -> None:
        count[0] += 1
        mark = "correct" if result.correct else "wrong"
        answer = one_line(result.answer, 40) if result.answer is not None else f"({result.status})"
        click.echo(
            f"[{count[0]}/{total}] {result.task_id} run {result.run_index}: {answer} -> {mark} "
            f"({result.turns} turns, {result.tool_calls} tool calls, {result.elapsed_s:.1f}s)",
            err=True,
        )

    return report


@click.command("eval")
@click.argument("dataset", required=False, type=click.Path(path_type=Path))
@click.option("--sample", is_flag=True, help="Use the small offline sample dataset shipped with the appliance.")
@click.option("--runs", "-k", type=click.IntRange(1, 64), default=1, show_default=True, help="Runs per task (K).")
@click.option("--concurrency", "-j", type=click.IntRange(1, 32), default=1, show_default=True)
@click.option("--judge-url", help="OpenAI-compatible server for an LLM judge (default: GAIA exact match only).")
@click.option("--judge-model", help="Model name on the judge server.")
@click.option("--out", type=click.Path(path_type=Path), help="Report directory (default: data dir/evals/NAME).")
@click.option("--name", help="Eval name, used in run tags and the default report directory.")
@click.option("--limit", type=click.IntRange(1), help="Only the first N tasks.")
@click.option(
    "--compare",
    metavar="MODE,MODE",
    help="Run the same tasks under each eviction mode (e.g. exact,shift) and report them side by side.",
)
@click.option(
    "--web-archive", type=click.Path(path_type=Path, file_okay=False),
    help="Record each task's web into DIR/TASK_ID.warc.gz on the first pass; replay it (offline) on later passes.",
)  # fmt: skip
@common_options
@click.pass_context
def eval_command(
    ctx: click.Context,
    /,
    dataset: Path | None,
    sample: bool,
    runs: int,
    concurrency: int,
    judge_url: str | None,
    judge_model: str | None,
    out: Path | None,
    name: str | None,
    limit: int | None,
    compare: str | None,
    web_archive: Path | None,
    **options: Any,
) -> None:
    """Run a GAIA-format JSONL benchmark: every task K times, scored, stored in the history, reported.

    An interrupted eval (Ctrl-C, a crash) continues where it stopped when it is started
    again with the same dataset and name (or --out).
    """
    options = collect_common(ctx, options)
    if sample == (dataset is not None):
        raise ConfigError("give either a DATASET.jsonl or --sample", "appliance eval --sample, or appliance eval FILE")
    path = sample_dir() / "tasks.jsonl" if sample else dataset
    assert path is not None
    eval_name = name or ("sample" if sample else path.stem)
    tasks, errors = parse_dataset(path)
    tasks = tasks[:limit] if limit else tasks
    base = settings_from_options(options)
    if out is not None:
        out_dir = make_named_dir(out, "--out")
    else:
        out_dir = base.dirs.data_dir / "evals" / eval_name
        out_dir.mkdir(parents=True, exist_ok=True)
    if web_archive is not None:
        web_archive = make_named_dir(web_archive, "--web-archive")
    for error in errors:
        click.echo(f"appliance eval: {path.name} line {error.line} skipped: {error.message}", err=True)
    if not tasks:
        raise ConfigError(
            f"no usable task in {path}", "check the rows reported above (task_id, Question, Final answer)"
        )

    extra: dict[str, Any] = {}
    replay = Path(options["replay"]) if options.get("replay") else None
    if sample:
        extra = {"search.corpus_db": str(_index_sample_corpus(out_dir)), "search.sources": ["corpus"]}
        if base.model.backend == "replay" or options.get("backend") == "replay":
            if replay is None:
                replay = sample_dir() / "replays"
            extra["model.backend"] = "replay"
    if replay is not None and replay.is_dir():
        # One script per task (DIR/TASK_ID.jsonl): the runner gives each run its own.
        extra["model.replay"] = str(replay / f"{tasks[0].task_id}.jsonl")
    modes = _compare_modes(compare)
    compared: list[tuple[str, Path]] = []
    for mode in modes or [""]:
        # Each compared eviction mode is an eval of its own (own name, directory and resume), same tasks.
        mode_name, mode_dir = (f"{eval_name}-{mode}", out_dir / mode) if mode else (eval_name, out_dir)
        mode_dir.mkdir(exist_ok=True)
        settings = _settings(options, {**extra, "agent.eviction": mode} if mode else extra)
        complete = _run_eval(settings, options, mode_name, mode_dir, tasks, errors, runs, concurrency,
                             replay, judge_url, judge_model, web_archive)  # fmt: skip
        if not complete:
            click.echo(f"appliance eval: stopped; run the same command again to continue ({mode_dir})", err=True)
            ctx.exit(ExitCode.INTERRUPTED)
        compared.append((mode, mode_dir))
    if modes:
        click.echo(render_comparison(compared, tasks, runs))


def _compare_modes(compare: str | None) -> list[str]:
    if not compare:
        return []
    modes = [m.strip() for m in compare.split(",") if m.strip()]
    unknown = [m for m in modes if m not in EVICTION_MODES]
    if unknown or len(modes) < 2 or len(set(modes)) != len(modes):
        raise ConfigError(
            f"--compare {compare!r}: give two or more different eviction modes",
            f"for example --compare exact,shift (modes: {', '.join(EVICTION_MODES)})",
        )
    return modes


def render_comparison(compared: list[tuple[str, Path]], tasks: list[EvalTask], runs: int) -> str:
    """The compared modes side by side: accuracy, and time and tokens per run."""
    wanted = {t.task_id for t in tasks}
    lines = [f"{'eviction':<10}{'avg@' + str(runs):>9}{'pass@' + str(runs):>9}{'s/run':>9}{'turns/run':>11}"
             f"{'prompt tokens/run':>19}"]  # fmt: skip
    for mode, mode_dir in compared:
        results = [r for r in load_results(mode_dir) if r.task_id in wanted and r.run_index <= runs]
        overall = scores(results)
        count = max(1, len(results))
        lines.append(
            f"{mode:<10}{overall.avg_at_k:>8.1f}%{overall.pass_at_k:>8.1f}%"
            f"{sum(r.elapsed_s for r in results) / count:>9.1f}{sum(r.turns for r in results) / count:>11.1f}"
            f"{sum(r.prompt_tokens for r in results) / count:>19,.0f}"
        )
    return "\n".join(lines)


def _run_eval(
    settings: Settings, options: dict[str, Any], eval_name: str, out_dir: Path, tasks: list[EvalTask],
    errors: list[RowError], runs: int, concurrency: int, replay: Path | None, judge_url: str | None,
    judge_model: str | None, web_archive: Path | None,
) -> bool:  # fmt: skip
    """Run (or continue) one eval and write its report; whether every run finished."""
    db_path = Path(options["db"]) if options.get("db") else settings.dirs.default_db
    judge = _judge(settings, judge_url, judge_model)
    total = len(tasks) * runs
    already = len(
        {(r.task_id, r.run_index) for r in load_results(out_dir)}
        & {(t.task_id, k) for t in tasks for k in range(1, runs + 1)}
    )
    if already:
        click.echo(f"appliance eval: resuming {eval_name}: {already} of {total} runs already done", err=True)
    runner = EvalRunner(
        settings, name=eval_name, out_dir=out_dir, db_path=db_path, runs=runs, concurrency=concurrency,
        judge=judge, replay=replay, on_result=_progress(total, already),
        web_archive=web_archive.expanduser().resolve() if web_archive else None,
    )  # fmt: skip
    try:
        complete = runner.run(tasks)
    except KeyboardInterrupt:
        runner.stop()
        complete = False
    finally:
        if judge is not None:
            judge.close()
    write_report(eval_name, out_dir, tasks, errors, runs, settings, judge)
    return complete


def write_report(
    name: str, out_dir: Path, tasks: list[EvalTask], errors: list[RowError], runs: int, settings: Settings,
    judge: Judge | None,
) -> None:  # fmt: skip
    wanted = {t.task_id for t in tasks}
    results = [r for r in load_results(out_dir) if r.task_id in wanted and r.run_index <= runs]
    model = settings.model.name or settings.model.file or settings.model.path or settings.model.backend
    if settings.model.backend == "replay":
        model = "replay scripts"
    markdown = render_markdown(
        name, results, tasks, errors, runs=runs, model=model, judge=judge.name if judge else None
    )
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    (out_dir / "report.csv").write_text(render_csv(results), encoding="utf-8")
    overall = scores(results)
    click.echo(
        f"{name}: avg@{runs} {overall.avg_at_k:.1f}%  pass@{runs} {overall.pass_at_k:.1f}%  "
        f"({overall.tasks} tasks, {overall.runs} runs)  report: {out_dir / 'report.md'}"
    )
