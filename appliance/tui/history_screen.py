"""The history screen: past runs, newest first; search them, open one, resume one, delete one."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from appliance.errors import ApplianceError
from appliance.policy import RunStatus
from appliance.store import RESUMABLE, RunSummary, SearchHit
from appliance.textutil import one_line
from appliance.tui import format as fmt
from appliance.tui.base import literal
from appliance.tui.dialogs import ConfirmDialog

if TYPE_CHECKING:
    from appliance.tui.app import ApplianceApp

# Columns before the task (16 + 11 + 5 + 5), their padding, the margins and the scrollbar.
TASK_COLUMN_OFFSET = 37 + 10 + 2 + 2
# The status filter cycles through every status (appliance.policy), finished ones first.
STATUS_FILTERS: tuple[str | None, ...] = (
    None,
    RunStatus.ANSWERED,
    RunStatus.NO_ANSWER,
    RunStatus.INTERRUPTED,
    RunStatus.ERROR,
    RunStatus.RUNNING,
)
STATUS_STYLES: dict[str, str] = {
    RunStatus.ANSWERED: "$success",
    RunStatus.NO_ANSWER: "$warning",
    RunStatus.INTERRUPTED: "$warning",
    RunStatus.ERROR: "$error",
    RunStatus.RUNNING: "$accent",
}


class RunDeleted(Message):
    """A run left the history; the main screen forgets it if it is showing it."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id


def started_label(iso: str) -> str:
    """'2026-11-26T09:45:12.345+00:00' -> '2026-11-26 09:45' (the stored UTC time, minutes)."""
    return iso[:16].replace("T", " ")


class HistoryScreen(Screen[tuple[str, str] | None]):
    """Dismissed with ("open", run_id), ("resume", run_id), or None (back)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("enter", "open", "Open", priority=False),
        Binding("r", "resume", "Resume"),
        # The same key when resume is shown disabled: says why instead of doing nothing.
        Binding("r", "why_no_resume", show=False),
        Binding("d", "delete", "Delete"),
        Binding("slash", "search", "Search"),
        Binding("s", "filter", "Filter"),
    ]

    def __init__(self) -> None:
        super().__init__(id="history")
        self.rows: dict[str, RunSummary | SearchHit] = {}
        # Why each run seen, stopped early, cannot resume now (None: it can); asked once per load.
        self.resume_blockers: dict[str, str | None] = {}
        self.status_filter: str | None = None
        self.query_text = ""
        self._debounce: Timer | None = None

    @property
    def appliance(self) -> ApplianceApp:
        from appliance.tui.app import ApplianceApp

        assert isinstance(self.app, ApplianceApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield Static("", id="history-title", classes="screen-title")
        yield Input(placeholder="search tasks, answers and tool results", id="history-search")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="history-detail")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        table.add_column("Started", key="started", width=16)
        table.add_column("Status", key="status", width=11)
        table.add_column("Turns", key="turns", width=5)
        table.add_column("Tools", key="tools", width=5)
        table.add_column("Task", key="task")
        table.focus()
        self.reload()

    def _title(self) -> Content:
        parts: list[str | tuple[str, str]] = [("Past runs", "bold")]
        if self.status_filter:
            parts.append((f"  status: {self.status_filter}", "$accent"))
        if self.query_text:
            parts.append(("  matching: ", "$text-muted"))
            parts.append(fmt.clean(one_line(self.query_text, 40)))
        history = self.appliance.history
        if history is not None:
            parts.append((f"  {fmt.clean(str(history.path))}", "$text-muted"))
        return Content.assemble(*parts)

    # ------------------------------------------------------------ loading

    def reload(self) -> None:
        self.query_one("#history-title", Static).update(self._title())
        self._load(self.query_text, self.status_filter)

    @work(thread=True, exclusive=True, group="history", exit_on_error=False)
    def _load(self, query: str, status: str | None) -> None:
        history = self.appliance.history
        if history is None:
            return
        try:
            found: list[RunSummary | SearchHit]
            if query.strip():
                seen: set[str] = set()
                found = []
                for hit in history.search(query, limit=100):
                    if hit.run_id not in seen and (status is None or hit.status == status):
                        seen.add(hit.run_id)
                        found.append(hit)
            else:
                found = list(history.list_runs(limit=500, status=status))
        except ApplianceError as exc:
            error = exc.one_line()
            self.app.call_from_thread(self._show_error, error)
            return
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._fill, found)

    def _show_error(self, error: str) -> None:
        self.query_one("#history-detail", Static).update(literal(error, "$error"))

    def on_resize(self) -> None:
        if self.rows:
            self._fill(list(self.rows.values()))

    def _fill(self, found: list[RunSummary | SearchHit]) -> None:
        table = self.query_one("#runs", DataTable)
        cursor = table.cursor_row
        table.clear()
        self.rows = {}
        self.resume_blockers = {}
        # Cells are rich Text built from plain strings: a str cell would be parsed as markup.
        room = max(20, self.size.width - TASK_COLUMN_OFFSET)
        for row in found:
            self.rows[row.run_id] = row
            if isinstance(row, SearchHit):
                task = Text(one_line(f"{row.snippet} ({row.field})", room), no_wrap=True)
                turns, tools = "", ""
            else:
                # A follow-up shows the run it follows: the thread reads down the list.
                task = Text(row.thread_mark + one_line(row.task, room - len(row.thread_mark)), no_wrap=True)
                turns, tools = str(row.turns), str(row.tool_calls)
            table.add_row(
                Text(started_label(row.started_at)),
                Content.styled(row.status.replace("_", " "), STATUS_STYLES.get(row.status, "")),
                Text(turns),
                Text(tools),
                task,
                key=row.run_id,
            )
        if found:
            table.move_cursor(row=min(cursor, len(found) - 1))
        if not found:
            empty = "No run matches." if self.query_text or self.status_filter else "No runs yet."
            self.query_one("#history-detail", Static).update(Content.styled(empty, "$text-muted"))
        else:
            self._show_detail(self.selected())

    def selected(self) -> str | None:
        table = self.query_one("#runs", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(str(event.row_key.value) if event.row_key.value is not None else None)

    def resume_blocker(self, run_id: str) -> str | None:
        """Why the run cannot resume now (appliance.session.resume_blocker: finished, live, its model gone...)."""
        if run_id not in self.rows:
            return None
        if run_id not in self.resume_blockers:
            app = self.appliance
            if app.history is None or app.factory is None:
                return None
            self.resume_blockers[run_id] = app.factory.resume_blocker(app.history, run_id)
        return self.resume_blockers[run_id]

    def _show_detail(self, run_id: str | None) -> None:
        detail = self.query_one("#history-detail", Static)
        row = self.rows.get(run_id or "")
        self.refresh_bindings()
        if row is None:
            detail.update("")
            return
        parts: list[str | tuple[str, str]] = [(row.run_id, "bold"), "  ", one_line(row.task, 300)]
        if isinstance(row, RunSummary):
            if row.parent_run:
                parts += [("\nFollow-up of: ", "bold"), row.parent_run]
            if row.answer:
                parts += [("\nAnswer: ", "bold $success"), one_line(row.answer, 200)]
            if row.error:
                parts += [("\nError: ", "bold $error"), one_line(row.error, 200)]
        else:
            parts += [("\nMatch: ", "bold"), one_line(row.snippet, 200)]
        blocker = self.resume_blocker(row.run_id) if row.status in RESUMABLE else None  # a surprise: say it
        if blocker is not None:
            parts += [("\nCannot resume: ", "bold $warning"), one_line(blocker, 300)]
        detail.update(Content.assemble(*parts))

    # ------------------------------------------------------------ search

    @on(Input.Changed, "#history-search")
    def _typed(self, event: Input.Changed) -> None:
        if self._debounce is not None:
            self._debounce.stop()
        value = event.value
        self._debounce = self.set_timer(0.3, lambda: self._search(value))

    @on(Input.Submitted, "#history-search")
    def _submitted(self, event: Input.Submitted) -> None:
        if self._debounce is not None:
            self._debounce.stop()
        self._search(event.value)
        self.query_one("#runs", DataTable).focus()

    def _search(self, value: str) -> None:
        if value.strip() != self.query_text:
            self.query_text = value.strip()
            self.reload()

    # ------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("open", "resume", "why_no_resume", "delete"):
            if not self.is_mounted or not self.query_one("#runs", DataTable).has_focus:
                return False
            run_id = self.selected()
            if run_id is None:
                return False
            if action in ("resume", "why_no_resume"):
                blocked = self.resume_blocker(run_id) is not None
                if action == "why_no_resume":
                    return blocked
                if self.rows[run_id].status not in RESUMABLE:  # finished or live: not a resume candidate
                    return False
                return None if blocked else True  # None: shown disabled
        return True

    def on_descendant_focus(self) -> None:
        self.refresh_bindings()

    def action_search(self) -> None:
        self.query_one("#history-search", Input).focus()

    def action_filter(self) -> None:
        index = STATUS_FILTERS.index(self.status_filter)
        self.status_filter = STATUS_FILTERS[(index + 1) % len(STATUS_FILTERS)]
        self.reload()

    def action_back(self) -> None:
        if self.query_one("#history-search", Input).has_focus:
            self.query_one("#runs", DataTable).focus()
            return
        self.dismiss(None)

    def action_open(self) -> None:
        run_id = self.selected()
        if run_id is not None:
            self.dismiss(("open", run_id))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_resume(self) -> None:
        run_id = self.selected()
        if run_id is None:
            return
        if self.resume_blocker(run_id) is not None:
            self.action_why_no_resume()
            return
        if self.rows[run_id].status in RESUMABLE:
            self.dismiss(("resume", run_id))

    def action_why_no_resume(self) -> None:
        run_id = self.selected()
        blocker = self.resume_blocker(run_id) if run_id is not None else None
        if blocker is not None:
            self.notify(f"Run {run_id} cannot resume now: {one_line(blocker, 300)}", severity="warning", markup=False)

    def action_delete(self) -> None:
        run_id = self.selected()
        history = self.appliance.history
        if run_id is None or history is None:
            return
        row = self.rows[run_id]

        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            try:
                history.delete_run(run_id)
            except ApplianceError as exc:
                self.notify(exc.one_line(), severity="error")
                return
            self.notify(f"Deleted run {run_id}.")
            self.app.post_message(RunDeleted(run_id))
            self.reload()

        question = f"Delete run {run_id} ({row.status}): {one_line(row.task, 60)}?\nIts record is removed for good."
        self.app.push_screen(ConfirmDialog(question), confirmed)
