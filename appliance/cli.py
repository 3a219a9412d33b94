"""`appliance`: the TUI by default, `--task` headless, and the subcommands.

Exit codes: 0 answered, 1 finished without an answer, 2 usage or config error,
3 a required component unavailable, 70 an internal error (a bug), 124 a
sandboxed command timed out, 130 interrupted (see errors.ExitCode). Every
error is one line on stderr; with --json also one JSON object on stdout.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from appliance import __version__
from appliance.agent.events import (
    AgentEvent,
    AttemptStarted,
    Notice,
    ReplyContinued,
    RunFinished,
    RunStarted,
    SummaryStarted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnEnded,
    TurnRolledBack,
)
from appliance.config import Settings
from appliance.errors import ApplianceError, ExitCode
from appliance.options import collect_common, common_options, option_overrides, settings_from_options
from appliance.textutil import did_you_mean, for_terminal, one_line, safe_json

if TYPE_CHECKING:
    from appliance.session import RunSession
    from appliance.store.sources import Source

# Subcommands live beside the code they drive and are imported on first use.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "history": ("appliance.store.cli:history", "browse, search, export and prune past runs"),
    "sandbox": ("appliance.tools.sandbox.cli:sandbox", "run commands in the agent's sandbox"),
    "search": ("appliance.tools.search.cli:search", "run the search tool alone"),
    "corpus": ("appliance.tools.search.cli:corpus", "index local documents for offline search"),
    "searxng": ("appliance.tools.search.cli:searxng", "start, stop or check the local SearXNG"),
    "fetch": ("appliance.tools.scrape.cli:fetch", "run the page reading tool alone"),
    "doctor": ("appliance.install.cli:doctor", "hardware, profile and the health of every component"),
    "install": ("appliance.install.cli:install", "download weights and set everything up"),
    "bundle": ("appliance.install.cli:bundle", "create or install an air-gapped bundle"),
    "profiles": ("appliance.install.cli:profiles", "list the hardware profiles"),
    "eval": ("appliance.eval.cli:eval_command", "run a GAIA-format benchmark"),
    "dataset": ("appliance.dataset.cli:dataset", "SFT and DPO fine-tuning data from past runs"),
    "mcp": ("appliance.tools.mcp.cli:mcp_group", "list MCP servers, or serve the built-in tools over MCP"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # `--help` lists every command without importing the heavy ones.
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][1]))
            else:
                command = self.get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            # click suggests nothing for a mistyped command; the lazy ones are in list_commands.
            ctx.fail(f"No such command '{name}'{did_you_mean(name, self.list_commands(ctx))}.")
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in LAZY_COMMANDS:
            return command
        target, help_text = LAZY_COMMANDS[cmd_name]
        module_name, _, attr = target.partition(":")
        try:
            loaded = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            reason = str(exc)
        else:
            if isinstance(loaded, click.Command):
                return loaded
            reason = f"{target} is not a command"

        @click.command(
            cmd_name, help=f"{help_text} (unavailable: {reason})", context_settings={"ignore_unknown_options": True}
        )
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def unavailable(args: tuple[str, ...]) -> None:
            raise ApplianceError(f"`appliance {cmd_name}` is unavailable: {reason}", "reinstall the appliance")

        return unavailable


# ------------------------------------------------------------------ headless


class HeadlessPrinter:
    """Progress on stderr, one line per step; the model's text only with --verbose."""

    def __init__(self, stream: Any = None, *, verbose: bool = False, debug: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.debug = debug

    def _line(self, text: str) -> None:
        # Names, arguments, results and errors all come from the model or a tool: shown, never obeyed.
        print(for_terminal(text), file=self.stream, flush=True)

    def _shows(self, level: str) -> bool:
        if level == "debug":
            return self.debug
        return level != "info" or self.verbose

    def __call__(self, event: AgentEvent) -> None:
        if isinstance(event, TextDelta) and self.verbose:
            self.stream.write(for_terminal(event.text))
            self.stream.flush()
        elif isinstance(event, TurnEnded) and self.verbose:
            self._line("")
        elif isinstance(event, ToolCallStarted):
            args = one_line(json.dumps(event.arguments, ensure_ascii=False), 90)
            self._line(f"[turn {event.turn}] {event.server}/{event.tool} {args}")
        elif isinstance(event, ToolCallFinished):
            mark = " [truncated]" if event.truncated else ""
            line = f"    -> {event.status} in {event.duration_s:.1f}s, {event.raw_chars} chars{mark}"
            if event.status != "ok":  # why it failed, as the model reads it
                line += f": {one_line(event.result, 160)}"
            self._line(line)
        elif isinstance(event, TurnRolledBack):
            self._line(f"[turn {event.turn}] reply discarded ({event.reason}): {one_line(event.detail, 100)}")
        elif isinstance(event, ReplyContinued):
            self._line(
                f"[turn {event.turn}] reply cut at {event.generated_tokens} tokens: continuing "
                f"(up to {event.max_tokens} more)"
            )
        elif isinstance(event, SummaryStarted):
            self._line(f"[summary] asking for the final answer ({event.reason.replace('_', ' ')})")
        elif isinstance(event, AttemptStarted):
            self._line(event.line)
        elif isinstance(event, Notice) and self._shows(event.level):
            self._line(f"{event.level}: {event.message.rstrip()}")
        elif isinstance(event, RunFinished) and event.error:
            self._line(f"appliance: run {event.status}: {event.error}")


def open_history(settings: Settings, db: Path | None) -> Any:
    """The run history (--db, or history.db in the data directory); a bad file fails here, before any work."""
    from appliance.store import open_history as open_store

    return open_store(db or settings.dirs.default_db)


def check_workspace_option(options: dict[str, Any], settings: Settings) -> None:
    """A refused or missing --workspace stops every face at once, before a model loads or a UI opens."""
    from appliance.tools.sandbox.workspace import check_workspace

    if options.get("workspace") is not None:
        check_workspace(options["workspace"], settings)


def run_headless(
    options: dict[str, Any], task: str, *, as_json: bool, printer: HeadlessPrinter, json_events: bool = False
) -> int:
    """Run `task` headless; with `json_events` stdout carries the live event stream (appliance/eventstream.py)."""
    from appliance.session import Backends, start_session

    settings = settings_from_options(options)
    check_workspace_option(options, settings)
    with open_history(settings, options.get("db")) as history, Backends() as backends:
        session = start_session(
            history,
            settings,
            task,
            backends=backends,
            workspace=options.get("workspace"),
            attachments=list(options.get("attach") or ()),
        )
        return drive_headless(session, printer, as_json=as_json, json_events=json_events)


def drive_headless(
    session: RunSession,
    printer: HeadlessPrinter,
    *,
    as_json: bool,
    json_events: bool,
    announce: Sequence[str] = (),
    subscribers: Sequence[Callable[[AgentEvent], None]] = (),
) -> int:
    """Drive an assembled session to its end and print its result (every headless command ends here).

    `announce`: lines for stderr before the run starts; `subscribers` see each event before the printer.
    """
    from appliance.eventstream import JsonEventStream

    stream = JsonEventStream(sys.stdout, cancel=session.cancel) if json_events else None
    with session:
        for line in announce:
            printer.stream.write(f"appliance: {for_terminal(line)}\n")
        faces: list[Callable[[AgentEvent], None]] = [*subscribers, *([stream] if stream is not None else []), printer]
        finished = session.drive(*faces)
    report_checkpoint(session.kept_checkpoint, finished)
    if stream is not None:
        stream.finish(result_json(finished, session.sources, session.attempt_results))
    else:
        emit_result(finished, as_json=as_json, sources=session.sources, attempts=session.attempt_results)
    return int(finished.exit_code)


def rerun_headless(
    options: dict[str, Any], run_id: str, *, as_json: bool, printer: HeadlessPrinter, json_events: bool = False
) -> int:
    """The same task with the same settings and attachments as a recorded run, sampled anew.

    Searches and fetches the original made are answered from its archive; with
    `--web archive:...` nothing else is fetched either.
    """
    from appliance.session import Backends, rerun_session

    with open_history(settings_from_options(options), options.get("db")) as history, Backends() as backends:
        session = rerun_session(
            history,
            run_id,
            option_overrides(options),
            backends=backends,
            workspace=options.get("workspace"),
            profile=options.get("profile"),
        )
        original = history.get_run(run_id)

        def tag(event: AgentEvent) -> None:
            if isinstance(event, RunStarted):
                history.tag_run(event.run_id, f"rerun-of:{original.run_id}")

        line = f"re-running run {original.run_id} as {session.run_id} (web: {session.settings.archive.web})"
        return drive_headless(
            session, printer, as_json=as_json, json_events=json_events, announce=[line], subscribers=[tag]
        )


def resume_headless(
    options: dict[str, Any], run_id: str, *, as_json: bool, printer: HeadlessPrinter, json_events: bool = False
) -> int:
    """Continue a recorded run with its own settings; flags given to `resume` override them."""
    from appliance.session import Backends, resume_session

    with open_history(settings_from_options(options), options.get("db")) as history, Backends() as backends:
        session = resume_session(
            history,
            run_id,
            option_overrides(options),
            backends=backends,
            profile=options.get("profile"),
            workspace=options.get("workspace"),
        )
        state = session.state
        lines = [
            *session.notes,
            f"resuming run {state.run_id} after turn {state.turn} ({state.tool_calls} tool calls so far)",
        ]
        return drive_headless(session, printer, as_json=as_json, json_events=json_events, announce=lines)


def ask_headless(
    options: dict[str, Any],
    run_id: str | None,
    question: str,
    *,
    as_json: bool,
    printer: HeadlessPrinter,
    json_events: bool = False,
) -> int:
    """A follow-up question on a finished run (None: the latest finished run), headless."""
    from appliance.session import Backends, followup_session

    check_workspace_option(options, settings_from_options(options))
    with open_history(settings_from_options(options), options.get("db")) as history, Backends() as backends:
        parent_id = run_id if run_id is not None else history.latest_finished()
        session = followup_session(
            history,
            parent_id,
            question,
            option_overrides(options),
            backends=backends,
            workspace=options.get("workspace"),
            profile=options.get("profile"),
        )
        line = f"follow-up of run {session.state.parent_run} as run {session.run_id}"
        return drive_headless(session, printer, as_json=as_json, json_events=json_events, announce=[line])


def report_checkpoint(kept: bool, finished: RunFinished) -> None:
    if kept:
        click.echo(f"appliance: kept the model's cache for `appliance resume {finished.run_id}`", err=True)


def result_json(
    finished: RunFinished, sources: Sequence[Source] = (), attempts: Sequence[RunFinished] = ()
) -> dict[str, Any]:
    """The object --json prints (and --json-events ends with): the final run's, so `run_id` is the run
    whose answer is final, with every attempt this command ran."""
    payload = finished.as_json()
    payload["sources"] = [source.as_json() for source in sources]
    payload["attempts"] = [attempt_json(ended) for ended in attempts or [finished]]
    if finished.error:
        payload["error"] = finished.error
    return payload


def emit_result(
    finished: RunFinished, *, as_json: bool, sources: Sequence[Source] = (), attempts: Sequence[RunFinished] = ()
) -> None:
    if as_json:
        click.echo(safe_json(result_json(finished, sources, attempts)))
    elif finished.answer is not None:
        click.echo(for_terminal(finished.answer))
    elif finished.status == "no_answer":
        click.echo("appliance: the run finished without a \\boxed{} answer", err=True)


def attempt_json(ended: RunFinished) -> dict[str, Any]:
    """One attempt of the task in --json: its run, how it ended, whether it left a failure summary."""
    return {
        "attempt": ended.attempt,
        "run_id": ended.run_id,
        "status": ended.status,
        "answer": ended.answer,
        "failure_summary": ended.failure_summary is not None,
    }


# ------------------------------------------------------------------ commands


def output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--json, --json-events and --verbose: how a headless run reports (the root command, resume, rerun, ask)."""
    func = click.option("--verbose", "-v", is_flag=True, help="Stream the model's text to stderr.")(func)
    func = click.option(
        "--json-events",
        "json_events",
        is_flag=True,
        help="Print the run as it goes, one JSON object per line, ending with --json's object (docs/json-events.md).",
    )(func)
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the answer.")(func)


def check_output_flags(as_json: bool, json_events: bool) -> None:
    if as_json and json_events:
        raise ApplianceError("--json and --json-events were both given", "pass one (the stream ends with the result)")


def followup_question(question: str | None, question_file: Path | None) -> str:
    """A follow-up question from its argument ("-": standard input) or a file; empty is a usage error."""
    text = read_task(question, question_file)
    if text is None or not text.strip():
        raise ApplianceError(
            "the follow-up question is empty",
            'ask it as an argument (appliance ask RUN_ID "..."), with "-" for standard input, or with --task-file',
        )
    return text


def read_task(task: str | None, task_file: Path | None) -> str | None:
    """The task from --task TEXT, --task - (standard input) or --task-file PATH; None: neither was given."""
    if task is not None and task_file is not None:
        raise ApplianceError("--task and --task-file were both given", "pass the task one way")
    source = "standard input" if task == "-" else str(task_file)
    try:
        if task == "-":
            text = sys.stdin.buffer.read().decode("utf-8")
        elif task_file is not None:
            text = task_file.read_bytes().decode("utf-8")
        else:
            return task
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ApplianceError(f"cannot read the task from {source}: {reason}", "give a readable file") from exc
    except UnicodeDecodeError as exc:
        raise ApplianceError(f"the task in {source} is not UTF-8 text", "save it as UTF-8") from exc
    return text


@click.group(cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--task", "-t", help='Run this task headless and print the answer ("-": read it from standard input).')
@click.option(
    "--task-file", type=click.Path(path_type=Path, dir_okay=False), help="Run the task written in this file headless."
)
@click.option(
    "--continue",
    "continue_question",
    metavar="QUESTION",
    help='Ask the latest finished run a follow-up question ("-": read it from standard input); see `ask`.',
)
@output_options
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error (a bug).")
@common_options
@click.version_option(__version__, prog_name="appliance")
@click.pass_context
def cli(
    ctx: click.Context,
    /,
    task: str | None,
    task_file: Path | None,
    continue_question: str | None,
    as_json: bool,
    json_events: bool,
    verbose: bool,
    debug: bool,
    **options: Any,
) -> None:
    """A local research agent: think, call a tool, read the result, answer with sources."""
    ctx.obj = {k: v for k, v in options.items() if v not in (None, ())}
    if ctx.invoked_subcommand:
        return
    check_output_flags(as_json, json_events)
    if continue_question is not None:
        if task is not None or task_file is not None:
            raise ApplianceError("--continue and a task were both given", "pass the follow-up question one way")
        question = followup_question(continue_question, None)
        printer = HeadlessPrinter(verbose=verbose, debug=debug)
        ctx.exit(ask_headless(ctx.obj, None, question, as_json=as_json, printer=printer, json_events=json_events))
    task = read_task(task, task_file)
    if json_events and task is None:
        raise ApplianceError("--json-events needs a task", 'pass it with --task "...", --task - or --task-file')
    if task is not None:
        if not task.strip():
            raise ApplianceError("the task is empty", 'pass the question with --task "...", --task - or --task-file')
        printer = HeadlessPrinter(verbose=verbose, debug=debug)
        ctx.exit(run_headless(ctx.obj, task, as_json=as_json, printer=printer, json_events=json_events))
    check_workspace_option(ctx.obj, settings_from_options(ctx.obj))
    try:
        tui = importlib.import_module("appliance.tui.app")
    except ImportError as exc:
        raise ApplianceError(f"the terminal UI is unavailable ({exc})", 'use --task "..." to run headless') from exc
    ctx.exit(tui.run_app(ctx.obj))


@cli.command("prompt")
@click.option("--date", "date_text", help="Date to print in the prompt (YYYY-MM-DD, default today).")
@common_options
@click.pass_context
def prompt_command(ctx: click.Context, /, date_text: str | None, **options: Any) -> None:
    """Print the exact system prompt the model gets with the enabled tools."""
    from appliance.llm.factory import build_backend
    from appliance.protocol.prompt import render_system_prompt
    from appliance.tools.registry import build_toolbox

    settings = settings_from_options(collect_common(ctx, options))
    try:
        date = dt.date.fromisoformat(date_text) if date_text is not None else dt.date.today()
    except ValueError as exc:
        raise ApplianceError(f"--date {date_text!r} is not a date", "write it as YYYY-MM-DD") from exc
    toolbox = build_toolbox(settings, lambda: build_backend(settings))
    try:
        # Exactly the prompt's bytes when piped (golden comparisons); a newline for a terminal.
        click.echo(render_system_prompt(date, toolbox.server_specs()), nl=sys.stdout.isatty())
        for problem in toolbox.problems():
            click.echo(f"warning: {problem}", err=True)
    finally:
        toolbox.close()


def subcommand_printer(ctx: click.Context, *, verbose: bool) -> HeadlessPrinter:
    """The progress printer of `resume` and `rerun`: --debug is an option of the root command."""
    return HeadlessPrinter(verbose=verbose, debug=bool(ctx.find_root().params.get("debug")))


@cli.command("resume")
@click.argument("run_id")
@output_options
@common_options
@click.pass_context
def resume_command(
    ctx: click.Context, /, run_id: str, as_json: bool, json_events: bool, verbose: bool, **options: Any
) -> None:
    """Continue an interrupted run from its last completed step."""
    check_output_flags(as_json, json_events)
    options = collect_common(ctx, options)
    printer = subcommand_printer(ctx, verbose=verbose)
    ctx.exit(resume_headless(options, run_id, as_json=as_json, printer=printer, json_events=json_events))


@cli.command("ask")
@click.argument("run_id")
@click.argument("question", required=False)
@click.option(
    "--task-file", type=click.Path(path_type=Path, dir_okay=False), help="Read the follow-up question from this file."
)
@output_options
@common_options
@click.pass_context
def ask_command(
    ctx: click.Context,
    /,
    run_id: str,
    question: str | None,
    task_file: Path | None,
    as_json: bool,
    json_events: bool,
    verbose: bool,
    **options: Any,
) -> None:
    """Ask a finished run a follow-up question: a new run that starts from its conversation (docs/history.md).

    QUESTION "-" reads it from standard input. `appliance --continue "..."` asks the latest finished run.
    """
    check_output_flags(as_json, json_events)
    text = followup_question(question, task_file)
    options = collect_common(ctx, options)
    printer = subcommand_printer(ctx, verbose=verbose)
    ctx.exit(ask_headless(options, run_id, text, as_json=as_json, printer=printer, json_events=json_events))


def _before_separator(args: list[str]) -> list[str]:
    """The appliance's own arguments: what follows `--` belongs to a command (`sandbox exec -- ...`)."""
    return args[: args.index("--")] if "--" in args else args


def _usage_line(exc: click.ClickException) -> str:
    """A click usage error as one line with the fix (click's own text spans four)."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    end = "" if text.endswith("?") else "."
    context = getattr(exc, "ctx", None)
    return f"{text}{end} Fix: see `{context.command_path if context is not None else 'appliance'} --help`"


def record_crash(details: str) -> Path | None:
    """An internal error's traceback in logs/ of the data directory (or the temporary directory)."""
    from appliance.paths import app_dirs

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    for directory in (app_dirs().data_dir / "logs", Path(tempfile.gettempdir())):
        path = directory / f"appliance-crash-{stamp}.log"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(details, encoding="utf-8")
        except OSError:
            continue
        return path
    return None


def fail(code: int, message: str, *, as_json: bool, json_events: bool = False) -> NoReturn:
    """End with one line on stderr (and, with --json, one JSON object on stdout) and the documented exit code.

    With --json-events the object ends the stream as its `run_finished` line.
    """
    _print_outcome("error", message, code, as_json=as_json, json_events=json_events)
    click.echo(f"appliance: error: {for_terminal(message)}", err=True)
    sys.exit(code)


def interrupted(*, as_json: bool, json_events: bool = False) -> NoReturn:
    """Ctrl-C outside a run's drive (while settings load or a model starts): a script still gets its object."""
    message = "interrupted before the run could record anything"
    _print_outcome("interrupted", message, ExitCode.INTERRUPTED, as_json=as_json, json_events=json_events)
    click.echo("appliance: interrupted", err=True)
    sys.exit(ExitCode.INTERRUPTED)


def _print_outcome(status: str, message: str, code: int, *, as_json: bool, json_events: bool) -> None:
    payload = {"run_id": None, "status": status, "answer": None, "error": message, "exit_code": int(code)}
    if json_events:
        from appliance.eventstream import finished_record

        click.echo(safe_json(finished_record(payload)))
    elif as_json:
        click.echo(safe_json(payload))


def crash(exc: BaseException, *, debug: bool, as_json: bool, json_events: bool = False) -> NoReturn:
    """A bug: one line for the user, the traceback in a log file (and on stderr with --debug)."""
    details = "".join(traceback.format_exception(exc))
    if debug:
        click.echo(details, err=True, nl=False)
    log = record_crash(details)
    where = f"the traceback is in {log}" if log else "run it again with --debug for the traceback"
    message = f"internal error (a bug): {type(exc).__name__}: {exc}. Fix: report it; {where}"
    fail(ExitCode.INTERNAL, message, as_json=as_json, json_events=json_events)


@cli.command("rerun")
@click.argument("run_id")
@output_options
@common_options
@click.pass_context
def rerun_command(
    ctx: click.Context, /, run_id: str, as_json: bool, json_events: bool, verbose: bool, **options: Any
) -> None:
    """Run a recorded run's task again: same settings, new samples, its searches and fetches from its archive."""
    check_output_flags(as_json, json_events)
    options = collect_common(ctx, options)
    printer = subcommand_printer(ctx, verbose=verbose)
    ctx.exit(rerun_headless(options, run_id, as_json=as_json, printer=printer, json_events=json_events))


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    own = _before_separator(args)
    as_json, debug = "--json" in own, "--debug" in own
    events = "--json-events" in own
    try:
        # Without standalone mode click returns the code of ctx.exit() instead of exiting.
        code = cli.main(args=args, prog_name="appliance", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        fail(ExitCode.USAGE, _usage_line(exc), as_json=as_json, json_events=events)
    except ApplianceError as exc:
        fail(exc.exit_code, exc.one_line(), as_json=as_json, json_events=events)
    except (KeyboardInterrupt, click.Abort):
        interrupted(as_json=as_json, json_events=events)
    except OSError as exc:
        if exc.filename is None:
            crash(exc, debug=debug, as_json=as_json, json_events=events)
        # A file or directory the user's setup points at (a read-only APPLIANCE_HOME, a full disk): not a bug.
        fail(
            ExitCode.USAGE,
            f"cannot use {exc.filename}: {exc.strerror or exc}. Fix: make it writable (or free space), "
            "or point APPLIANCE_HOME, --db or --workspace somewhere that is",
            as_json=as_json,
            json_events=events,
        )
    except Exception as exc:
        crash(exc, debug=debug, as_json=as_json, json_events=events)
    sys.exit(code if isinstance(code, int) else 0)
