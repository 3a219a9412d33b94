"""The messages a run's thread posts to the UI: small, typed, and the only way across the thread boundary."""

from __future__ import annotations

from textual.message import Message

from appliance.agent.events import AgentEvent, RunFinished
from appliance.store.sources import Source


class RunEvents(Message):
    """A batch of the loop's events, in order; streamed text already merged (see batching.py)."""

    def __init__(self, events: tuple[AgentEvent, ...]) -> None:
        super().__init__()
        self.events = events


class RunNotes(Message):
    """Before a resumed run continues: what to know (a workspace gone, calls that run again), time already spent."""

    def __init__(self, notes: list[str], elapsed_before: float) -> None:
        super().__init__()
        self.notes = notes
        self.elapsed_before = elapsed_before


class RunFailed(Message):
    """The run could not start or could not be recorded: the message and the fix, shown in place."""

    def __init__(self, message: str, fix: str = "", component: str = "") -> None:
        super().__init__()
        self.message = message
        self.fix = fix
        self.component = component


class RunClosed(Message):
    """The run (or the replay of a past one) is over and its resources are released.

    `run_id` is None when no run started (it failed while being prepared). `resume_blocker` says
    why the run cannot be resumed now (appliance.session.resume_blocker); None: it can.
    """

    def __init__(
        self,
        run_id: str | None,
        finished: RunFinished | None,
        status: str,
        sources: list[Source],
        replay: bool,
        resume_blocker: str | None = None,
    ) -> None:
        super().__init__()
        self.resume_blocker = resume_blocker
        self.run_id = run_id
        self.finished = finished
        self.status = status
        self.sources = sources
        self.replay = replay
