"""`python -m tests.store_cli ARGS`: the real `appliance` CLI with the store test tool server registered.

STORE_TEST_KILL_AFTER=N makes the process SIGKILL itself right after the N-th
event of the run has gone through every subscriber (the store has committed it):
a crash between two steps, at an exact point.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from appliance import cli, session
from appliance.agent import runtime

runtime.TOOL_SERVERS["test-tools"] = "tests.storetools:create_server"

_kill_after = int(os.environ.get("STORE_TEST_KILL_AFTER", "0") or 0)
_original_drive = session.drive_events


def _drive(events: Iterable[Any], subscribers: Sequence[Callable[[Any], None]], cancel: Callable[[], None]) -> Any:
    seen = 0

    def killer(event: Any) -> None:
        nonlocal seen
        seen += 1
        if seen >= _kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    return _original_drive(events, [*subscribers, killer] if _kill_after else subscribers, cancel)


session.drive_events = _drive  # type: ignore[assignment]

if __name__ == "__main__":
    cli.main()
