"""One run session for every face: start or resume a run, drive it, cancel it, checkpoint it, close it.

The faces (`appliance --task`, `appliance resume`, the TUI, the eval harness)
never assemble a run: they open a session here and drive it with their own
subscribers (the headless printer, the TUI's batcher, eval's bookkeeping).
The store's recorder is always the first subscriber, so every event is
committed before any face sees it. Whichever way a run stops early (Ctrl-C,
a cancel from the UI or the harness, a broken subscriber), the session keeps
the model's KV cache for the resume.

A task is driven as a sequence of agent runs (`RunSession.agent_runs`): its
attempts, as the reference agent makes them ([agent] attempts; a failed
attempt writes a failure-experience summary and the next attempt starts from
the task plus those summaries, agent/attempts.py). Each attempt is a run of
its own in the history, linked to the run of attempt 1 (`task_root`); the
session's `run_id` is always the current attempt's, so after `drive` it is
the run that produced the final answer. With attempts off the sequence has
one run, today's behaviour.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.agent.attempts import TaskAttempts
from appliance.agent.events import AgentEvent, RunFinished, RunStarted
from appliance.agent.followup import ContextMode, FollowUp, FollowUpSource, choose_start
from appliance.agent.loop import Agent
from appliance.agent.runtime import (
    build_toolbox,
    discard_kv_checkpoint,
    make_agent,
    prepare_run,
    restore_kv_checkpoint,
    run_dirs,
    save_kv_checkpoint,
)
from appliance.agent.state import RunState
from appliance.config import Settings
from appliance.errors import ApplianceError, ConfigError
from appliance.llm.base import Backend
from appliance.llm.factory import backend_problem, build_backend
from appliance.policy import RunStatus, redacted_paths
from appliance.store.followup import followup_source
from appliance.store.history import History
from appliance.store.records import ResumeTarget, RunRecord
from appliance.store.report import finish_report
from appliance.store.resume import recorded_settings, resume_notes, resume_workspace
from appliance.store.sources import Source
from appliance.tools.base import ToolBox
from appliance.tools.sandbox.workspace import check_workspace

Subscriber = Callable[[AgentEvent], None]
log = logging.getLogger(__name__)


class Backends:
    """The model backends of one face, shared across its runs where that pays.

    A local model stays loaded between runs (loading a large GGUF takes longer
    than most users want to wait for each new question); only one is held at a
    time. A replay script is read from its own start for each run: never shared.
    Safe to use from several threads (the eval harness runs tasks concurrently).
    """

    def __init__(self) -> None:
        self._held: Backend | None = None
        self._held_key = ""
        self._lock = threading.Lock()

    def acquire(self, settings: Settings, *, replay_start: int = 0) -> tuple[Backend, Callable[[], None]]:
        """(backend, release): release it when the run is over (a held model stays loaded)."""
        if settings.model.backend == "replay":
            backend = build_backend(settings, replay_start=replay_start)
            return backend, backend.close
        key = json.dumps(dataclasses.asdict(settings.model), sort_keys=True, default=str)
        with self._lock:
            if self._held is None or key != self._held_key:
                self._close_held()
                self._held = build_backend(settings)
                self._held_key = key
            return self._held, lambda: None

    def close(self) -> None:
        with self._lock:
            self._close_held()

    def __enter__(self) -> Backends:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_held(self) -> None:
        held, self._held, self._held_key = self._held, None, ""
        if held is not None:
            try:
                held.close()
            except Exception:
                log.warning("closing the %s backend failed", held.name, exc_info=True)


class RunSession:
    """One run, assembled and ready to drive; close it (or use `with`) when done."""

    def __init__(
        self,
        history: History,
        agent: Agent,
        state: RunState,
        settings: Settings,
        toolbox: ToolBox,
        release_backend: Callable[[], None],
        *,
        notes: Sequence[str] = (),
        elapsed_before: float = 0.0,
        task_attempts: TaskAttempts | None = None,
        next_attempt: Callable[[TaskAttempts], tuple[Agent, RunState]] | None = None,
        intro: Sequence[AgentEvent] = (),
    ) -> None:
        self.history = history
        self.agent = agent
        self.state = state
        self.settings = settings
        self.toolbox = toolbox
        self.notes = list(notes)
        self.elapsed_before = elapsed_before
        self.kept_checkpoint = False
        # The finished run's sources (its report is written into its directory with them).
        self.sources: list[Source] = []
        # The task's attempts, and how to assemble the run of the next one (None: one run).
        self.task_attempts = task_attempts
        self._next_attempt = next_attempt
        # Every attempt's end, in order (one element without attempts).
        self.attempt_results: list[RunFinished] = []
        # Events each run reports right after it starts (how a follow-up starts), recorded with it.
        self.intro = tuple(intro)
        self._cancelled = False
        self._release_backend = release_backend
        self._closed = False

    @property
    def run_id(self) -> str:
        """The current attempt's run (after `drive`: the one whose answer is final)."""
        return self.state.run_id

    @property
    def task_root(self) -> str:
        """The run of the task's first attempt."""
        return self.state.task_root or self.state.run_id

    def cancel(self) -> None:
        """Stop the run and every attempt after it (the current tool call is stopped too); safe from any thread."""
        self._cancelled = True
        self.agent.cancel()

    def agent_runs(self) -> Iterator[Iterable[AgentEvent]]:
        """The agent runs this task makes, in order: its attempts (see the module's note)."""
        yield announced(self.agent.run(self.state), *self.intro)
        while self._another_attempt():
            attempts = self.task_attempts
            assert attempts is not None and self._next_attempt is not None  # _another_attempt checked them
            root = self.task_root
            self.agent, self.state = self._next_attempt(attempts)
            self.state.task_root = root
            yield announced(self.agent.run(self.state), attempts.started(), *self.intro)

    def _another_attempt(self) -> bool:
        """Record the attempt that just ended; True when the decision table starts another."""
        if self.task_attempts is None or self._next_attempt is None or not self.attempt_results:
            return False
        ended = self.attempt_results[-1]
        if self._cancelled or ended.status != "no_answer":
            return False  # stopped, or failed in a way a new attempt would not mend
        return self.task_attempts.finish(ended.answer, ended.failure_summary)

    def drive(self, *subscribers: Subscriber) -> RunFinished:
        """Feed every event to the recorder, then to each subscriber; the last run's end is the result.

        Ctrl-C (in the main thread) cancels the run and lets it finish cleanly; a
        second one stops at once. A subscriber that fails stops the run, which
        keeps its KV checkpoint, and its error goes to the caller.
        """
        recorder = self.history.recorder()
        finished: RunFinished | None = None
        for events in self.agent_runs():
            try:
                finished = drive_events(events, [recorder, *subscribers], self.cancel)
                self.attempt_results.append(finished)
            except BaseException:
                self.cancel()
                close = getattr(events, "close", None)
                if close is not None:
                    close()
                self._keep_checkpoint()
                raise
            # Each attempt's run gets its report; the last one's sources are the task's.
            self.sources = finish_report(self.history, self.settings.dirs.run_dir(self.run_id), self.run_id)
        if finished is None:
            raise ApplianceError("the run ended without a result", "report this as a bug")
        if RunStatus.of(finished.status).resumable:
            self._keep_checkpoint()
        return finished

    def _keep_checkpoint(self) -> None:
        # Best effort: a run that stops must not fail for its cache (the resume evaluates its prompt again).
        try:
            self.kept_checkpoint = save_kv_checkpoint(self.agent.backend, self.settings, self.run_id)
        except Exception:
            log.warning("keeping the model's cache of run %s failed", self.run_id, exc_info=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.toolbox.close()
        finally:
            self._release_backend()

    def __enter__(self) -> RunSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def announced(events: Iterable[AgentEvent], *after_start: AgentEvent) -> Iterator[AgentEvent]:
    """The run's events with `after_start` right after its RunStarted (so they are recorded in that run)."""
    for event in events:
        yield event
        if isinstance(event, RunStarted):
            yield from after_start


def drive_events(
    events: Iterable[AgentEvent], subscribers: Sequence[Subscriber], cancel: Callable[[], None]
) -> RunFinished:
    """Feed every event to every subscriber, in order; Ctrl-C cancels the run and drains it cleanly."""
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


def start_session(
    history: History,
    settings: Settings,
    task: str,
    *,
    backends: Backends,
    workspace: Path | None = None,
    attachments: Sequence[Path] = (),
    run_id: str | None = None,
    today: dt.date | None = None,
    reuse_runs: Sequence[str] = (),
    followup_from: FollowUpSource | None = None,
) -> RunSession:
    """A new run of `task`, assembled from `settings` (`reuse_runs`: whose web archives answer first).

    With `followup_from`, `task` is a follow-up question on that parent (agent/followup.py):
    every attempt starts from the same context, chosen here with the model's own token count.
    """
    backend, release = backends.acquire(settings)
    intro: list[AgentEvent] = []
    followup: FollowUp | None = None
    try:
        if followup_from is not None:
            followup, notice = choose_start(followup_from, backend, task, settings.model.max_tokens)
            intro.append(notice)
        toolbox = build_toolbox(settings, lambda: backend)
    except BaseException:
        release()
        raise
    # Attempts off: one run, exactly as before attempts existed (no TaskAttempts at all).
    task_attempts = (
        TaskAttempts(task, attempts=settings.agent.attempts, retry_with_summary=settings.agent.retry_with_summary)
        if settings.agent.attempts > 0
        else None
    )

    def prepare(attempts: TaskAttempts | None, run_id: str | None = None) -> tuple[Agent, RunState]:
        return prepare_run(
            settings,
            task,
            backend=backend,
            toolbox=toolbox,
            run_id=run_id,
            workspace=workspace,
            attachments=list(attachments),
            today=today,
            reuse_runs=reuse_runs,
            attempts=attempts,
            followup=followup,
        )

    try:
        agent, state = prepare(task_attempts, run_id)
    except BaseException:
        toolbox.close()
        release()
        raise
    return RunSession(
        history,
        agent,
        state,
        settings,
        toolbox,
        release,
        task_attempts=task_attempts,
        next_attempt=prepare,
        intro=intro,
    )


@dataclass(frozen=True)
class ResumePlan:
    """How a recorded run would resume now: its row, the settings it gets and the workspace it uses."""

    target: ResumeTarget
    settings: Settings
    workspace: Path | None


def plan_resume(
    history: History,
    run_id: str,
    option_overrides: dict[str, Any] | None = None,
    *,
    profile: str | None = None,
    workspace: Path | None = None,
) -> ResumePlan:
    """Everything a resume checks before the model loads, without loading it or creating anything.

    Raises the error the resume itself would meet: the run is unknown, live or
    finished; its profile or recorded settings no longer load; its workspace
    is refused; its model, replay script or server address is not there.
    """
    target = history.resumable_run(run_id)
    settings = recorded_settings(target.settings, option_overrides or {}, profile)
    chosen, _notes = resume_workspace(target.run_id, target.workspace, settings, workspace)
    if chosen is not None:
        chosen = check_workspace(chosen, settings)
    problem = hidden_setting_problem(target, settings) or backend_problem(settings)
    if problem is not None:
        raise problem
    return ResumePlan(target, settings, chosen)


def hidden_setting_problem(target: ResumeTarget, settings: Settings) -> ApplianceError | None:
    """A server address or key the run recorded hidden (it held a credential) that nothing gives now.

    The resume would otherwise talk to the built-in default address, or to the right one without its key.
    """
    if settings.model.backend != "openai":
        return None
    hidden = redacted_paths(target.settings)
    for key in ("base_url", "api_key"):
        dotted = f"model.{key}"
        if dotted in hidden and dotted not in settings.origins:
            variable = f"APPLIANCE_MODEL_{key.upper()}"
            return ConfigError(
                f"run {target.run_id}'s [model] {key} held a credential, so the history kept it hidden, "
                "and nothing sets it now",
                f"set {variable} (or [model] {key} in config.toml) to the run's value, then resume",
            )
    return None


def resume_blocker(
    history: History,
    run_id: str,
    option_overrides: dict[str, Any] | None = None,
    *,
    profile: str | None = None,
    workspace: Path | None = None,
) -> str | None:
    """Why resuming the run would fail now, in one line with the fix (what `appliance resume` prints); None: it may."""
    try:
        plan_resume(history, run_id, option_overrides, profile=profile, workspace=workspace)
    except ApplianceError as exc:
        return exc.one_line()
    return None


def resume_session(
    history: History,
    run_id: str,
    option_overrides: dict[str, Any] | None = None,
    *,
    backends: Backends,
    profile: str | None = None,
    workspace: Path | None = None,
) -> RunSession:
    """Continue a recorded run with its own settings (options given to resume override them).

    The run's recorded workspace is used unless `workspace` names another (it was moved).
    """
    explicit_workspace = workspace
    plan = plan_resume(history, run_id, option_overrides, profile=profile, workspace=workspace)
    point = history.load_resume(plan.target.run_id)
    settings = plan.settings
    workspace, notes = resume_notes(point, settings, workspace)
    dirs = run_dirs(settings, point.run.run_id, workspace)  # a refused workspace stops here, before the model loads
    # A replay script is the task's: its earlier attempts read their lines first.
    replayed = history.replies_before(point.run.task_root, point.run.attempt) if point.run.task_root else 0
    backend, release = backends.acquire(settings, replay_start=replayed + point.replay_position)
    try:
        restored = restore_kv_checkpoint(backend, settings, point.run.run_id)
        if restored:
            notes.append(f"restored the model's cache of the interrupted run ({restored} tokens)")
        discard_kv_checkpoint(settings, point.run.run_id)  # used once; a later interruption writes a fresh one
        toolbox = build_toolbox(settings, lambda: backend)
    except BaseException:
        release()
        raise
    attachments = tuple(Path(p) for p in point.attachments if Path(p).exists())
    try:
        agent = make_agent(settings, backend, toolbox, point.run.run_id, dirs, attachments)
    except BaseException:
        toolbox.close()
        release()
        raise
    task_attempts = resumed_attempts(history, point.run, point.state, settings)
    followup = recorded_followup(point.state)

    def prepare(attempts: TaskAttempts) -> tuple[Agent, RunState]:
        # The next attempt is a new run, in its own workspace unless one was named (a follow-up's
        # attempts all start from the context its first attempt started from).
        return prepare_run(
            settings, attempts.task, backend=backend, toolbox=toolbox, workspace=explicit_workspace,
            attachments=list(attachments), attempts=attempts, followup=followup,
        )  # fmt: skip

    return RunSession(
        history,
        agent,
        point.state,
        settings,
        toolbox,
        release,
        notes=notes,
        elapsed_before=point.run.elapsed_s,
        task_attempts=task_attempts,
        next_attempt=prepare,
    )


def recorded_followup(state: RunState) -> FollowUp | None:
    """How a recorded follow-up started (None for a task of its own)."""
    if not state.parent_run:
        return None
    mode: ContextMode = "report" if state.context_mode == "report" else "conversation"
    # A conversation continues the parent's system prompt; a report started with the one rendered for it.
    return FollowUp(state.parent_run, mode, tuple(state.context), state.system_prompt)


def resumed_attempts(history: History, run: RunRecord, state: RunState, settings: Settings) -> TaskAttempts | None:
    """The attempts of an interrupted run's task, at the attempt it was in, with the summaries before it."""
    if settings.agent.attempts <= 0:
        return None
    root = run.task_root or run.run_id
    original = history.get_run(root).task if run.task_root else run.task
    attempts = TaskAttempts(
        original,
        attempts=settings.agent.attempts,
        retry_with_summary=settings.agent.retry_with_summary,
        number=run.attempt,
        failure_summaries=history.failure_summaries(root, run.attempt),
    )
    state.attempt, state.attempts_total, state.task_root = attempts.number, attempts.total, run.task_root or ""
    return attempts


def followup_session(
    history: History,
    parent_id: str,
    question: str,
    option_overrides: dict[str, Any] | None = None,
    *,
    backends: Backends,
    workspace: Path | None = None,
    profile: str | None = None,
    today: dt.date | None = None,
    run_id: str | None = None,
) -> RunSession:
    """A follow-up question on a finished run: a new task (its own attempts) linked to the run it follows.

    It runs with the parent's recorded settings (options given here override them) and
    starts from its conversation or its report (agent/followup.py). The parent is only read.
    """
    parent, source = followup_source(history, parent_id)
    settings = recorded_settings(parent.settings, option_overrides or {}, profile)
    return start_session(
        history,
        settings,
        question,
        backends=backends,
        workspace=workspace,
        today=today,
        run_id=run_id,
        followup_from=source,
    )


def rerun_session(
    history: History,
    run_id: str,
    option_overrides: dict[str, Any] | None = None,
    *,
    backends: Backends,
    workspace: Path | None = None,
    profile: str | None = None,
) -> RunSession:
    """A new run of a recorded run's task, with its settings and the attachments still on disk."""
    original = history.get_run(run_id)
    settings = recorded_settings(original.settings, option_overrides or {}, profile)
    attachments = [Path(p) for p in original.attachments if Path(p).exists()]
    return start_session(
        history,
        settings,
        original.task,
        backends=backends,
        workspace=workspace,
        attachments=attachments,
        reuse_runs=[original.run_id],
    )
