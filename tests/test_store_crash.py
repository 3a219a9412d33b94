"""Real processes killed with SIGKILL (and one Ctrl-C), then `appliance resume` finishes the run.

Each headless run is `python -m tests.store_cli`: the real CLI with the store
test tool server registered. The finished run must give the same answer as an
uninterrupted one and hold every step exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from appliance.agent import runtime
from appliance.agent.events import AgentEvent, ObservationAdded, SummaryStarted, ToolCallFinished, TurnEnded
from appliance.store import History, open_history
from tests.store_support import (
    call,
    comparable,
    env_for,
    run_in_process,
    run_store_cli,
    settings_for,
    store_cli,
    write_script,
)

pytestmark = pytest.mark.slow

TASK = "Where is the note, and what does it say?"


def script_turns(delay: float = 0.0) -> list[dict[str, object]]:
    turns: list[dict[str, object]] = [
        {"content": call("write_file", path="note.txt", content="Paris")},
        {"content": call("wait", seconds=60, marker="waiting", release="go")},
        {"content": call("google_search", q="where is the note")},
        {"content": call("read_file", path="note.txt"), "delay": delay},
        {"content": "<think>The note says Paris.</think> Enough."},
        {"content": "The note says \\boxed{Paris}."},
    ]
    return turns


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


@pytest.fixture
def setup(appliance_home: Path, tmp_path: Path) -> dict[str, object]:
    script = write_script(tmp_path / "script.jsonl", script_turns())
    db = appliance_home / "history.db"
    env = env_for(appliance_home)
    # The uninterrupted reference, its release file in place so the wait returns at once.
    ws = tmp_path / "ws-ref"
    ws.mkdir()
    (ws / "go").write_text("")
    ref = run_store_cli(["--task", TASK, "--replay", str(script), "--workspace", str(ws), "--json"], env)
    assert ref.returncode == 0, ref.stderr
    ref_id = json.loads(ref.stdout)["run_id"]
    return {"script": script, "db": db, "env": env, "ref": ref_id, "tmp": tmp_path}


def start(setup: dict[str, object], name: str, extra_env: dict[str, str] | None = None, script: Path | None = None):  # type: ignore[no-untyped-def]
    ws = Path(str(setup["tmp"])) / f"ws-{name}"
    ws.mkdir(exist_ok=True)  # a --workspace must exist: the appliance never makes one
    env = dict(setup["env"])  # type: ignore[call-overload]
    env.update(extra_env or {})
    args = ["--task", TASK, "--replay", str(script or setup["script"]), "--workspace", str(ws), "--json"]
    return store_cli(args, env), ws


def only_run_id(history: History, exclude: set[str]) -> str:
    ids = [r.run_id for r in history.list_runs(limit=0) if r.run_id not in exclude]
    assert len(ids) == 1, ids
    return ids[0]


def resume(setup: dict[str, object], run_id: str, extra_env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    env = dict(setup["env"])  # type: ignore[call-overload]
    env.update(extra_env or {})
    return run_store_cli(["resume", run_id, "--json"], env)


def assert_same_as_reference(setup: dict[str, object], run_id: str) -> None:
    with open_history(Path(str(setup["db"]))) as history:
        got, expected = comparable(history, run_id), comparable(history, str(setup["ref"]))
        assert got == expected
        run = history.get_run(run_id)
        assert run.answer == "Paris" and run.status == "answered"
        # Every tool call of the run exactly once: (turn, index) pairs of kept steps are unique.
        pairs = [(c.turn, c.index) for s in run.steps for c in s.calls]
        assert len(pairs) == len(set(pairs)) == 4


def test_sigkill_in_the_middle_of_a_tool_call(setup: dict[str, object]) -> None:
    proc, ws = start(setup, "tool")
    try:
        wait_for(lambda: (ws / "waiting").exists())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with open_history(Path(str(setup["db"]))) as history:
        run_id = only_run_id(history, {str(setup["ref"])})
        run = history.get_run(run_id)
        assert run.status == "interrupted" and "ended before the run finished" in (run.error or "")
        running = [c for s in run.steps for c in s.calls if c.status == "running"]
        assert [c.tool for c in running] == ["wait"]
        assert run.workspace == str(ws.resolve())
    (ws / "go").write_text("")  # let the call that runs again finish
    done = resume(setup, run_id)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answer"] == "Paris"
    assert "1 tool call(s) of turn 2 did not finish and run again" in done.stderr
    assert_same_as_reference(setup, run_id)


def test_sigkill_while_the_model_generates(setup: dict[str, object]) -> None:
    slow = write_script(Path(str(setup["tmp"])) / "slow.jsonl", script_turns(delay=30.0))
    proc, ws = start(setup, "gen", script=slow)
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "go").write_text("")
    db = Path(str(setup["db"]))
    try:

        def generating() -> bool:
            with open_history(db) as history:
                runs = [r for r in history.list_runs() if r.run_id != setup["ref"]]
                return bool(runs) and runs[0].tool_calls == 3  # the third turn's results are in: turn 4 streams

        wait_for(generating)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with open_history(db) as history:
        run_id = only_run_id(history, {str(setup["ref"])})
        assert history.load_resume(run_id).replay_position == 3
    # Resume with the fast script: the same lines, no delay.
    done = resume(setup, run_id, {"APPLIANCE_MODEL_REPLAY": str(setup["script"])})
    assert done.returncode == 0, done.stderr
    assert_same_as_reference(setup, run_id)


def _events_of_reference(setup: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> list[AgentEvent]:
    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")
    tmp = Path(str(setup["tmp"]))
    ws = tmp / "ws-count"
    ws.mkdir()
    (ws / "go").write_text("")
    with open_history(tmp / "count.db") as history:
        settings = settings_for(Path(str(setup["script"])), **{"agent.keep_last": 5})
        return run_in_process(history, settings, TASK, "count", workspace=ws)


def test_sigkill_at_several_points_then_resume(setup: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    events = _events_of_reference(setup, monkeypatch)
    first = {t: next(i for i, e in enumerate(events, 1) if isinstance(e, t)) for t in (TurnEnded, ObservationAdded)}
    points = {
        "after the first reply": first[TurnEnded],
        "after a tool result": next(i for i, e in enumerate(events, 1) if isinstance(e, ToolCallFinished)),
        "after an observation": first[ObservationAdded],
        "after the summary prompt": next(i for i, e in enumerate(events, 1) if isinstance(e, SummaryStarted)),
        "in the summary reply": len(events) - 2,
    }
    assert len(set(points.values())) == len(points)
    seen = {str(setup["ref"])}
    for label, point in points.items():
        proc, ws = start(setup, f"p{point}", {"STORE_TEST_KILL_AFTER": str(point)})
        ws.mkdir(parents=True, exist_ok=True)
        (ws / "go").write_text("")
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, label
        with open_history(Path(str(setup["db"]))) as history:
            run_id = only_run_id(history, seen)
        seen.add(run_id)
        done = resume(setup, run_id)
        assert done.returncode == 0, (label, done.stderr)
        assert json.loads(done.stdout)["answer"] == "Paris", label
        assert_same_as_reference(setup, run_id)


def test_killed_twice_and_resumed_twice(setup: dict[str, object]) -> None:
    proc, ws = start(setup, "twice")
    try:
        wait_for(lambda: (ws / "waiting").exists())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    with open_history(Path(str(setup["db"]))) as history:
        run_id = only_run_id(history, {str(setup["ref"])})
    # Killed again in the resumed process, in the middle of the same call.
    (ws / "waiting").unlink()
    again = store_cli(["resume", run_id, "--json"], dict(setup["env"]))  # type: ignore[call-overload]
    try:
        wait_for(lambda: (ws / "waiting").exists())
        os.kill(again.pid, signal.SIGKILL)
    finally:
        again.wait(timeout=30)
    (ws / "go").write_text("")
    done = resume(setup, run_id)
    assert done.returncode == 0, done.stderr
    assert_same_as_reference(setup, run_id)
    with open_history(Path(str(setup["db"]))) as history:
        assert history.get_run(run_id).resumes == 2


def test_ctrl_c_during_a_tool_call_then_resume(setup: dict[str, object]) -> None:
    proc, ws = start(setup, "sigint")
    try:
        wait_for(lambda: (ws / "waiting").exists())
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert json.loads(out)["status"] == "interrupted"
    with open_history(Path(str(setup["db"]))) as history:
        run_id = only_run_id(history, {str(setup["ref"])})
        assert history.get_run(run_id).status == "interrupted"
    (ws / "go").write_text("")
    done = resume(setup, run_id)
    assert done.returncode == 0, done.stderr
    assert_same_as_reference(setup, run_id)


def test_a_finished_run_does_not_resume(setup: dict[str, object]) -> None:
    done = resume(setup, str(setup["ref"]))
    assert done.returncode == 2  # a usage error: nothing is unavailable
    assert "already finished" in done.stderr
    assert json.loads(done.stdout)["status"] == "error"
    missing = resume(setup, "nope")
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr
