"""Assemble a run from settings: backend, tool servers, directories, initial state.

The tool servers come from appliance.tools.registry and the run's directories
from appliance.tools.rundirs (both re-exported here: a run is built from
settings -> build_toolbox -> prepare_run).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from appliance.agent.attempts import TaskAttempts
from appliance.agent.followup import FollowUp
from appliance.agent.loop import Agent
from appliance.agent.state import RunState, new_state
from appliance.config import Settings
from appliance.llm.base import Backend
from appliance.protocol.prompt import render_system_prompt, render_task_message
from appliance.tools.archive import RunWeb
from appliance.tools.attachments import inline_attachments
from appliance.tools.base import ToolBox
from appliance.tools.registry import TOOL_SERVERS, BackendProvider, ServerFactory, build_toolbox, load_server_factory
from appliance.tools.rundirs import RunDirs, call_context, check_attachments, new_run_id, run_dirs, run_web

__all__ = [
    "TOOL_SERVERS",
    "BackendProvider",
    "RunDirs",
    "ServerFactory",
    "build_toolbox",
    "check_attachments",
    "load_server_factory",
    "make_agent",
    "new_run_id",
    "prepare_run",
    "run_dirs",
]


def prepare_run(
    settings: Settings,
    task: str,
    *,
    backend: Backend,
    toolbox: ToolBox,
    run_id: str | None = None,
    workspace: Path | None = None,
    attachments: Sequence[Path] = (),
    today: dt.date | None = None,
    reuse_runs: Sequence[str] = (),
    attempts: TaskAttempts | None = None,
    followup: FollowUp | None = None,
) -> tuple[Agent, RunState]:
    """A ready-to-run agent and the initial state of a new run.

    `reuse_runs` (a re-run's original) answer searches and fetches they already made from their archives.
    With `attempts`, the run is its current attempt: the task is the enhanced task (the
    original plus every failure summary so far), as the reference passes it to the task
    message and the summary prompt alike, and the run ends by the attempts' decision table.
    With `followup`, the run starts from its parent's conversation or report (agent/followup.py).
    """
    run_id = run_id or new_run_id()
    if attempts is not None:
        task = attempts.task_text()
    attached = check_attachments(attachments)
    web = run_web(settings, run_id, reuse_runs)  # a bad archive fails here, before any directory exists
    dirs = run_dirs(settings, run_id, workspace)
    system_prompt = (followup.system_prompt if followup is not None else "") or render_system_prompt(
        today or dt.date.today(), toolbox.server_specs()
    )
    # Attached files are inlined as the reference does, within a share of the context window.
    budget = settings.agent.attachment_tokens or backend.context_length // 4
    task_message = render_task_message(
        task, inline_attachments(attached, token_budget=budget, count_tokens=backend.count_tokens)
    )
    context = followup.context if followup is not None else ()
    state = new_state(run_id, task, task_message, system_prompt, tuple(str(p) for p in attached), context)
    if followup is not None:
        state.parent_run, state.context_mode = followup.parent_run, followup.mode
    if attempts is not None:
        state.attempt, state.attempts_total = attempts.number, attempts.total
    return make_agent(settings, backend, toolbox, run_id, dirs, attached, web), state


def make_agent(
    settings: Settings,
    backend: Backend,
    toolbox: ToolBox,
    run_id: str,
    dirs: RunDirs,
    attachments: tuple[Path, ...],
    web: RunWeb | None = None,
) -> Agent:
    """The agent of a run; `web` defaults to the run's own (its archive reused, as for a resume)."""
    ctx = call_context(settings, run_id, dirs, attachments, web or run_web(settings, run_id))
    return Agent(
        backend,
        toolbox,
        settings.agent,
        ctx,
        max_tokens=settings.model.max_tokens,
        settings_snapshot=settings.snapshot(),
    )


def kv_checkpoint_path(settings: Settings, run_id: str) -> Path:
    return settings.dirs.run_dir(run_id) / "kv-cache.bin"


def save_kv_checkpoint(backend: Backend, settings: Settings, run_id: str) -> bool:
    """Keep an interrupted run's KV cache (in-process backends only), within [model] kv_checkpoint_mb."""
    save = getattr(backend, "save_checkpoint", None)
    budget = settings.model.kv_checkpoint_mb * 1024 * 1024
    if save is None or budget <= 0:
        return False
    return bool(save(kv_checkpoint_path(settings, run_id), budget))


def restore_kv_checkpoint(backend: Backend, settings: Settings, run_id: str) -> int:
    """Load a run's KV checkpoint if there is one for this model; returns the tokens restored."""
    load = getattr(backend, "load_checkpoint", None)
    path = kv_checkpoint_path(settings, run_id)
    if load is None or not path.is_file():
        return 0
    return int(load(path))


def discard_kv_checkpoint(settings: Settings, run_id: str) -> None:
    path = kv_checkpoint_path(settings, run_id)
    for stale in (path, path.with_name(path.name + ".json")):
        stale.unlink(missing_ok=True)
