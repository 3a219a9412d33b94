"""Prompt recall: ↑/↓ in the task box walk through earlier tasks, like a shell's history.

Pure state over a list of tasks (newest first, from the history database, so
they are shared by every session); the widget in main_screen.py asks it for the
text to show. What the user was typing before the first ↑ is kept and comes back
after the newest task on the way down.
"""

from __future__ import annotations

from collections.abc import Sequence


class PromptRecall:
    def __init__(self, tasks: Sequence[str] = ()) -> None:
        self.tasks = list(tasks)
        self.position = -1  # -1: the user's own draft, not a recalled task
        self.draft = ""

    def reset(self, tasks: Sequence[str]) -> None:
        """Start again from the draft with these tasks (after a run adds one)."""
        self.tasks = list(tasks)
        self.position = -1
        self.draft = ""

    def older(self, current: str) -> str | None:
        """The task before the one shown (None: there is none, leave the box alone)."""
        if self.position + 1 >= len(self.tasks):
            return None
        if self.position == -1:
            self.draft = current
        self.position += 1
        return self.tasks[self.position]

    def newer(self) -> str | None:
        """The task after the one shown, then the draft (None: already at the draft)."""
        if self.position == -1:
            return None
        self.position -= 1
        return self.draft if self.position == -1 else self.tasks[self.position]
