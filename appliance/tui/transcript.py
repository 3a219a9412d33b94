"""The scrolling record of a run: events in, widgets out. Live runs and past runs use the same path."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from textual.containers import VerticalScroll

from appliance.agent.events import (
    AgentEvent,
    AttemptStarted,
    Notice,
    RunFinished,
    RunStarted,
    SummaryStarted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    ToolResultOmitted,
    TurnEnded,
    TurnRolledBack,
    TurnStarted,
)
from appliance.tui import format as fmt
from appliance.tui.stream import ReplySplitter, Segment, split_reply
from appliance.tui.toolcall import ToolCallView
from appliance.tui.widgets import AnswerPanel, ErrorPanel, NoteView, TaskView, TurnView


class Transcript(VerticalScroll):
    """Anchored to the bottom while the run grows, until the user scrolls up."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.clock = clock
        self.turns: dict[int, TurnView] = {}
        # Turns on screen when a resumed run started: what the resumed run does in them goes below.
        self.before_resume: set[int] = set()
        # The run's notes (a resume's "restored the cache", ...), shown right after its first line.
        self.run_notes: list[str] = []
        self.current: TurnView | None = None
        self.answer: AnswerPanel | None = None
        self._splitter = ReplySplitter()
        self.events_seen = 0
        self.show_thinking = True

    def on_mount(self) -> None:
        self.anchor()

    async def reset(self) -> None:
        await self.remove_children()
        self.turns.clear()
        self.before_resume.clear()
        self.run_notes = []
        self.current = None
        self.answer = None
        self.events_seen = 0
        self.anchor()

    async def apply(self, events: Iterable[AgentEvent]) -> None:
        for event in events:
            self.events_seen += 1
            await self._apply(event)

    async def _apply(self, event: AgentEvent) -> None:
        if isinstance(event, TextDelta):
            await self._stream(event)
        elif isinstance(event, TurnStarted):
            await self._begin_turn(event)
        elif isinstance(event, TurnEnded):
            await self._end_turn(event)
        elif isinstance(event, ToolCallStarted):
            turn = await self._turn_for(event.turn)
            view = ToolCallView(event, clock=self.clock)
            await turn.add_tool(view)
        elif isinstance(event, ToolCallFinished):
            tool = (await self._turn_for(event.turn)).tools.get(event.index)
            if tool is not None:
                tool.finish(event)
        elif isinstance(event, ToolResultOmitted):
            turn_view = self.turns.get(event.turn)
            if turn_view is not None:
                for view in turn_view.tools.values():
                    view.mark_omitted()
        elif isinstance(event, TurnRolledBack):
            turn_view = self.turns.get(event.turn)
            if turn_view is not None and turn_view.kind == event.kind:
                turn_view.discard(event.reason, event.detail)
        elif isinstance(event, RunStarted):
            await self._run_started(event)
        elif isinstance(event, SummaryStarted):
            reason = fmt.SUMMARY_REASONS.get(event.reason, event.reason.replace("_", " "))
            await self.mount(NoteView(f"Asking for the final answer: {reason}."))
        elif isinstance(event, Notice) and event.level != "debug":  # a traceback: recorded, not shown
            await self.add_notice(event.level, event.message)
        elif isinstance(event, AttemptStarted):
            await self._attempt_started(event)
        elif isinstance(event, RunFinished):
            await self._finished(event)

    async def add_notice(self, level: str, message: str) -> None:
        lines = fmt.clean(message).rstrip().splitlines() or [""]
        text = "\n".join(lines[-12:]) if len(lines) > 12 else "\n".join(lines)
        prefix = "" if level == "info" else f"{level}: "
        await self.mount(NoteView(prefix + text, level))

    async def add_error(self, title: str, message: str, fix: str = "") -> None:
        await self.mount(ErrorPanel(title, message, fix))

    async def _run_started(self, event: RunStarted) -> None:
        if event.resumed:
            await self.mount(NoteView(f"Resumed after turn {event.turn}."))
            if not any(isinstance(child, TaskView) for child in self.children):
                await self.mount(TaskView(event.task, event.attachments), before=0)
            self.before_resume = set(self.turns)
        else:
            await self.mount(TaskView(event.task, event.attachments))
        for note in self.run_notes:
            await self.mount(NoteView(note, "warning"))
        self.run_notes = []
        if self.answer is not None:
            # A resumed run: the earlier ending no longer stands.
            await self.answer.remove()
            self.answer = None

    async def _begin_turn(self, event: TurnStarted) -> None:
        self._splitter = ReplySplitter()
        view = TurnView(event.turn, event.kind, event.attempt)
        self.turns[event.turn] = view
        self.current = view
        await self.mount(view)

    async def _turn_for(self, turn: int) -> TurnView:
        view = self.turns.get(turn)
        if view is None or turn in self.before_resume:
            # A resumed run re-executing the calls of a recorded turn: below the resume, in the order they run.
            self.before_resume.discard(turn)
            view = TurnView(turn, "turn", 1)
            self.turns[turn] = view
            await self.mount(view)
        return view

    async def _stream(self, event: TextDelta) -> None:
        view = self.current
        if view is None or view.turn != event.turn:
            return
        await self._show(view, self._splitter.feed(event.text))

    async def _show(self, view: TurnView, segments: Iterable[Segment]) -> None:
        for segment in segments:
            if segment.kind == "think":
                await view.add_thinking(segment.text)
            elif segment.kind == "text":
                await view.add_text(segment.text)
            else:
                await view.rethink()

    async def _end_turn(self, event: TurnEnded) -> None:
        view = self.current
        if view is None or view.turn != event.turn:
            return
        await self._show(view, self._splitter.finish())
        if view.thinking is None and view.markdown is None and event.content.strip():
            # Nothing streamed (a backend without streaming): show the whole reply.
            thinking, said = split_reply(event.content)
            await view.add_thinking(thinking)
            await view.add_text(said)
        await view.finish(event.completion_tokens, event.elapsed_s)
        if view.thinking is not None and not self.show_thinking:
            view.thinking.display = False

    async def _attempt_started(self, event: AttemptStarted) -> None:
        # A new attempt is a new run: its turns count from 1 again, in a section of their own.
        self.turns, self.current, self.before_resume = {}, None, set()
        await self.mount(NoteView(event.line[0].upper() + event.line[1:] + ".", "warning"))

    async def _finished(self, event: RunFinished) -> None:
        if self.current is not None:
            await self._show(self.current, self._splitter.finish())
            await self.current.freeze()
        if event.failure_summary:
            await self.mount(
                NoteView(f"Failure summary of attempt {event.attempt}:\n{fmt.clean(event.failure_summary)}")
            )
        if event.attempt > 1 and event.answer is not None:
            await self.mount(NoteView(f"The final answer comes from attempt {event.attempt}."))
        panel = AnswerPanel(event.status, event.answer, event.final_text, event.error, event.turns)
        self.answer = panel
        await self.mount(panel)

    def set_thinking_visible(self, visible: bool) -> None:
        self.show_thinking = visible
        for view in self.turns.values():
            if view.thinking is not None:
                view.thinking.display = visible
