"""What a resumed run starts from: the run's own settings and workspace, and what changed since.

The session (appliance.session.resume_session) assembles the run from these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from appliance.config import SECTIONS, Settings, load_settings
from appliance.policy import redacted_paths
from appliance.store.records import ResumePoint


def snapshot_overrides(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The run's recorded settings as "section.key" overrides.

    Secrets were never recorded: the values the snapshot says it hid come from
    the environment or config file as for any run. Keys this version does not
    know are skipped.
    """
    hidden = redacted_paths(snapshot)
    overrides: dict[str, Any] = {}
    for section, values in snapshot.items():
        if section not in SECTIONS or not isinstance(values, Mapping):
            continue
        known = {f.name for f in fields(SECTIONS[section])}
        for key, value in values.items():
            if key in known and f"{section}.{key}" not in hidden:
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


def resume_workspace(
    run_id: str, recorded: str | None, settings: Settings, workspace: Path | None
) -> tuple[Path | None, list[str]]:
    """(the workspace a resume uses, what the user should know): the recorded one unless another is named.

    A workspace the user named that is gone is not made again (a user's directory is theirs to create).
    """
    notes: list[str] = []
    own_workspace = settings.dirs.run_dir(run_id) / "workspace"
    if workspace is None and recorded and Path(recorded) != own_workspace.expanduser().resolve():
        if Path(recorded).is_dir():
            workspace = Path(recorded)
        else:  # never made again: a user's directory is theirs to create
            notes.append(f"the workspace {recorded} is gone; the resumed run uses an empty one of its own")
    elif workspace is None and not own_workspace.is_dir():
        notes.append("the run's workspace is gone; the resumed run starts with an empty one")
    return workspace, notes


def resume_notes(point: ResumePoint, settings: Settings, workspace: Path | None) -> tuple[Path | None, list[str]]:
    """(the workspace to use, what the user should know): the workspace's, the attachments', the redone calls'."""
    workspace, notes = resume_workspace(point.run.run_id, point.workspace, settings, workspace)
    missing = [p for p in point.attachments if not Path(p).exists()]
    if missing:
        notes.append(f"attachments no longer on disk: {', '.join(missing)}")
    if point.redo_calls:
        notes.append(f"{point.redo_calls} tool call(s) of turn {point.state.turn} did not finish and run again")
    return workspace, notes
