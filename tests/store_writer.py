"""A separate process that records runs into, or reads from, a shared history (concurrency tests).

python -m tests.store_writer write DB PREFIX COUNT SCRIPT
python -m tests.store_writer read DB SECONDS
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from appliance.agent.runtime import prepare_run
from appliance.config import load_settings
from appliance.llm.replay import ReplayBackend, load_replay
from appliance.store import open_history
from appliance.tools.base import ToolBox
from tests.storetools import StoreTestTools


def write(db: Path, prefix: str, count: int, script: Path) -> None:
    settings = load_settings(overrides={"tools.enabled": [], "agent.keep_last": 2})
    turns = load_replay(script)
    with open_history(db) as history:
        for i in range(count):
            backend = ReplayBackend(turns)
            toolbox = ToolBox([StoreTestTools()])
            agent, state = prepare_run(
                settings, f"task {prefix} {i}", backend=backend, toolbox=toolbox, run_id=f"{prefix}-{i:03d}"
            )
            recorder = history.recorder()
            for event in agent.run(state):
                recorder(event)
            toolbox.close()


def read(db: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    reads = 0
    with open_history(db) as history:
        while time.monotonic() < deadline:
            for run in history.list_runs(limit=10):
                history.get_run(run.run_id)
            history.search("task")
            reads += 1
    print(reads)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
    else:
        read(Path(sys.argv[2]), float(sys.argv[3]))
