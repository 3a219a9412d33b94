"""Agent events carried from the run's thread to the UI in batches.

Per-token UI updates cost more than generating the tokens, so streamed text is
merged and handed over at most every `interval` seconds (50 ms). Any other event
(a tool call starting, a turn ending) goes out at once, after the text before it,
so order is kept and a tool's running indicator appears without delay. A small
flusher thread does the handing over, so the last words of a pause in the stream
arrive within `interval` instead of waiting for the next token. No textual import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from appliance.agent.events import AgentEvent, TextDelta

Post = Callable[[tuple[AgentEvent, ...]], None]


class EventBatcher:
    """`add` from the producing thread; `post` is called from the flusher thread with each batch."""

    def __init__(self, post: Post, interval: float = 0.05) -> None:
        self._post = post
        self.interval = interval
        self._cond = threading.Condition()
        self._events: list[AgentEvent] = []
        # Text of the trailing TextDelta run, kept as parts: joined once per batch, not once per token.
        self._text_turn: int | None = None
        self._text_parts: list[str] = []
        self._urgent = False
        self._closed = False
        self._last_post = 0.0
        self._thread = threading.Thread(target=self._run, name="event-batcher", daemon=True)
        self._thread.start()

    def add(self, event: AgentEvent) -> None:
        with self._cond:
            if isinstance(event, TextDelta):
                if self._text_turn is not None and self._text_turn != event.turn:
                    self._close_text()
                self._text_turn = event.turn
                self._text_parts.append(event.text)
                if len(self._text_parts) == 1 and not self._events:
                    self._cond.notify()  # the flusher times this batch; later tokens do not wake it
                return
            self._close_text()
            self._events.append(event)
            self._urgent = True
            self._cond.notify()

    def close(self) -> None:
        """Hand over what is left and stop the flusher (blocks until the last batch is posted)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _close_text(self) -> None:
        if self._text_parts and self._text_turn is not None:
            self._events.append(TextDelta(self._text_turn, "".join(self._text_parts)))
        self._text_parts = []
        self._text_turn = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    pending = bool(self._events or self._text_parts)
                    if self._closed or self._urgent:
                        break
                    if pending:
                        wait = self._last_post + self.interval - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                self._close_text()
                batch = tuple(self._events)
                self._events = []
                self._urgent = False
                done = self._closed
            if batch:
                self._last_post = time.monotonic()
                self._post(batch)
            if done:
                return
