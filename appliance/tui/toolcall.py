"""One tool call on screen: a collapsible line that shows what the call is about, then its details."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.content import Content
from textual.highlight import highlight
from textual.timer import Timer
from textual.widgets import Collapsible, Static

from appliance.agent.events import ToolCallFinished, ToolCallStarted
from appliance.tui import format as fmt
from appliance.tui.base import QuietCollapsible, set_collapsible_title

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


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

    def watch_collapsed(self, collapsed: bool) -> None:
        # The body is built the first time it is opened: most calls are never looked into.
        if not collapsed and not self._built and self.is_mounted:
            self._built = True
            self.query_one(Collapsible.Contents).mount_all(self._body())

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
