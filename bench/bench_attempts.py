"""Tool calls a task completes within one window size, attempts on (the default, 5) versus off.

The reference survives a small window by starting a task again: when the context fills, the
attempt writes a failure-experience summary and the next attempt starts from the task plus the
summaries (agent/attempts.py). This bench drives one task through the real run session
(appliance.session.start_session: the loop, the decision table, the recorder, a real SQLite
history) on the tiny GGUF in llama.cpp with a 16,384-token window, twice: `[agent] attempts = 5`
and `attempts = 0`. The model's replies are scripted, because random weights write no tool
calls: every prompt is evaluated by llama.cpp for real (its prefix cache decides what is
evaluated), then the scripted text stands in for what the model would have generated. Each
turn is a ~470-token reply (a think text and one call of the test tool server's `repeat` tool)
whose result is ~300 tokens; K=5, so the window fills after a few dozen turns. The failure summary
and the final summary are scripted too (no \\boxed{}: the task is never solved, so every
attempt runs until its window is full).

Reported: tool calls completed per task in each mode and their ratio (the issue's goal: at
least 5x), and per attempt the prompt tokens llama.cpp evaluated and the largest prompt.
Scripted replies are not in the KV cache when the next turn comes (they were not generated),
so each turn evaluates its previous reply as prompt; both modes pay this alike.

    python bench/bench_attempts.py [--threads N] [--context 16384] [--attempts 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.agent import runtime
from appliance.agent.events import AgentEvent, RunFinished
from appliance.config import Settings, load_settings
from appliance.llm.base import Backend, ChatMessage, Completion, Purpose, StreamEvent, TextChunk
from appliance.llm.llamacpp import LlamaCppBackend, clear_model_cache
from appliance.session import Backends, start_session
from appliance.store import open_history
from tests.store_support import TOOLS, call
from tests.tinygguf import write_tiny_gguf

TASK = "Which of the forty archived reports first names the harbour's lighthouse keeper?"
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu")


def filler(words: int, seed: int) -> str:
    """Deterministic, non-repeating text (the reference's repetition check must not fire on it)."""
    out, i = [], seed
    for _ in range(words):
        out.append(f"{WORDS[i % len(WORDS)]}{i % 97}")
        i = (i * 31 + 7) % 10007
    return " ".join(out)


class ScriptedLlama(LlamaCppBackend):
    """llama.cpp evaluates every prompt; the reply is the script's (random weights write no tool calls)."""

    def __init__(self, *args: Any, summary_words: int = 40, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.summary_words = summary_words
        self.calls = 0
        self.evaluated = self.prompted = self.largest = 0

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        purpose: Purpose = "turn",
        cancel: threading.Event | None = None,
    ) -> Iterator[StreamEvent]:
        evaluated = next(
            e for e in super().stream_chat(messages, max_tokens=1, purpose=purpose, cancel=cancel)
            if isinstance(e, Completion)
        )  # fmt: skip
        self.calls += 1
        self.evaluated += evaluated.evaluated_tokens
        self.prompted += evaluated.prompt_tokens
        self.largest = max(self.largest, evaluated.prompt_tokens)
        if messages[-1].role == "assistant":  # continuing the failure summary's assistant prefix
            happened = "Failure type: context_full\nWhat happened: read archived reports one by one.\n"
            text = happened + filler(self.summary_words, 7)
        elif purpose == "summary":
            text = "The reports read so far do not name the keeper."
        else:
            thinking = f"<think>{filler(50, self.calls)}</think>"
            text = call("repeat", thinking, text=f"report {self.calls} line ", times=25)
        yield TextChunk(text)
        yield Completion(text, "stop", evaluated.prompt_tokens, self.count_tokens(text), evaluated.evaluated_tokens)


class OneBackend(Backends):
    """Every run of the session uses the scripted model."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def acquire(self, settings: Settings, *, replay_start: int = 0) -> tuple[Backend, Any]:
        return self._backend, lambda: None


@dataclass(frozen=True)
class Attempt:
    number: int
    status: str
    tool_calls: int
    evaluated: int  # prompt tokens llama.cpp evaluated in this attempt (the rest came from its cache)
    prompted: int  # prompt tokens sent in this attempt
    largest_prompt: int
    summary: bool  # it left a failure summary for the next attempt
    error: str | None = None


def run_task(
    model: Path, home: Path, *, attempts: int, context: int, threads: int, summary_words: int
) -> tuple[list[Attempt], float]:
    """One task through the run session; each attempt's figures and the wall time."""
    clear_model_cache()
    backend = ScriptedLlama(
        model, context_length=context, n_batch=2048, n_threads=threads, temperature=0.0, seed=1,
        summary_words=summary_words,
    )  # fmt: skip
    settings = load_settings(
        environ={"APPLIANCE_HOME": str(home)},
        overrides={
            "model.backend": "llamacpp",
            "model.path": str(model),
            "model.context_length": context,
            "model.max_tokens": 512,
            "tools.enabled": [TOOLS],
            "agent.keep_last": 5,
            "agent.attempts": attempts,
        },
    )
    measured: list[Attempt] = []
    counted = (0, 0)

    def watch(event: AgentEvent) -> None:
        nonlocal counted
        if isinstance(event, RunFinished):
            measured.append(
                Attempt(
                    event.attempt,
                    event.status,
                    event.tool_calls,
                    backend.evaluated - counted[0],
                    backend.prompted - counted[1],
                    backend.largest,
                    event.failure_summary is not None,
                    event.error,
                )
            )
            counted, backend.largest = (backend.evaluated, backend.prompted), 0

    started = time.perf_counter()
    with (
        open_history(home / f"history-{attempts}.db") as history,
        OneBackend(backend) as backends,
        start_session(history, settings, TASK, backends=backends) as session,
    ):
        session.drive(watch)
    seconds = time.perf_counter() - started
    backend.close()
    return measured, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=16384, help="the window (n_ctx)")
    parser.add_argument("--attempts", type=int, default=5, help="[agent] attempts of the 'on' mode")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (1 on a busy shared machine)")
    parser.add_argument("--summary-words", type=int, default=40, help="filler words in each failure summary")
    args = parser.parse_args()
    runtime.TOOL_SERVERS[TOOLS] = "tests.storetools:create_server"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model = write_tiny_gguf(home / "tiny.gguf", context_length=args.context)
        common = {"context": args.context, "threads": args.threads, "summary_words": args.summary_words}
        on, on_s = run_task(model, home, attempts=args.attempts, **common)
        off, off_s = run_task(model, home, attempts=0, **common)
    print(f"one task, tiny GGUF on llama.cpp, n_ctx={args.context}, K=5, ~470-token replies, ~300-token results, "
          f"failure summaries of {args.summary_words} filler words + 2 lines")  # fmt: skip
    print(f"{'mode':<14}{'attempt':>8}{'ending':>12}{'tool calls':>12}{'evaluated':>11}{'prompted':>11}"
          f"{'largest':>9}{'summary':>9}")  # fmt: skip
    for label, rows in ((f"attempts {args.attempts}", on), ("attempts 0", off)):
        for a in rows:
            print(f"{label:<14}{a.number:>8}{a.status:>12}{a.tool_calls:>12,}{a.evaluated:>11,}{a.prompted:>11,}"
                  f"{a.largest_prompt:>9,}{'yes' if a.summary else 'no':>9}")  # fmt: skip
    for a in (*on, *off):
        if a.error:
            print(f"attempt {a.number}: {a.error}")
    on_calls, off_calls = sum(a.tool_calls for a in on), sum(a.tool_calls for a in off)
    on_eval, off_eval = sum(a.evaluated for a in on), sum(a.evaluated for a in off)
    print(f"tool calls per task: attempts on {on_calls:,}, off {off_calls:,}: "
          f"{on_calls / max(1, off_calls):.2f}x with attempts (goal >= 5x)")  # fmt: skip
    print(f"prompt tokens evaluated per attempt: on {on_eval / len(on):,.0f} (mean of {len(on)}), "
          f"off {off_eval / len(off):,.0f}; per tool call: on {on_eval / max(1, on_calls):,.0f}, "
          f"off {off_eval / max(1, off_calls):,.0f}")  # fmt: skip
    print(f"wall time: on {on_s:.1f}s, off {off_s:.1f}s ({on_s / max(off_s, 1e-9):.2f}x)")


if __name__ == "__main__":
    main()
