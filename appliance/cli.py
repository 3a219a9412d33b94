"""`appliance`: the TUI by default, `--task` headless, and the subcommands.

Exit codes: 0 answered, 1 finished without an answer, 2 usage or config error,
3 a required component unavailable, 130 interrupted (see errors.ExitCode).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from appliance import __version__
from appliance.agent.events import (
    AgentEvent,
    Notice,
    RunFinished,
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
from appliance.textutil import one_line, strip_control

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

            @click.command(
                cmd_name, help=f"{help_text} (unavailable: {reason})", context_settings={"ignore_unknown_options": True}
            )
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args: tuple[str, ...]) -> None:
                raise ApplianceError(f"`appliance {cmd_name}` is unavailable: {reason}", "reinstall the appliance")

            return unavailable
        assert isinstance(loaded, click.Command)
        return loaded


# ------------------------------------------------------------------ headless


class HeadlessPrinter:
    """Progress on stderr, one line per step; the model's text only with --verbose."""

    def __init__(self, stream: Any = None, *, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __call__(self, event: AgentEvent) -> None:
        if isinstance(event, TextDelta) and self.verbose:
            self.stream.write(strip_control(event.text))
            self.stream.flush()
        elif isinstance(event, TurnEnded) and self.verbose:
            self._line("")
        elif isinstance(event, ToolCallStarted):
            args = one_line(json.dumps(event.arguments, ensure_ascii=False), 90)
            self._line(f"[turn {event.turn}] {event.server}/{event.tool} {args}")
        elif isinstance(event, ToolCallFinished):
            mark = " [truncated]" if event.truncated else ""
            self._line(f"    -> {event.status} in {event.duration_s:.1f}s, {event.raw_chars} chars{mark}")
        elif isinstance(event, TurnRolledBack):
            self._line(f"[turn {event.turn}] reply discarded ({event.reason}): {one_line(event.detail, 100)}")
        elif isinstance(event, SummaryStarted):
            self._line(f"[summary] asking for the final answer ({event.reason.replace('_', ' ')})")
        elif isinstance(event, Notice) and (event.level != "info" or self.verbose):
            self._line(f"{event.level}: {strip_control(event.message).rstrip()}")
        elif isinstance(event, RunFinished) and event.error:
            self._line(f"appliance: run {event.status}: {event.error}")


def drive(
    events: Iterable[AgentEvent], subscribers: list[Callable[[AgentEvent], None]], cancel: Callable[[], None]
) -> RunFinished:
    """Feed every event to every subscriber; Ctrl-C cancels the run and drains it cleanly."""
    iterator = iter(events)
    finished: RunFinished | None = None
    interrupted = False
    while True:
        try:
            event = next(iterator)
        except StopIteration:
            break
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            cancel()
            continue
        for subscriber in subscribers:
            try:
                subscriber(event)
            except KeyboardInterrupt:
                interrupted = True
                cancel()
        if isinstance(event, RunFinished):
            finished = event
    if finished is None:
        raise ApplianceError("the run ended without a result", "report this as a bug")
    return finished


def open_history(settings: Settings, db: Path | None) -> Any:
    """The run history (--db, or history.db in the data directory); a bad file fails here, before any work."""
    from appliance.store import open_history as open_store

    return open_store(db or settings.dirs.default_db)


def check_workspace_option(options: dict[str, Any], settings: Settings) -> None:
    """A refused or missing --workspace stops every face at once, before a model loads or a UI opens."""
    from appliance.tools.sandbox.workspace import check_workspace

    if options.get("workspace") is not None:
        check_workspace(options["workspace"], settings)


def run_headless(options: dict[str, Any], task: str, *, as_json: bool, verbose: bool) -> int:
    from appliance.agent.runtime import build_toolbox, prepare_run, save_kv_checkpoint
    from appliance.llm.factory import build_backend
    from appliance.store import RESUMABLE

    settings = settings_from_options(options)
    check_workspace_option(options, settings)
    history = open_history(settings, options.get("db"))
    try:
        backend = build_backend(settings)
        toolbox = build_toolbox(settings, lambda: backend)
        try:
            agent, state = prepare_run(
                settings,
                task,
                backend=backend,
                toolbox=toolbox,
                workspace=options.get("workspace"),
                attachments=list(options.get("attach") or ()),
            )
            subscribers = [history.recorder(), HeadlessPrinter(verbose=verbose)]
            finished = drive(agent.run(state), subscribers, agent.cancel)
            if finished.status in RESUMABLE and save_kv_checkpoint(backend, settings, state.run_id):
                click.echo(f"appliance: kept the model's cache for `appliance resume {state.run_id}`", err=True)
        finally:
            toolbox.close()
            backend.close()
    finally:
        history.close()
    emit_result(finished, as_json=as_json)
    return int(finished.exit_code)


def resume_headless(options: dict[str, Any], run_id: str, *, as_json: bool, verbose: bool) -> int:
    """Continue a recorded run with its own settings; flags given to `resume` override them."""
    from appliance.store.resume import prepare_resume

    history = open_history(settings_from_options(options), options.get("db"))
    try:
        resumed = prepare_resume(
            history,
            run_id,
            option_overrides(options),
            profile=options.get("profile"),
            workspace=options.get("workspace"),
        )
        printer = HeadlessPrinter(verbose=verbose)
        try:
            for note in resumed.notes:
                printer.stream.write(f"appliance: {strip_control(note)}\n")
            state = resumed.state
            printer.stream.write(
                f"appliance: resuming run {state.run_id} after turn {state.turn} "
                f"({state.tool_calls} tool calls so far)\n"
            )
            finished = drive(resumed.agent.run(state), [history.recorder(), printer], resumed.agent.cancel)
        finally:
            resumed.close()
    finally:
        history.close()
    emit_result(finished, as_json=as_json)
    return int(finished.exit_code)


def emit_result(finished: RunFinished, *, as_json: bool) -> None:
    if as_json:
        payload = finished.as_json()
        if finished.error:
            payload["error"] = finished.error
        click.echo(json.dumps(payload, ensure_ascii=False))
    elif finished.answer is not None:
        click.echo(strip_control(finished.answer))
    elif finished.status == "no_answer":
        click.echo("appliance: the run finished without a \\boxed{} answer", err=True)


# ------------------------------------------------------------------ commands


@click.group(cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--task", "-t", help="Run this task headless and print the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the answer.")
@click.option("--verbose", "-v", is_flag=True, help="Stream the model's text to stderr.")
@common_options
@click.version_option(__version__, prog_name="appliance")
@click.pass_context
def cli(ctx: click.Context, /, task: str | None, as_json: bool, verbose: bool, **options: Any) -> None:
    """A local research agent: think, call a tool, read the result, answer with sources."""
    ctx.obj = {k: v for k, v in options.items() if v not in (None, ())}
    if ctx.invoked_subcommand:
        return
    if task is not None:
        if not task.strip():
            raise ApplianceError("the task is empty", 'pass the question with --task "..."')
        try:
            code = run_headless(ctx.obj, task, as_json=as_json, verbose=verbose)
        except ApplianceError as exc:
            if as_json:
                click.echo(json.dumps({"run_id": None, "status": "error", "answer": None, "error": exc.one_line()}))
            raise
        ctx.exit(code)
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
    from appliance.agent.runtime import build_toolbox
    from appliance.llm.factory import build_backend
    from appliance.protocol.prompt import render_system_prompt

    settings = settings_from_options(collect_common(ctx, options))
    try:
        date = dt.date.fromisoformat(date_text) if date_text else dt.date.today()
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


@cli.command("resume")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the answer.")
@click.option("--verbose", "-v", is_flag=True)
@common_options
@click.pass_context
def resume_command(ctx: click.Context, /, run_id: str, as_json: bool, verbose: bool, **options: Any) -> None:
    """Continue an interrupted run from its last completed step."""
    options = collect_common(ctx, options)
    try:
        code = resume_headless(options, run_id, as_json=as_json, verbose=verbose)
    except ApplianceError as exc:
        if as_json:
            click.echo(json.dumps({"run_id": run_id, "status": "error", "answer": None, "error": exc.one_line()}))
        raise
    ctx.exit(code)


def main(argv: list[str] | None = None) -> None:
    try:
        # Without standalone mode click returns the code of ctx.exit() instead of exiting.
        code = cli.main(args=argv, prog_name="appliance", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("appliance: aborted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except ApplianceError as exc:
        click.echo(f"appliance: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("appliance: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)
