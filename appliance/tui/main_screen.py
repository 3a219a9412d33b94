"""The main screen: type a task, watch the run, steer it (cancel, resume, new), copy or export the answer.

The run lives in a thread worker; it talks to this screen only through the
messages in messages.py, batched by batching.EventBatcher. The history is
written by the store's recorder in that same thread, before each event is
shown, exactly as in a headless run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static, TextArea
from textual.worker import Worker

from appliance.agent.events import AgentEvent, RunFinished
from appliance.errors import ApplianceError, ComponentUnavailable
from appliance.paths import app_dirs
from appliance.policy import RunStatus, Standing
from appliance.session import RunSession
from appliance.store import RESUMABLE
from appliance.store.export import markdown_report
from appliance.store.report import finish_report
from appliance.store.sources import Source, run_sources
from appliance.textutil import for_terminal, one_line
from appliance.tui.base import literal
from appliance.tui.batching import EventBatcher
from appliance.tui.dialogs import AttachDialog, ExportDialog, SourcesDialog
from appliance.tui.messages import RunClosed, RunEvents, RunFailed, RunNotes
from appliance.tui.meter import RunMeter
from appliance.tui.recall import PromptRecall
from appliance.tui.runs import archived_copy
from appliance.tui.statusbar import StatusBar
from appliance.tui.toolcall import ToolCallView
from appliance.tui.transcript import Transcript
from appliance.tui.widgets import AnswerPanel

if TYPE_CHECKING:
    from appliance.tui.app import ApplianceApp

log = logging.getLogger(__name__)

WELCOME = (
    "Type a research task below and press ctrl+s to run it.\n"
    "/ or ctrl+p commands · f1 keys · f2 past runs · f3 status · ctrl+q quits"
)


TASK_PLACEHOLDER = "Type a research task (several lines are fine); ctrl+s runs it"
FOLLOWUP_PLACEHOLDER = "Ask a follow-up about this run (ctrl+s sends it) · ctrl+n: a new task instead"


class TaskArea(TextArea):
    """The task box: several lines; ↑/↓ recall earlier tasks while it holds at most one line.

    A recalled task of several lines keeps the walk going from its first line (↑) and
    its last line (↓) as long as it is unedited; inside it, the arrows move the cursor.
    """

    def __init__(self, recall: PromptRecall, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recall = recall
        self._recalled: str | None = None

    async def _on_key(self, event: events.Key) -> None:
        if event.character == "/" and not self.text:
            # `/` first in an empty box: the command palette, filtered as you type (ctrl+p opens it too).
            event.stop()
            event.prevent_default()
            self.app.action_command_palette()
            return
        await super()._on_key(event)

    def _walking(self, at_edge: bool) -> bool:
        return self.document.line_count <= 1 or (self.text == self._recalled and at_edge)

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self._walking(self.cursor_location[0] == 0):
            text = self.recall.older(self.text)
            if text is not None:
                self._show(text, at_end=False)
                return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if not select and self._walking(self.cursor_location[0] == self.document.line_count - 1):
            text = self.recall.newer()
            if text is not None:
                self._show(text, at_end=True)
                return
        super().action_cursor_down(select)

    def _show(self, text: str, *, at_end: bool) -> None:
        # A task from the history may hold control characters (it came from a pipe): shown visibly.
        self.text = self._recalled = for_terminal(text)
        self.move_cursor(self.document.end if at_end else (0, len(self.document.get_line(0))))


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "run", "Run"),
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+r", "resume", "Resume"),
        # The same key when resume is shown disabled: says why instead of doing nothing.
        Binding("ctrl+r", "why_no_resume", show=False),
        Binding("ctrl+n", "new", "New"),
        Binding("ctrl+o", "attach", "Attach"),
        Binding("ctrl+g", "copy", "Copy"),
        Binding("ctrl+f", "export", "Export"),
        Binding("ctrl+t", "thinking", "Think"),
        Binding("ctrl+b", "sources", "Sources", show=False),  # the answer panel names it, beside the sources
    ]

    def __init__(self, attachments: list[Path], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(id="main")
        self.clock = clock
        self.attachments = list(attachments)
        self.meter = RunMeter()
        self.recall = PromptRecall()  # filled from the history on mount and after each run
        self.phase = "idle"  # idle | running | done
        self.run_id: str | None = None
        self.run_status = ""
        # Why the shown run cannot resume now (appliance.session.resume_blocker); None: it can.
        self.resume_blocked: str | None = None
        self._session: RunSession | None = None
        self._cancel_requested = threading.Event()
        # Clear while a run's thread works (set again as its last act).
        self.thread_done = threading.Event()
        self.thread_done.set()
        self.worker: Worker[None] | None = None
        self._then_resume = False
        self._submitted_task = ""
        self._status_bar = StatusBar(self.meter, self.clock, id="status")
        self._transcript = Transcript(self.clock, id="transcript")

    @property
    def appliance(self) -> ApplianceApp:
        from appliance.tui.app import ApplianceApp

        assert isinstance(self.app, ApplianceApp)
        return self.app

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield self._status_bar
        yield self._transcript
        with Vertical(id="composer"):
            yield Static("", id="attachments")
            yield TaskArea(
                self.recall,
                id="task",
                soft_wrap=True,
                show_line_numbers=False,
                tab_behavior="focus",
                placeholder=TASK_PLACEHOLDER,
            )
        yield Footer(compact=True, show_command_palette=False)

    async def on_mount(self) -> None:
        app = self.appliance
        self.meter.profile = app.profile_name
        self.meter.model = app.model_label
        self._show_attachments()
        self._reload_recall()
        transcript = self.query_one(Transcript)
        if app.setup_error is not None:
            error = app.setup_error
            self.meter.state = "error"  # nothing can run until the error is fixed: not "ready"
            await transcript.add_error(_title_for(error), error.message, error.fix or "")
        else:
            await transcript.mount(Static(Content.styled(WELCOME, "$text-muted"), classes="welcome"))
        self.query_one("#task", TextArea).focus()
        self.status_bar.refresh_meter()

    @property
    def transcript(self) -> Transcript:
        return self._transcript

    @property
    def status_bar(self) -> StatusBar:
        return self._status_bar

    def _show_attachments(self) -> None:
        line = self.query_one("#attachments", Static)
        line.display = bool(self.attachments)
        names = ", ".join(p.name or str(p) for p in self.attachments)
        line.update(Content.assemble(("Attached: ", "bold"), literal(names), ("  (ctrl+o to change)", "$text-muted")))

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        composer = self.query_one("#composer")
        composer.display = phase != "running"
        area = self.query_one("#task", TextArea)
        area.placeholder = FOLLOWUP_PLACEHOLDER if self.followup_target is not None else TASK_PLACEHOLDER
        if phase == "running":
            self.transcript.focus()
        else:
            self.query_one("#task", TextArea).focus()
            # The composer took rows from the transcript: keep the run's ending in view.
            self.call_after_refresh(self.transcript.scroll_end, animate=False)
        self.refresh_bindings()
        self.status_bar.refresh_meter()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        running = self.phase == "running"
        if action == "run":
            return not running
        if action == "cancel":
            return running
        if action in ("resume", "why_no_resume"):
            shown = not running and self.run_id is not None
            if action == "why_no_resume":
                return shown and self.resume_blocked is not None
            if not shown or self.run_status not in RESUMABLE:  # finished or live: not a resume candidate
                return False
            return None if self.resume_blocked is not None else True  # None: shown disabled
        if action == "new":
            return self.phase == "done"
        if action == "attach":
            return not running
        if action == "copy":
            answer = self.transcript.answer if self.is_mounted else None
            return answer is not None and answer.status == "answered" and not running
        if action == "export":
            return self.run_id is not None and not running
        if action == "sources":
            answer = self.transcript.answer if self.is_mounted else None
            return answer is not None and bool(answer.sources) and not running
        return True

    @property
    def followup_target(self) -> str | None:
        """The finished run on screen, which the task box asks a follow-up of (ctrl+n: a new task instead)."""
        # An interrupted or failed run is resumed first (ctrl+r), as `appliance ask` says.
        finished = RunStatus.of(self.run_status).standing is Standing.FINISHED
        return self.run_id if self.phase == "done" and finished else None

    # ------------------------------------------------------------ actions

    async def action_run(self) -> None:
        if self.phase == "running":
            return
        area = self.query_one("#task", TextArea)
        task = area.text.strip()
        if not task:
            self.notify("Type a task first.", severity="warning")
            return
        app = self.appliance
        if app.history is None or app.factory is None:
            self.notify("The appliance could not start: see the error above.", severity="error")
            return
        attachments = list(self.attachments)
        parent = self.followup_target
        await self.transcript.reset()
        # Kept until the run has started: a run that cannot start gives the task back.
        self._submitted_task = task
        area.text = ""
        history, factory = app.history, app.factory
        if parent is not None:
            self._begin(lambda: self._drive(lambda: factory.followup(history, parent, task)), live=True)
            return
        self._begin(lambda: self._drive(lambda: factory.start(history, task, attachments)), live=True)

    async def action_followup(self) -> None:
        """The palette's follow-up: send the question in the box, or say how to ask one."""
        if self.followup_target is None:
            self.notify("A follow-up needs a finished run on screen: run a task or open one (f2).", severity="warning")
            return
        area = self.query_one("#task", TextArea)
        if not area.text.strip():
            area.focus()
            self.notify("Type the follow-up question in the box, then ctrl+s.")
            return
        await self.action_run()

    async def action_resume(self) -> None:
        app = self.appliance
        if self.phase == "running" or self.run_id is None or app.history is None or app.factory is None:
            return
        if self.resume_blocked is not None:
            self.action_why_no_resume()
            return
        history, factory, run_id = app.history, app.factory, self.run_id
        self._submitted_task = ""
        self._begin(lambda: self._drive(lambda: factory.resume(history, run_id)), live=True)

    def action_why_no_resume(self) -> None:
        if self.resume_blocked is not None:
            self.notify(
                f"This run cannot resume now: {one_line(self.resume_blocked, 300)}",
                severity="warning",
                timeout=10,
                markup=False,
            )

    def action_cancel(self) -> None:
        if self.phase != "running":
            return
        self._cancel_requested.set()
        session = self._session
        if session is not None:
            session.cancel()
        self.meter.state = "cancelling"
        self.status_bar.refresh_meter()

    async def action_new(self) -> None:
        if self.phase == "running":
            return
        await self.transcript.reset()
        await self.transcript.mount(Static(Content.styled(WELCOME, "$text-muted"), classes="welcome"))
        self.run_id, self.run_status, self.resume_blocked = None, "", None
        self.meter.begin(live=True, now=self.clock())
        self.meter.state, self.meter.started = "idle", None
        self.attachments = []
        self._show_attachments()
        self.query_one("#task", TextArea).text = ""
        self._set_phase("idle")

    def action_attach(self) -> None:
        def attached(paths: list[Path] | None) -> None:
            if paths is not None:
                self.attachments = paths
                self._show_attachments()

        self.app.push_screen(AttachDialog(self.attachments), attached)

    def action_copy(self) -> None:
        answer = self.transcript.answer
        if answer is None or answer.answer is None:
            return
        self.app.copy_to_clipboard(answer.clipboard_text())
        self.notify("The answer and its sources are on the clipboard.")

    def action_export(self) -> None:
        history, run_id = self.appliance.history, self.run_id
        if history is None or run_id is None:
            return

        def save(path: Path) -> str | None:
            if path.exists():
                return f"{path} exists: choose another name"
            try:
                report = markdown_report(history.get_run(run_id))
                path.write_text(report, encoding="utf-8")
            except ApplianceError as exc:
                return exc.one_line()
            except OSError as exc:
                return f"cannot write {path}: {exc.strerror or exc}"
            return None

        def written(path: Path | None) -> None:
            if path is not None:
                self.notify(f"Exported to {path}")

        self.app.push_screen(ExportDialog(Path.cwd() / f"appliance-{run_id}.md", save), written)

    def action_thinking(self) -> None:
        transcript = self.transcript
        transcript.set_thinking_visible(not transcript.show_thinking)
        self.notify("Thinking shown." if transcript.show_thinking else "Thinking hidden.")

    async def open_run(self, run_id: str, *, then_resume: bool = False) -> None:
        """Show a past run, replayed from the history through the same widgets as a live one."""
        history = self.appliance.history
        if history is None:
            return
        if self.phase == "running":
            self.notify("A run is in progress: cancel it (escape) before opening another.", severity="warning")
            return
        await self.transcript.reset()
        self._then_resume = then_resume
        self._begin(lambda: self._replay(run_id), live=False)

    # ------------------------------------------------------------ the run's thread

    def _begin(self, work: Callable[[], None], *, live: bool) -> None:
        self._cancel_requested.clear()
        self.thread_done.clear()
        self.meter.begin(live=live, now=self.clock())
        self._set_phase("running")

        def guarded() -> None:
            try:
                work()
            finally:
                self.thread_done.set()

        self.worker = self.run_worker(guarded, thread=True, group="run", exclusive=True, exit_on_error=False)

    def _post_batch(self, events: tuple[AgentEvent, ...]) -> None:
        self.post_message(RunEvents(events))

    def _drive(self, open_session: Callable[[], RunSession]) -> None:
        try:
            session = open_session()
        except ApplianceError as exc:
            self.post_message(RunFailed(exc.message, exc.fix or "", getattr(exc, "component", "")))
            self.post_message(RunClosed(None, None, "error", [], replay=False))
            return
        except Exception as exc:
            self.post_message(RunFailed(f"internal error: {type(exc).__name__}: {exc}", "report this as a bug"))
            self.post_message(RunClosed(None, None, "error", [], replay=False))
            return
        self._session = session
        if self._cancel_requested.is_set():
            session.cancel()
        if session.notes or session.elapsed_before:
            self.post_message(RunNotes(session.notes, session.elapsed_before))
        batcher = EventBatcher(self._post_batch)
        finished: RunFinished | None = None
        failure: RunFailed | None = None
        try:
            finished = session.drive(batcher.add)
        except ApplianceError as exc:
            # The history could not record a step: the session stopped rather than run on unrecorded.
            failure = RunFailed(exc.message, exc.fix or "")
        except Exception as exc:
            failure = RunFailed(f"internal error: {type(exc).__name__}: {exc}", traceback.format_exc(limit=3))
        finally:
            batcher.close()
            self._session = None
            session.close()
        if failure is not None:
            self.post_message(failure)
        run_id = session.run_id
        # A finished run's report and sources came with its end (RunSession.drive); a broken one's are read here.
        found = session.sources if finished is not None else self._sources(run_id)
        status = finished.status if finished else "error"
        blocker = self._resume_blocker(run_id)
        self.post_message(RunClosed(run_id, finished, status, found, replay=False, resume_blocker=blocker))

    def _replay(self, run_id: str) -> None:
        history = self.appliance.history
        assert history is not None
        batcher = EventBatcher(self._post_batch)
        finished: RunFinished | None = None
        try:
            record = history.get_run(run_id)
            events: Iterator[AgentEvent] = history.replay_events(record)
            for event in events:
                batcher.add(event)
                if isinstance(event, RunFinished):
                    finished = event
        except ApplianceError as exc:
            batcher.close()
            self.post_message(RunFailed(exc.message, exc.fix or ""))
            self.post_message(RunClosed(None, None, "error", [], replay=True))
            return
        batcher.close()
        blocker = self._resume_blocker(record.run_id)
        self.post_message(
            RunClosed(record.run_id, finished, record.status, run_sources(record), replay=True, resume_blocker=blocker)
        )

    def _resume_blocker(self, run_id: str) -> str | None:
        """Why the run cannot resume now (finished, live elsewhere, its model gone...); asked in the run's
        thread, once, as it closes, so that ctrl+r can say it."""
        app = self.appliance
        if app.history is None or app.factory is None:
            return None
        try:
            return app.factory.resume_blocker(app.history, run_id)
        except Exception:
            # A bug in the check must not keep the run's end from the screen; the resume itself reports it.
            log.warning("checking whether run %s can resume failed", run_id, exc_info=True)
            return None

    def _sources(self, run_id: str) -> list[Source]:
        """The finished run's sources, its report written into its directory on the way."""
        history = self.appliance.history
        try:
            return finish_report(history, self._run_dir(run_id), run_id) if history is not None else []
        except ApplianceError:
            return []

    @staticmethod
    def _run_dir(run_id: str) -> Path:
        return app_dirs().run_dir(run_id)

    def action_sources(self) -> None:
        answer = self.transcript.answer
        if answer is None or not answer.sources or self.run_id is None:
            return
        run_dir = self._run_dir(self.run_id)
        self.app.push_screen(SourcesDialog(answer.sources, lambda source: archived_copy(run_dir, source)))

    # ------------------------------------------------------------ messages from the thread

    async def on_run_events(self, message: RunEvents) -> None:
        now = self.clock()
        for event in message.events:
            self.meter.apply(event, now)
        if self._cancel_requested.is_set() and self.meter.state == "running":
            self.meter.state = "cancelling"
        await self.transcript.apply(message.events)
        self.status_bar.refresh_meter()

    def on_run_notes(self, message: RunNotes) -> None:
        self.meter.elapsed_before = message.elapsed_before
        self.transcript.run_notes = list(message.notes)  # shown after the run's first line, in order

    async def on_run_failed(self, message: RunFailed) -> None:
        title = f"{message.component} is unavailable" if message.component else "The run could not go on"
        await self.transcript.add_error(title, message.message, message.fix)

    def _reload_recall(self) -> None:
        history = self.appliance.history
        self.recall.reset(history.recent_tasks() if history is not None else [])

    @on(RunClosed)
    async def run_closed(self, message: RunClosed) -> None:
        transcript = self.transcript
        then_resume, self._then_resume = self._then_resume, False  # asked for this run only
        self._reload_recall()
        if message.run_id is None:
            # Nothing ran: a new run stays unstarted, its task back in the box; a failed resume
            # leaves the run as it was.
            area = self.query_one("#task", TextArea)
            if self._submitted_task and not area.text:
                area.text = self._submitted_task
                area.move_cursor(area.document.end)
            self._submitted_task = ""
            self.meter.started = None
            self.meter.state = self.run_status or "error"
            self._set_phase("done" if self.run_id else "idle")
            return
        self.run_id, self.run_status = message.run_id, message.status
        self.resume_blocked = message.resume_blocker
        self._submitted_task = ""
        for view in transcript.query(ToolCallView):
            if view.finished is None:
                view.stop_running("stopped" if not message.replay else "did not finish")
        if message.finished is None and message.replay:
            if message.status == "running":
                await transcript.add_notice("warning", "This run is still going on in another process.")
            else:
                panel = AnswerPanel(message.status, None, "", None, self.meter.turn)
                transcript.answer = panel
                await transcript.mount(panel)
        if transcript.answer is not None:
            transcript.answer.set_sources(message.sources)
        self.meter.state = message.status
        if message.finished is None and self.meter.started is not None:
            self.meter.final_elapsed = self.meter.elapsed(self.clock())
        self._set_phase("done")
        if then_resume and message.status in RESUMABLE:
            await self.action_resume()

    def on_unmount(self) -> None:
        # Closed some other way than ctrl+q (a test harness, a signal): stop the run and let it record
        # itself as interrupted before the app closes the model and the database under it.
        if self.phase == "running":
            self.action_cancel()
            self.thread_done.wait(timeout=15)

    async def wait_idle(self, timeout: float) -> None:
        """Let a cancelled run finish its bookkeeping (used on quit)."""
        deadline = time.monotonic() + timeout
        while not self.thread_done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def _title_for(error: ApplianceError) -> str:
    if isinstance(error, ComponentUnavailable):
        return f"{error.component} is unavailable"
    return "The appliance could not start"
