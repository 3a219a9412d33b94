"""Assemble a resumed run: the recorded state, the run's own settings, the same workspace.

Used by `appliance resume` and by the TUI; they drive the events themselves
(with `History.recorder()` first among the subscribers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from appliance.agent.loop import Agent, RunState
from appliance.agent.runtime import (
    build_toolbox,
    discard_kv_checkpoint,
    make_agent,
    restore_kv_checkpoint,
    run_dirs,
)
from appliance.config import SECRET_KEYS, SECTIONS, Settings, load_settings
from appliance.llm.base import Backend
from appliance.llm.factory import build_backend
from appliance.store.history import History
from appliance.store.records import ResumePoint
from appliance.tools.base import ToolBox


def snapshot_overrides(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The run's recorded settings as "section.key" overrides.

    Secrets were never recorded: they come from the environment or config file
    as for any run. Keys this version does not know are skipped.
    """
    overrides: dict[str, Any] = {}
    for section, values in snapshot.items():
        if section not in SECTIONS or not isinstance(values, Mapping):
            continue
        known = {f.name for f in fields(SECTIONS[section])}
        for key, value in values.items():
            if key not in known or key in SECRET_KEYS:
                continue
            if isinstance(value, str) and "***" in value:
                continue  # redacted at record time
            overrides[f"{section}.{key}"] = value
    return overrides


def resume_settings(point: ResumePoint, cli_overrides: Mapping[str, Any], profile: str | None = None) -> Settings:
    """The settings the run had, except where the resume command says otherwise (e.g. --max-turns)."""
    return recorded_settings(point.settings, cli_overrides, profile)


def recorded_settings(
    snapshot: Mapping[str, Any], cli_overrides: Mapping[str, Any], profile: str | None = None
) -> Settings:
    """A run's recorded settings (for its resume or its re-run), with the command line's overrides on top."""
    recorded_profile = snapshot.get("profile")
    overrides = snapshot_overrides(snapshot)
    overrides.update({k: v for k, v in cli_overrides.items() if v is not None})
    return load_settings(
        profile=profile or (recorded_profile if isinstance(recorded_profile, str) else None), overrides=overrides
    )


@dataclass
class ResumedRun:
    agent: Agent
    state: RunState
    backend: Backend
    toolbox: ToolBox
    settings: Settings
    point: ResumePoint
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.toolbox.close()
        self.backend.close()


def prepare_resume(
    history: History,
    run_id: str,
    cli_overrides: Mapping[str, Any] | None = None,
    *,
    profile: str | None = None,
    workspace: Path | None = None,
) -> ResumedRun:
    """A ready agent and the state to pass to `agent.run(state)`.

    The run's recorded workspace is used unless `workspace` names another (it was moved).
    """
    point = history.load_resume(run_id)
    settings = resume_settings(point, cli_overrides or {}, profile)
    notes: list[str] = []
    own_workspace = settings.dirs.run_dir(point.run.run_id) / "workspace"
    if workspace is None and point.workspace and Path(point.workspace) != own_workspace.expanduser().resolve():
        recorded = Path(point.workspace)
        if recorded.is_dir():
            workspace = recorded
        else:  # never made again: a user's directory is theirs to create
            notes.append(f"the workspace {recorded} is gone; the resumed run uses an empty one of its own")
    elif workspace is None and not own_workspace.is_dir():
        notes.append("the run's workspace is gone; the resumed run starts with an empty one")
    missing = [p for p in point.attachments if not Path(p).exists()]
    if missing:
        notes.append(f"attachments no longer on disk: {', '.join(missing)}")
    if point.redo_calls:
        notes.append(f"{point.redo_calls} tool call(s) of turn {point.state.turn} did not finish and run again")
    dirs = run_dirs(settings, point.run.run_id, workspace)  # a refused workspace stops here, before the model loads
    backend = build_backend(settings, replay_start=point.replay_position)
    restored = restore_kv_checkpoint(backend, settings, point.run.run_id)
    if restored:
        notes.append(f"restored the model's cache of the interrupted run ({restored} tokens)")
    discard_kv_checkpoint(settings, point.run.run_id)  # used once; a later interruption writes a fresh one
    try:
        toolbox = build_toolbox(settings, lambda: backend)
    except BaseException:
        backend.close()
        raise
    attachments = tuple(Path(p) for p in point.attachments if Path(p).exists())
    agent = make_agent(settings, backend, toolbox, point.run.run_id, dirs, attachments)
    return ResumedRun(agent, point.state, backend, toolbox, settings, point, notes)
