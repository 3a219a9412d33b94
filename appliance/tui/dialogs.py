"""Small modal dialogs: confirm, attach files, export to a file, a run's sources. Errors show inside the dialog."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from appliance.store.sources import Source
from appliance.tui.base import literal
from appliance.tui.commands import help_text


class ConfirmDialog(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog-screen")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(literal(self.question), classes="dialog-text")
            yield Static(Content.styled("y yes · n no", "$text-muted"), classes="dialog-hint")
        yield Footer(compact=True, show_command_palette=False)

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class AttachDialog(ModalScreen[list[Path]]):
    """Add files or directories the model may upload into its sandbox; delete removes the highlighted one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "done", "Done"),
        Binding("delete", "remove", "Remove highlighted", show=True),
    ]

    def __init__(self, attached: list[Path]) -> None:
        super().__init__(classes="dialog-screen")
        self.attached = list(attached)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Content.styled("Attach a file or directory", "bold"), classes="dialog-title")
            yield Input(placeholder="path, e.g. ~/papers/report.pdf", id="attach-path")
            yield Static("", id="attach-error", classes="dialog-error")
            yield OptionList(id="attached")
            yield Static(
                Content.styled("enter add · delete remove (in the list) · escape done", "$text-muted"),
                classes="dialog-hint",
            )
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self._refresh()
        self.query_one("#attach-error", Static).display = False

    def _refresh(self) -> None:
        options = self.query_one("#attached", OptionList)
        options.clear_options()
        options.add_options([Option(literal(str(p))) for p in self.attached])
        options.display = bool(self.attached)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        raw = event.value.strip()
        error = self.query_one("#attach-error", Static)
        if not raw:
            self.dismiss(self.attached)
            return
        path = Path(raw).expanduser().resolve()
        if not path.exists():
            error.update(literal(f"{path} does not exist: give an existing file or directory", "$error"))
            error.display = True
            return
        error.display = False
        if path not in self.attached:
            self.attached.append(path)
        event.input.value = ""
        self._refresh()

    def action_remove(self) -> None:
        options = self.query_one("#attached", OptionList)
        if options.highlighted is not None and options.has_focus:
            del self.attached[options.highlighted]
            self._refresh()

    def action_done(self) -> None:
        self.dismiss(self.attached)


class ExportDialog(ModalScreen[Path | None]):
    """Ask where to write the Markdown report; `save` returns an error to show, or None when written."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, default: Path, save: Callable[[Path], str | None]) -> None:
        super().__init__(classes="dialog-screen")
        self.default = default
        self.save = save

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Content.styled("Export the run as Markdown", "bold"), classes="dialog-title")
            yield Input(value=str(self.default), id="export-path")
            yield Static("", id="export-error", classes="dialog-error")
            yield Static(Content.styled("enter write · escape cancel", "$text-muted"), classes="dialog-hint")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#export-error", Static).display = False

    def on_input_submitted(self, event: Input.Submitted) -> None:
        path = Path(event.value.strip() or str(self.default)).expanduser()
        problem = self.save(path)
        if problem is None:
            self.dismiss(path)
            return
        error = self.query_one("#export-error", Static)
        error.update(literal(problem, "$error"))
        error.display = True

    def action_cancel(self) -> None:
        self.dismiss(None)


class SourcesDialog(ModalScreen[None]):
    """The run's numbered sources; enter opens one's archived copy, rendered as text (`read` gives the text)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, sources: list[Source], read: Callable[[Source], str]) -> None:
        super().__init__(classes="dialog-screen")
        self.sources = sources
        self.read = read

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog sources-dialog"):
            yield Static(Content.styled("Sources: the archived copy of each, as text", "bold"), classes="dialog-title")
            options = []
            for source in self.sources:
                label = f"{source.number}. {source.url}" + (
                    f"  (fetched {source.archived_at})" if source.archived_at else ""
                )
                options.append(Option(literal(label), id=f"source-{source.number}"))
            yield OptionList(*options, id="sources-list")
            with VerticalScroll(id="archived-copy"):
                yield Static("", id="archived-text")
            yield Static(Content.styled("enter show · escape close", "$text-muted"), classes="dialog-hint")
        yield Footer(compact=True, show_command_palette=False)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.show(self.sources[event.option_index])

    def show(self, source: Source) -> None:
        self.query_one("#archived-text", Static).update(literal(self.read(source)))
        self.query_one("#archived-copy", VerticalScroll).scroll_home(animate=False)

    @property
    def shown_text(self) -> str:
        return str(self.query_one("#archived-text", Static).content)

    def action_close(self) -> None:
        self.dismiss(None)


class HelpDialog(ModalScreen[None]):
    """Every command and its key (the palette, `/` in the task box and ctrl+p, lists the same)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f1", "close", "Close")]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Content.styled("Keys and commands", "bold"), classes="dialog-title")
            yield Static(literal(help_text()), classes="dialog-text", id="help-text")
            yield Static(Content.styled("escape closes", "$text-muted"), classes="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)
