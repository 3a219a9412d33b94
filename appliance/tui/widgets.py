"""The pieces of a run on screen: task, turns with thinking and text, answer, errors (tool calls: toolcall.py).

Model and tool text is untrusted: it reaches the screen only as literal
`Content` (never parsed as markup, so "[bold]" or "[@click=app.quit]" stay text)
or through the Markdown widget, after terminal control sequences are removed.
"""

from __future__ import annotations

from typing import Any, cast

from rich.markdown import Markdown as RichMarkdown
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from appliance.protocol.answer import unbox
from appliance.store import RESUMABLE
from appliance.store.sources import Source
from appliance.tui import format as fmt
from appliance.tui.base import QuietCollapsible, literal, set_collapsible_title
from appliance.tui.stream import split_reply
from appliance.tui.toolcall import ToolCallView


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


class ThinkingView(QuietCollapsible):
    """The model's thinking, dimmed; open while it streams, folded when the turn ends."""

    def __init__(self, *, collapsed: bool) -> None:
        self.paragraphs = Paragraphs(classes="thinking-text")
        super().__init__(self.paragraphs, title="Thinking", collapsed=collapsed, classes="thinking")

    def on_mount(self) -> None:
        set_collapsible_title(self, Content.styled("Thinking…", "italic"))

    def finish(self) -> None:
        words = fmt.word_count(self.paragraphs.text)
        set_collapsible_title(self, Content.styled(f"Thinking · {words:,} word{'' if words == 1 else 's'}", "italic"))


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
        self._stream: MarkdownStream | None = None
        self.said = ""
        self.tools: dict[int, ToolCallView] = {}

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
            # The answer panel below shows the final answer: here the \boxed{} markup around it would be noise.
            said = unbox(self.said) if self.kind == "summary" else self.said
            frozen = FrozenMarkdown(said, classes="said")
            await self.mount(frozen, after=self.markdown)
            await self.markdown.remove()
            self.markdown = None

    async def finish(self, completion_tokens: int, elapsed_s: float) -> None:
        await self.freeze()
        if self.thinking is not None:
            self.thinking.finish()
            self.thinking.collapsed = True
        speed = f" · {completion_tokens / elapsed_s:.1f} tok/s" if elapsed_s > 0 and completion_tokens else ""
        self.header.update(self._header_text(f"  {completion_tokens:,} tokens · {fmt.duration(elapsed_s)}{speed}"))

    def discard(self, reason: str, detail: str) -> None:
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
        self.sources: list[Source] = []
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
        if self.status in RESUMABLE:
            return Content.styled("ctrl+r resume · ctrl+f export · ctrl+n new run", "$text-muted")
        return Content.styled("ctrl+f export · ctrl+n new run", "$text-muted")

    def set_sources(self, sources: list[Source]) -> None:
        self.sources = sources
        if not sources:
            return
        lines: list[str | tuple[str, str]] = [
            ("Sources", "bold"),
            ("  ctrl+b opens the archived copies", "$text-muted"),
        ]
        for source in sources:
            lines.append(f"\n {source.number}. {fmt.clean(source.url)}")
            if source.archived_at:
                lines.append((f"  fetched {source.archived_at}", "$text-muted"))
        self.sources_view.update(Content.assemble(*lines))
        self.sources_view.display = True

    def clipboard_text(self) -> str:
        text = fmt.clean(self.answer or "")
        if self.sources:
            text += "\n\nSources:\n" + "\n".join(f"- {fmt.clean(source.url)}" for source in self.sources)
        return text
