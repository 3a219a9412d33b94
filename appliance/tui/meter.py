"""What the status bar says about a run, kept up to date from its events. Pure; no textual import.

Live and replayed runs go through the same `apply`. Times come from the
caller's clock (`now`, monotonic seconds) so tests and snapshots are exact;
a replayed run takes its times from the recorded events instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.agent.events import AgentEvent, RunFinished, RunStarted, TextDelta, TurnEnded, TurnStarted
from appliance.llm.base import approximate_tokens
from appliance.tui import format as fmt

# idle: nothing yet; starting: loading the model and tools; viewing: a past run replayed.
STATE_LABELS = {
    "idle": "ready",
    "starting": "starting",
    "running": "running",
    "cancelling": "cancelling",
    "answered": "answered",
    "no_answer": "no answer",
    "error": "error",
    "interrupted": "interrupted",
}


@dataclass
class RunMeter:
    profile: str = ""
    model: str = ""
    state: str = "idle"
    live: bool = True
    turn: int = 0
    max_turns: int = 0
    prompt_tokens: int = 0
    context_length: int = 0
    tokens_per_s: float | None = None
    elapsed_before: float = 0.0
    started: float | None = None
    final_elapsed: float | None = None
    summarizing: bool = False
    # The turn being streamed: when its first text arrived and roughly how many tokens so far.
    _stream_start: float | None = None
    _stream_tokens: int = 0

    def begin(self, *, live: bool, now: float) -> None:
        """A new run (or a replay, or a resume) starts being shown."""
        self.live = live
        self.state = "starting" if live else "running"
        self.turn = 0
        self.summarizing = False
        self.prompt_tokens = 0
        self.tokens_per_s = None
        self.elapsed_before = 0.0  # a resume sets it when its notes arrive
        self.started = now if live else None
        self.final_elapsed = None
        self._stream_start = None
        self._stream_tokens = 0

    def apply(self, event: AgentEvent, now: float) -> None:
        if isinstance(event, RunStarted):
            self.turn = max(self.turn, event.turn)
            self.state = "running"
            self._settings(event.settings, event.backend)
        elif isinstance(event, TurnStarted):
            # The summary turn is outside the budget: the step stays at the last tool turn.
            self.summarizing = event.kind == "summary"
            if not self.summarizing:
                self.turn = event.turn
            self.prompt_tokens = event.prompt_tokens
            self._stream_start = None
            self._stream_tokens = 0
        elif isinstance(event, TextDelta) and self.live:
            if self._stream_start is None:
                self._stream_start = now
            self._stream_tokens += approximate_tokens(event.text)
            spent = now - self._stream_start
            if spent >= 0.5:
                self.tokens_per_s = self._stream_tokens / spent
        elif isinstance(event, TurnEnded):
            self.prompt_tokens = event.prompt_tokens or self.prompt_tokens
            if event.elapsed_s > 0 and event.completion_tokens:
                self.tokens_per_s = event.completion_tokens / event.elapsed_s
        elif isinstance(event, RunFinished):
            self.state = event.status
            self.final_elapsed = event.elapsed_s
            self.turn = event.turns
            self.summarizing = False

    def _settings(self, settings: dict[str, Any], backend: dict[str, Any]) -> None:
        agent = settings.get("agent") if isinstance(settings, dict) else None
        if isinstance(agent, dict) and isinstance(agent.get("max_turns"), int):
            self.max_turns = agent["max_turns"]
        if isinstance(settings.get("profile"), str):
            self.profile = settings["profile"]
        if isinstance(backend.get("context_length"), int):
            self.context_length = backend["context_length"]
        model = backend.get("model")
        if isinstance(model, str) and model:
            self.model = model

    def elapsed(self, now: float) -> float | None:
        if self.final_elapsed is not None:
            return self.final_elapsed
        if self.started is None:
            return None
        return self.elapsed_before + now - self.started

    def parts(self, now: float) -> list[tuple[str, str]]:
        """(role, text) pieces of the status line, most important first; roles pick the style."""
        state = STATE_LABELS.get(self.state, self.state)
        parts: list[tuple[str, str]] = [(f"state-{self.state}", f"● {state}")]
        if self.profile:
            parts.append(("profile", self.profile))
        if self.model:
            parts.append(("model", fmt.clean(self.model)))
        if self.turn or self.max_turns:
            budget = f"/{self.max_turns}" if self.max_turns else ""
            parts.append(("step", f"step {self.turn}{budget}" + (" · final answer" if self.summarizing else "")))
        if self.prompt_tokens:
            window = self.context_length
            share = f" {100 * self.prompt_tokens / window:.0f}%" if window else ""
            size = fmt.count(window) if window else "?"
            parts.append(("context", f"ctx {fmt.count(self.prompt_tokens)}/{size}{share}"))
        if self.tokens_per_s is not None:
            rate = self.tokens_per_s
            parts.append(("speed", f"{rate:.1f} tok/s" if rate < 100 else f"{rate:,.0f} tok/s"))
        elapsed = self.elapsed(now)
        if elapsed is not None:
            parts.append(("clock", fmt.clock(elapsed)))
        return parts

    def text(self, now: float) -> str:
        return " │ ".join(text for _, text in self.parts(now))
