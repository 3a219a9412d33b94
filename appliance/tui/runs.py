"""Assembling runs for the UI: a new task, or the resume of a recorded one. No textual import.

The same pieces as `appliance --task` and `appliance resume` (runtime.prepare_run,
store.resume.prepare_resume), with one difference: a local model stays loaded
between runs of one session, because loading a large GGUF takes longer than
most users want to wait for each new question. Only one model is held at a time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.agent.loop import Agent, RunState
from appliance.agent.runtime import build_toolbox, new_run_id, prepare_run
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.llm.base import Backend
from appliance.llm.factory import build_backend
from appliance.options import option_overrides, settings_from_options
from appliance.store import History
from appliance.store.resume import prepare_resume
from appliance.store.sources import Source
from appliance.tools.archive import archived_text


def archived_copy(run_dir: Path, source: Source) -> str:
    """A source as the user reads it in the UI: its archived copy as text, else why there is none."""
    if not source.archived or source.warc_file is None or source.warc_offset is None:
        where = f"a local {source.kind} document" if source.kind in ("corpus", "zim") else "not in the web archive"
        return f"{source.url} is {where}.\n\nThe passage the extractor used:\n\n{source.passage or '(none recorded)'}"
    try:
        return archived_text(run_dir, source.warc_file, source.warc_offset)
    except ApplianceError as exc:
        return exc.one_line()


@dataclass
class PreparedRun:
    agent: Agent
    state: RunState
    settings: Settings
    close: Callable[[], None]
    notes: list[str] = field(default_factory=list)
    elapsed_before: float = 0.0


class RunFactory:
    """Builds runs from the command-line options the UI was started with."""

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
        self._backend: Backend | None = None
        self._backend_key = ""

    def settings(self) -> Settings:
        """Read afresh for each run, so an edited config file takes effect without a restart."""
        return settings_from_options(self.options)

    def start(self, task: str, attachments: Sequence[Path] = ()) -> PreparedRun:
        settings = self.settings()
        backend = self._backend_for(settings)
        try:
            toolbox = build_toolbox(settings, lambda: backend)
        except BaseException:
            self._drop_uncached(backend)
            raise
        try:
            agent, state = prepare_run(
                settings,
                task,
                backend=backend,
                toolbox=toolbox,
                run_id=self.run_ids(),
                workspace=self.options.get("workspace"),
                attachments=list(attachments),
                today=self.today,
            )
        except BaseException:
            toolbox.close()
            self._drop_uncached(backend)
            raise

        def close() -> None:
            toolbox.close()
            self._drop_uncached(backend)

        return PreparedRun(agent, state, settings, close)

    def resume(self, history: History, run_id: str) -> PreparedRun:
        # prepare_resume loads the run's own model: free the held one first (one model in memory).
        self.release()
        resumed = prepare_resume(
            history,
            run_id,
            option_overrides(self.options),  # options not given are None: resume_settings skips them
            profile=self.options.get("profile"),
            workspace=self.options.get("workspace"),
        )
        return PreparedRun(
            resumed.agent,
            resumed.state,
            resumed.settings,
            resumed.close,
            list(resumed.notes),
            resumed.point.run.elapsed_s,
        )

    def release(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self._backend, self._backend_key = None, ""

    def _backend_for(self, settings: Settings) -> Backend:
        if settings.model.backend == "replay":
            # A script is read from its start for each run: never shared.
            return build_backend(settings)
        key = json.dumps(dataclasses.asdict(settings.model), sort_keys=True)
        if self._backend is None or key != self._backend_key:
            self.release()
            self._backend = build_backend(settings)
            self._backend_key = key
        return self._backend

    def _drop_uncached(self, backend: Backend) -> None:
        if backend is not self._backend:
            backend.close()
