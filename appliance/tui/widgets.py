"""The pieces of a run on screen: task, turns with thinking and text, tool calls, answer, errors, status bar.

Model and tool text is untrusted: it reaches the screen only as literal
`Content` (never parsed as markup, so "[bold]" or "[@click=app.quit]" stay text)
or through the Markdown widget, after terminal control sequences are removed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from rich.markdown import Markdown as RichMarkdown
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.highlight import highlight
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Collapsible, Markdown, Static
from textual.widgets._collapsible import CollapsibleTitle
from textual.widgets.markdown import MarkdownStream

from appliance.agent.events import ToolCallFinished, ToolCallStarted
from appliance.tui import format as fmt
from appliance.tui.meter import RunMeter
from appliance.tui.stream import split_reply

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def literal(text: str, style: str = "") -> Content:
    """Untrusted text as content that is shown exactly (control sequences removed, no markup)."""
    return Content.styled(fmt.clean(text), style) if style else Content(fmt.clean(text))


def set_collapsible_title(widget: Collapsible, title: Content) -> None:
    """Collapsible parses a str title as markup; a Content title is shown as is."""
    widget.query_one(CollapsibleTitle).label = title


class SafeMarkdown(Markdown):
    """The model's Markdown; links open only for http(s) (a click on anything else is ignored)."""

    def __init__(self, markdown: str = "", **kwargs: Any) -> None:
        super().__init__(markdown, open_links=False, **kwargs)

    def on_markdown_link_clicked(self, event: Markdown.LinkClicked) -> None:
        event.stop()
        if event.href.startswith(("http://", "https://")):
            self.app.open_url(event.href)


class FrozenMarkdown(Static):
    """A finished reply's Markdown as one widget.

    The streaming Markdown widget makes a widget per block (a list item is four);
    every widget on the screen costs each relayout, so a finished turn keeps one.
    Rendered by Rich without hyperlinks (a link shows its address instead).
    """

    def __init__(self, markdown: str, **kwargs: Any) -> None:
        self.source = fmt.clean(markdown)
        super().__init__(RichMarkdown(self.source, hyperlinks=False), **kwargs)


class Paragraphs(Vertical):
    """Growing plain text (thinking): finished paragraphs stay put, only the last one is redrawn."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._live: Static | None = None
        self._buffer = ""
        self.text = ""

    async def append(self, text: str) -> None:
        text = fmt.clean(text)
        if not text:
            return
        self.text += text
        parts = (self._buffer + text).split("\n\n")
        for done in parts[:-1]:
            if done.strip():
                await self._show(done.strip("\n"))
                self._live = None
        self._buffer = parts[-1]
        if self._buffer.strip():
            await self._show(self._buffer.strip("\n"))

    async def _show(self, paragraph: str) -> None:
        content = Content(paragraph)
        live = self._live
        if live is None:
            self._live = Static(content, classes="paragraph")
            await self.mount(self._live)
            return
        # A relayout of the whole screen only when the paragraph gained a line: most batches of
        # tokens land on the line the paragraph already had.
        width, rules = live.size.width, cast(Any, live.styles)
        same_height = (
            width > 0
            and isinstance(live.visual, Content)
            and live.visual.get_height(rules, width) == content.get_height(rules, width)
        )
        live.update(content, layout=not same_height)


class QuietCollapsible(Collapsible):
    """A Collapsible that scrolls itself into view only when the user toggled it.

    Textual's Collapsible scrolls to itself on every change; folding a turn's
    thinking from code would pull a streaming transcript away from its bottom.
    """

    def _watch_collapsed(self, collapsed: bool) -> None:
        self._update_collapsed(collapsed)
        self.post_message(self.Collapsed(self) if collapsed else self.Expanded(self))
        if self.is_mounted and self.has_focus_within:
            self.call_after_refresh(self.scroll_visible)


class ThinkingView(QuietCollapsible):
    """The model's thinking, dimmed; open while it streams, folded when the turn ends."""

    def __init__(self, *, collapsed: bool) -> None:
        self.paragraphs = Paragraphs(classes="thinking-text")
        super().__init__(self.paragraphs, title="Thinking", collapsed=collapsed, classes="thinking")

    def on_mount(self) -> None:
        set_collapsible_title(self, Content.styled("Thinking…", "italic"))

    def finish(self) -> None:
        words = fmt.word_count(self.paragraphs.text)
        set_collapsible_title(self, Content.styled(f"Thinking · {words:,} words", "italic"))


class ToolCallView(QuietCollapsible):
    """One tool call: what it is about in the title; arguments and a result preview inside.

    The inside is built on first expansion: a long run has dozens of calls and
    most are never opened, and every widget on the screen costs each relayout.
    """

    def __init__(self, event: ToolCallStarted, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.call = event
        self.clock = clock
        self.started = clock()
        self.finished: ToolCallFinished | None = None
        self.omitted = False
        self.stopped = ""
        self._frame = 0
        self._timer: Timer | None = None
        self._built = False
        super().__init__(title="tool", collapsed=True, classes="tool-call -running")

    def on_mount(self) -> None:
        if self.finished is None and not self.stopped:
            self._timer = self.set_interval(0.2, self._spin)
        self._refresh_title()

    def _watch_collapsed(self, collapsed: bool) -> None:
        if not collapsed and not self._built and self.is_mounted:
            self._built = True
            self.query_one(Collapsible.Contents).mount_all(self._body())
        super()._watch_collapsed(collapsed)

    def _body(self) -> list[Static]:
        event = self.call
        return [
            Static(
                Content.assemble(
                    ("Server ", "bold"), fmt.clean(event.server), ("  Tool ", "bold"), fmt.clean(event.tool)
                ),
                classes="tool-label",
            ),
            Static(Content.styled("Arguments", "bold"), classes="tool-label"),
            Static(highlight(fmt.pretty_arguments(event.arguments), language="json"), classes="tool-arguments"),
            Static(Content.styled("Result", "bold"), classes="tool-label"),
            Static(self.result_content(), classes="tool-result"),
            self._marks_static(Static(classes="tool-marks")),
        ]

    def _marks_static(self, marks: Static) -> Static:
        content = self.marks_content()
        marks.update(content)
        marks.display = bool(content.plain)
        return marks

    def _refresh_body(self) -> None:
        if self._built:
            self.query_one(".tool-result", Static).update(self.result_content())
            self._marks_static(self.query_one(".tool-marks", Static))

    def _spin(self) -> None:
        self._frame += 1
        self._refresh_title()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def finish(self, event: ToolCallFinished) -> None:
        self.finished = event
        self._stop_timer()
        self.set_class(False, "-running")
        self.set_class(event.status != "ok", "-failed")
        self.set_class(event.truncated, "-truncated")
        self._refresh_body()
        self._refresh_title()

    def stop_running(self, label: str) -> None:
        """The call never finished (the run was cancelled, or its process died)."""
        self._stop_timer()
        self.set_class(False, "-running")
        self.set_class(True, "-failed")
        self.stopped = label
        self._refresh_body()
        self._refresh_title()

    def mark_omitted(self) -> None:
        self.omitted = True
        self.set_class(True, "-omitted")
        self._refresh_body()
        self._refresh_title()

    def result_content(self) -> Content:
        done = self.finished
        if done is None:
            return Content.styled(f"({self.stopped}: no result)" if self.stopped else "running…", "italic")
        preview = fmt.search_preview(done.result) if done.tool == "google_search" else None
        if preview is not None:
            return Content(preview)
        text, left_out = fmt.result_preview(done.result)
        more = f"\n… {left_out:,} more characters" if left_out else ""
        return Content.assemble(text or "(empty)", (more, "italic"))

    def marks_content(self) -> Content:
        marks: list[str | tuple[str, str]] = []
        if self.finished is not None and self.finished.truncated:
            marks.append((f"{fmt.TRUNCATED_MARK} the model read the first part only", "bold $text-warning"))
        if self.omitted:
            if marks:
                marks.append("\n")
            dropped = "Dropped from the model's context (only the last results are kept)"
            marks.append((dropped, "italic $text-secondary"))
        return Content.assemble(*marks)

    def title_content(self) -> Content:
        call, done = self.call, self.finished
        if done is None and self.stopped:
            mark: tuple[str, str] = ("■", "bold $warning")
        elif done is None:
            mark = (SPINNER[self._frame % len(SPINNER)], "bold $accent")
        elif done.status == "ok":
            mark = ("✓", "bold $success")
        else:
            mark = ("✗", "bold $error")
        parts: list[str | tuple[str, str]] = [mark, " ", (fmt.clean(call.tool), "bold")]
        if done is None and self.stopped:
            parts.append((f"  {self.stopped}", "italic $text-warning"))
        elif done is None:
            parts.append((f"  running {fmt.duration(self.clock() - self.started)}", "italic $text-muted"))
        else:
            status = "" if done.status == "ok" else f"{done.status} · "
            size = f"{fmt.count(done.raw_chars)} chars"
            parts.append((f"  {status}{fmt.duration(done.duration_s)} · {size}", "$text-muted"))
            if done.truncated:
                parts.append(("  truncated", "bold $text-warning"))
        if self.omitted:
            parts.append(("  omitted", "italic $text-secondary"))
        subject = fmt.tool_subject(call.tool, call.arguments, 50)
        if subject:
            parts.append(f"  {subject}")
        parts.append((f"  {fmt.clean(call.server)}", "$text-muted"))
        return Content.assemble(*parts)

    def _refresh_title(self) -> None:
        if self.is_mounted:
            set_collapsible_title(self, self.title_content())


class TurnView(Vertical):
    """One assistant reply: a header, thinking, the text streamed as Markdown, its tool calls."""

    def __init__(self, turn: int, kind: str, attempt: int) -> None:
        super().__init__(classes="turn" + (" -summary" if kind == "summary" else ""))
        self.turn = turn
        self.kind = kind
        self.attempt = attempt
        self.header = Static(self._header_text(), classes="turn-header")
        self.thinking: ThinkingView | None = None
        self.markdown: SafeMarkdown | None = None
        self.frozen: FrozenMarkdown | None = None
        self._stream: MarkdownStream | None = None
        self.said = ""
        self.tools: dict[int, ToolCallView] = {}
        self.discarded = False

    def compose(self) -> ComposeResult:
        yield self.header

    def _header_text(self, extra: str = "") -> Content:
        title = "Final answer" if self.kind == "summary" else f"Turn {self.turn}"
        if self.attempt > 1:
            title += f" · attempt {self.attempt}"
        return Content.assemble((title, "bold"), (extra, "$text-muted"))

    async def add_thinking(self, text: str) -> None:
        if self.thinking is None:
            if not text.strip():
                return
            self.thinking = ThinkingView(collapsed=False)
            await self.mount(self.thinking, after=self.header)
        await self.thinking.paragraphs.append(text)

    async def add_text(self, text: str) -> None:
        text = fmt.clean(text)
        if self.markdown is None:
            if not text.strip():
                return
            self.markdown = SafeMarkdown(classes="said")
            await self.mount(self.markdown, before=self._first_tool())
            self._stream = Markdown.get_stream(self.markdown)
        self.said += text
        assert self._stream is not None
        await self._stream.write(text)

    async def rethink(self) -> None:
        """The text shown so far was thinking (its opening tag was in the prompt)."""
        moved = self.said
        self.said = ""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if self.markdown is not None:
            await self.markdown.remove()
            self.markdown = None
        await self.add_thinking(moved)

    def _first_tool(self) -> ToolCallView | None:
        return next(iter(self.tools.values()), None)

    async def add_tool(self, view: ToolCallView) -> None:
        self.tools[view.call.index] = view
        await self.mount(view)

    async def close_stream(self) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None

    async def freeze(self) -> None:
        """The reply is complete: swap the block-per-widget Markdown for a single widget."""
        await self.close_stream()
        if self.markdown is not None:
            frozen = FrozenMarkdown(self.said, classes="said")
            await self.mount(frozen, after=self.markdown)
            await self.markdown.remove()
            self.markdown = None
            self.frozen = frozen

    async def finish(self, completion_tokens: int, elapsed_s: float) -> None:
        await self.freeze()
        if self.thinking is not None:
            self.thinking.finish()
            self.thinking.collapsed = True
        speed = f" · {completion_tokens / elapsed_s:.1f} tok/s" if elapsed_s > 0 and completion_tokens else ""
        self.header.update(self._header_text(f"  {completion_tokens:,} tokens · {fmt.duration(elapsed_s)}{speed}"))

    def discard(self, reason: str, detail: str) -> None:
        self.discarded = True
        self.add_class("-discarded")
        self.header.update(self._header_text(f"  discarded: {fmt.rollback_text(reason, detail)}"))
        if self.thinking is not None:
            self.thinking.collapsed = True


class TaskView(Static):
    def __init__(self, task: str, attachments: tuple[str, ...]) -> None:
        parts: list[str | tuple[str, str]] = [("Task\n", "bold $accent"), fmt.clean(task).strip()]
        for path in attachments:
            parts.append((f"\n📎 {fmt.clean(path)}", "$text-muted"))
        super().__init__(Content.assemble(*parts), classes="task")


class NoteView(Static):
    """A line between turns: a summary starting, a resume, a notice from the loop."""

    def __init__(self, text: str, level: str = "info") -> None:
        style = {"warning": "$warning", "error": "$error"}.get(level, "$text-muted")
        super().__init__(literal(text, style), classes=f"note -{level}")


class ErrorPanel(Static):
    """An error where it happened, with its fix."""

    def __init__(self, title: str, message: str, fix: str = "") -> None:
        parts: list[str | tuple[str, str]] = [(title + "\n", "bold $error"), fmt.clean(message)]
        if fix:
            parts += [("\nFix: ", "bold"), fmt.clean(fix)]
        super().__init__(Content.assemble(*parts), classes="error-panel")


class AnswerPanel(Vertical):
    """How the run ended: the answer standing out, with its sources; or why there is none."""

    def __init__(self, status: str, answer: str | None, final_text: str, error: str | None, turn: int) -> None:
        super().__init__(classes=f"answer -{status}")
        self.status = status
        self.answer = answer
        self.sources: list[str] = []
        self.body = Static(self._body(final_text, error, turn), classes="answer-body")
        self.sources_view = Static("", classes="answer-sources")
        self.sources_view.display = False
        self.hint = Static(self._hint(), classes="answer-hint")
        self.border_title = {
            "answered": "Answer",
            "no_answer": "No answer",
            "interrupted": "Interrupted",
            "error": "Error",
        }.get(status, status)

    def compose(self) -> ComposeResult:
        yield self.body
        yield self.sources_view
        yield self.hint

    def _body(self, final_text: str, error: str | None, turn: int) -> Content:
        if self.status == "answered" and self.answer is not None:
            return literal(self.answer.strip(), "bold")
        if self.status == "interrupted":
            return literal(f"Stopped after turn {turn}; the run is saved and can be resumed.")
        if self.status == "error":
            message, fix = fmt.split_error(error or "unknown error")
            parts: list[str | tuple[str, str]] = [message]
            if fix:
                parts += [("\nFix: ", "bold"), fix]
            return Content.assemble(*parts)
        said = split_reply(final_text)[1]
        return Content.assemble(("The final reply has no \\boxed{} answer.", "italic"), "\n", fmt.clean(said[-600:]))

    def _hint(self) -> Content:
        if self.status == "answered":
            return Content.styled("ctrl+g copy · ctrl+f export · ctrl+n new run", "$text-muted")
        if self.status in ("interrupted", "error"):
            return Content.styled("ctrl+r resume · ctrl+f export · ctrl+n new run", "$text-muted")
        return Content.styled("ctrl+f export · ctrl+n new run", "$text-muted")

    def set_sources(self, sources: list[str]) -> None:
        self.sources = sources
        if not sources:
            return
        lines: list[str | tuple[str, str]] = [("Sources", "bold")]
        for number, url in enumerate(sources, 1):
            lines.append(f"\n {number}. {fmt.clean(url)}")
        self.sources_view.update(Content.assemble(*lines))
        self.sources_view.display = True

    def clipboard_text(self) -> str:
        text = fmt.clean(self.answer or "")
        if self.sources:
            text += "\n\nSources:\n" + "\n".join(f"- {fmt.clean(url)}" for url in self.sources)
        return text


class StatusBar(Widget):
    """One line: state, profile and model, step of the budget, context used, speed, elapsed.

    Drawn from the meter on each refresh; a fixed-height line needs no relayout
    (a Static's update would ask for one on every batch of tokens).
    """

    def __init__(self, meter: RunMeter, clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.meter = meter
        self.clock = clock

    def on_mount(self) -> None:
        self.set_interval(1.0, self.refresh_meter)

    def refresh_meter(self) -> None:
        self.refresh()

    def render(self) -> Content:
        parts = fit_parts(self.meter.parts(self.clock()), self.size.width)
        styled: list[str | tuple[str, str]] = []
        for index, (role, text) in enumerate(parts):
            if index:
                styled.append((" │ ", "$text-muted"))
            styled.append((fmt.clean(text), _ROLE_STYLES.get(role, "")))
        return Content.assemble(*styled)


# Dropped first when the line is too narrow.
_DROP_ORDER = ("speed", "profile", "context", "clock")


def fit_parts(parts: list[tuple[str, str]], width: int) -> list[tuple[str, str]]:
    """The status parts that fit `width` columns: the model's name is shortened first, then the
    least important parts are left out."""

    def length(items: list[tuple[str, str]]) -> int:
        return sum(len(text) + 3 for _, text in items) - 3

    kept = list(parts)
    if width <= 0 or length(kept) <= width:
        return kept
    room = width - length([p for p in kept if p[0] != "model"]) - 3
    if room >= 12:
        return [(role, text if role != "model" else text[: room - 1] + "…") for role, text in kept]
    kept = [p for p in kept if p[0] != "model"]
    for role in _DROP_ORDER:
        if length(kept) <= width:
            break
        kept = [p for p in kept if p[0] != role]
    return kept


_ROLE_STYLES = {
    "state-running": "bold $accent",
    "state-starting": "bold $accent",
    "state-cancelling": "bold $warning",
    "state-answered": "bold $success",
    "state-no_answer": "bold $warning",
    "state-error": "bold $error",
    "state-interrupted": "bold $warning",
    "state-idle": "bold",
    "model": "",
}
