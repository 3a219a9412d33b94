"""One database, several processes: two runs recording and a reader, without "database is locked"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.store import open_history
from tests.conftest import REPO_ROOT, cli_env
from tests.store_support import call, env_for, run_store_cli, store_cli, write_script

pytestmark = pytest.mark.slow

SCRIPT = [
    call("google_search", q="one"),
    call("echo", text="two") + "\n" + call("echo", text="three"),
    call("google_search", q="four"),
    "done",
    "\\boxed{4}",
]


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store_writer", *args],
        cwd=REPO_ROOT,
        env=cli_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_two_writers_and_a_reader_share_one_database(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    script = write_script(tmp_path / "s.jsonl", SCRIPT)
    count = 25
    procs = [spawn("write", str(db), name, str(count), str(script)) for name in ("a", "b")]
    procs.append(spawn("read", str(db), "4"))
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err
    assert int(outputs[2][0]) > 0  # the reader did read while the writers wrote
    with open_history(db) as history:
        runs = history.list_runs(limit=0)
        assert len(runs) == 2 * count
        assert {r.status for r in runs} == {"answered"}
        for run in runs:
            record = history.get_run(run.run_id)
            assert run.tool_calls == 4 and run.turns == 4
            assert [len(s.calls) for s in record.kept_steps] == [1, 2, 1, 0, 0]
            events = history.db.conn.execute(
                "SELECT count(*), count(DISTINCT seq) FROM events WHERE run_id = ?", (run.run_id,)
            ).fetchone()
            assert events[0] == events[1] > 10


def test_a_headless_run_while_history_is_read(appliance_home: Path, tmp_path: Path) -> None:
    script = write_script(tmp_path / "s.jsonl", [{"content": t, "delay": 0.3} for t in SCRIPT])
    env = env_for(appliance_home)
    run = store_cli(["--task", "concurrent", "--replay", str(script), "--json"], env)
    listings = 0
    while run.poll() is None:
        listing = subprocess.run(
            [sys.executable, "-m", "appliance", "history", "list", "--json"],
            cwd=REPO_ROOT,
            env=cli_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0, listing.stderr
        listings += 1
    _out, err = run.communicate()
    assert run.returncode == 0, err
    assert listings >= 2
    second = run_store_cli(["--task", "again", "--replay", str(script), "--json"], env)
    assert second.returncode == 0, second.stderr
    with open_history(appliance_home / "history.db") as history:
        assert [r.status for r in history.list_runs()] == ["answered", "answered"]
