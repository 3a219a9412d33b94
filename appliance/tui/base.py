"""Small pieces the other widgets share: literal text, safe collapsible titles, quiet collapsibles.

Model and tool text is untrusted: it reaches the screen only as literal
`Content` (never parsed as markup, so "[bold]" or "[@click=app.quit]" stay text),
with control characters written as visible escapes.
"""

from __future__ import annotations

from typing import Any

from textual.content import Content
from textual.widgets import Collapsible
from textual.widgets.collapsible import CollapsibleTitle

from appliance.tui import format as fmt


def literal(text: str, style: str = "") -> Content:
    """Untrusted text as content that is shown exactly (controls as visible escapes, no markup)."""
    return Content.styled(fmt.clean(text), style) if style else Content(fmt.clean(text))


def set_collapsible_title(widget: Collapsible, title: Content) -> None:
    """Collapsible parses a str title as markup; a Content title is shown as is."""
    widget.query_one(CollapsibleTitle).label = title


class QuietCollapsible(Collapsible):
    """A Collapsible that scrolls itself into view only when the user toggled it.

    Textual's Collapsible scrolls to itself on every change; folding a turn's
    thinking from code would pull a streaming transcript away from its bottom.
    """

    def scroll_visible(self, *args: Any, **kwargs: Any) -> None:
        # Collapsible asks for this after every change of `collapsed`; the user's toggle has the focus.
        if self.has_focus_within:
            super().scroll_visible(*args, **kwargs)
