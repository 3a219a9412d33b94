"""Helpers for the store tests: scripted runs in process, crash simulation, and a comparable view of the database."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.agent.events import AgentEvent, RunFinished, TextDelta
from appliance.agent.runtime import build_toolbox, prepare_run
from appliance.config import Settings, load_settings
from appliance.llm.factory import build_backend
from appliance.session import Backends, resume_session
from appliance.store import History
from tests.conftest import REPO_ROOT, cli_env, tool_call

TOOLS = "test-tools"


def call(tool: str, thinking: str = "", **arguments: Any) -> str:
    return tool_call(TOOLS, tool, arguments, thinking)


def write_script(path: Path, turns: Sequence[str | dict[str, Any]]) -> Path:
    lines = [json.dumps(t if isinstance(t, dict) else {"content": t}) for t in turns]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def settings_for(script: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model.backend": "replay",
        "model.replay": str(script),
        "tools.enabled": [TOOLS],
        "agent.keep_last": 2,
    }
    values.update(overrides)
    return load_settings(overrides=values)


def run_in_process(
    history: History,
    settings: Settings,
    task: str,
    run_id: str,
    *,
    workspace: Path | None = None,
    stop_after: int | None = None,
) -> list[AgentEvent]:
    """Run a task with the recorder subscribed. With `stop_after`, abandon the run after that many events.

    Abandoning the generator is what a killed process looks like to the
    database: nothing after the last committed event is written.
    """
    if workspace is not None:
        workspace.mkdir(parents=True, exist_ok=True)  # a named workspace must exist: the appliance never makes one
    backend = build_backend(settings)
    toolbox = build_toolbox(settings, lambda: backend)
    agent, state = prepare_run(settings, task, backend=backend, toolbox=toolbox, run_id=run_id, workspace=workspace)
    return _drive(history, agent.run(state), stop_after, lambda: (toolbox.close(), backend.close()))


def resume_in_process(
    history: History, run_id: str, *, stop_after: int | None = None, overrides: dict[str, Any] | None = None
) -> list[AgentEvent]:
    backends = Backends()
    session = resume_session(history, run_id, overrides or {}, backends=backends)
    return _drive(history, session.agent.run(session.state), stop_after, lambda: (session.close(), backends.close()))


def _drive(history: History, events: Any, stop_after: int | None, close: Any) -> list[AgentEvent]:
    recorder = history.recorder()
    seen: list[AgentEvent] = []
    try:
        for event in events:
            recorder(event)
            seen.append(event)
            if stop_after is not None and len(seen) >= stop_after:
                events.close()
                break
    finally:
        close()
    return seen


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def simulate_dead_owner(history: History, run_id: str) -> None:
    """The in-process stand-in for a killed process: the run's recorded owner no longer exists."""
    with history.lock:
        history.db.conn.execute("UPDATE runs SET pid = ?, process_start = NULL WHERE run_id = ?", (dead_pid(), run_id))
        history.db.conn.commit()


def comparable(history: History, run_id: str) -> dict[str, Any]:
    """Everything a run recorded that must not depend on where it was interrupted."""
    conn = history.db.conn
    messages = conn.execute(
        "SELECT kind, turn, role, content, state, rollback_reason, tokens, prompt_tokens, omitted, dropped, "
        "(SELECT count(*) FROM tool_calls c WHERE c.reply_id = m.id) FROM messages m WHERE run_id = ? ORDER BY seq",
        (run_id,),
    ).fetchall()
    calls = conn.execute(
        "SELECT c.turn, c.idx, c.server, c.tool, c.arguments, c.result, c.status, c.truncated, m.seq "
        "FROM tool_calls c JOIN messages m ON m.id = c.reply_id WHERE c.run_id = ? ORDER BY m.seq, c.idx",
        (run_id,),
    ).fetchall()
    # seq values differ after a crash (discarded rows leave gaps): compare order, not numbers.
    order = {
        seq: i
        for i, (seq,) in enumerate(conn.execute("SELECT seq FROM messages WHERE run_id = ? ORDER BY seq", (run_id,)))
    }
    calls = [(*c[:-1], order[c[-1]]) for c in calls]
    events = [
        t
        for (t,) in conn.execute("SELECT type FROM events WHERE run_id = ? ORDER BY seq", (run_id,))
        if t not in ("RunStarted", "RunFinished")
    ]
    run = conn.execute(
        "SELECT status, answer, final_text, turns, tool_calls, prompt_tokens, completion_tokens, exit_code "
        "FROM runs WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    return {"messages": messages, "calls": calls, "events": events, "run": run}


def finished(events: Sequence[AgentEvent]) -> RunFinished:
    last = events[-1]
    assert isinstance(last, RunFinished), last
    return last


def kill_points(events: Sequence[AgentEvent]) -> list[int]:
    """After every event but the last, except inside a streamed reply where one point (mid-generation) is enough."""
    points = []
    for i, event in enumerate(events[:-1], start=1):
        if isinstance(event, TextDelta) and isinstance(events[i - 2], TextDelta):
            continue
        points.append(i)
    return points


def store_cli(args: Sequence[str], env: dict[str, str], **popen: Any) -> subprocess.Popen[str]:
    """`python -m tests.store_cli ARGS` (the real CLI with the test tool server) in a subprocess."""
    full_env = cli_env(env)
    full_env.setdefault("APPLIANCE_TOOLS_ENABLED", TOOLS)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store_cli", *args],
        cwd=REPO_ROOT,
        env=full_env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def run_store_cli(args: Sequence[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = store_cli(args, env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {"APPLIANCE_HOME": str(home)}
    env.update(extra)
    return env
