"""The UI's runs: a new task, a follow-up question, or the resume of a recorded one, as run sessions.

No textual import.

The sessions are the same as `appliance --task` and `appliance resume` open
(appliance.session); the UI's one difference is that its Backends live as
long as the app, so a local model stays loaded between the runs of one sitting.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.options import option_overrides, settings_from_options
from appliance.session import (
    Backends,
    RunSession,
    followup_session,
    resume_blocker,
    resume_session,
    start_session,
)
from appliance.store import History
from appliance.store.sources import Source
from appliance.tools.archive import archived_text
from appliance.tools.rundirs import new_run_id


def archived_copy(run_dir: Path, source: Source) -> str:
    """A source as the user reads it in the UI: its archived copy as text, else why there is none."""
    if not source.archived or source.warc_file is None or source.warc_offset is None:
        where = f"a local {source.kind} document" if source.kind in ("corpus", "zim") else "not in the web archive"
        return f"{source.url} is {where}.\n\nThe passage the extractor used:\n\n{source.passage or '(none recorded)'}"
    try:
        return archived_text(run_dir, source.warc_file, source.warc_offset)
    except ApplianceError as exc:
        return exc.one_line()


class RunFactory:
    """Opens run sessions from the command-line options the UI was started with."""

    def __init__(
        self,
        options: dict[str, Any],
        *,
        run_ids: Callable[[], str] = new_run_id,
        today: dt.date | None = None,
    ) -> None:
        self.options = dict(options)
        self.run_ids = run_ids
        self.today = today
        self.backends = Backends()

    def settings(self) -> Settings:
        """Read afresh for each run, so an edited config file takes effect without a restart."""
        return settings_from_options(self.options)

    def start(self, history: History, task: str, attachments: Sequence[Path] = ()) -> RunSession:
        return start_session(
            history,
            self.settings(),
            task,
            backends=self.backends,
            run_id=self.run_ids(),
            workspace=self.options.get("workspace"),
            attachments=attachments,
            today=self.today,
        )

    def followup(self, history: History, parent_id: str, question: str) -> RunSession:
        """A follow-up question on a finished run, with that run's settings (the UI's flags win, as for resume)."""
        return followup_session(
            history,
            parent_id,
            question,
            option_overrides(self.options),
            backends=self.backends,
            profile=self.options.get("profile"),
            workspace=self.options.get("workspace"),
            today=self.today,
            run_id=self.run_ids(),
        )

    def resume(self, history: History, run_id: str) -> RunSession:
        return resume_session(
            history,
            run_id,
            option_overrides(self.options),  # options not given are None: resume_settings skips them
            backends=self.backends,
            profile=self.options.get("profile"),
            workspace=self.options.get("workspace"),
        )

    def resume_blocker(self, history: History, run_id: str) -> str | None:
        """Why `resume` would fail now with these options (one line with the fix), or None; loads no model."""
        return resume_blocker(
            history,
            run_id,
            option_overrides(self.options),
            profile=self.options.get("profile"),
            workspace=self.options.get("workspace"),
        )

    def release(self) -> None:
        self.backends.close()
