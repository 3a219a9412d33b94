"""The status line: state, profile and model, step of the budget, context used, speed, elapsed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.content import Content
from textual.widget import Widget

from appliance.tui import format as fmt
from appliance.tui.meter import RunMeter


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
