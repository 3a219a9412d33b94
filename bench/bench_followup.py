"""Time to the first streamed token of a follow-up question against a fresh run of the same question.

On the tiny random GGUF (tests/tinygguf.py), through the run session every face
uses. Each repeat first runs a parent task (its reply forced long by a literal
grammar, so its conversation is a few thousand tokens), then times, side by
side in one process:

- fresh: a new run of the question (the model loaded and warm, its cache holding
  the parent's conversation, as in a TUI sitting: the system prompt is reused);
- follow-up: `appliance ask`'s session in the same process, which continues the
  parent's conversation (its KV prefix reused: only the question is evaluated);
- fresh, cold and follow-up, cold: the same on a freshly loaded model (what
  `appliance --task` and `appliance ask` pay in a new process: the follow-up
  evaluates the whole conversation).

The time runs from asking for the session to the first TextDelta (opening the
session included: the parent is read from the history and its conversation
counted). Also printed: the first turn's prompt and evaluated tokens.

    python bench/bench_followup.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.agent.events import AgentEvent, TextDelta, TurnEnded
from appliance.config import load_settings
from appliance.llm.llamacpp import clear_model_cache
from appliance.session import Backends, RunSession, followup_session, start_session
from appliance.store import History, open_history
from tests.tinygguf import write_tiny_gguf

TASK = "Summarise what is known about the moons of Mars, with sources."
QUESTION = "Which of the two moons was discovered first?"
# The parent's reply: long enough that its conversation is worth reusing (about 1,000 tokens here).
LONG_REPLY = "<think>\n" + "Phobos and Deimos were both found in 1877 by Asaph Hall. " * 25 + "\n</think>\n\nDone."
SHORT_REPLY = "<think>\nI know this.\n</think>\n\nPhobos."


def first_token(open_session: Callable[[], RunSession]) -> tuple[float, int, int]:
    """(seconds to the first streamed token, first turn's prompt tokens, tokens it evaluated)."""
    started = time.perf_counter()
    first: float | None = None
    turns: list[TurnEnded] = []

    def watch(event: AgentEvent) -> None:
        nonlocal first
        if first is None and isinstance(event, TextDelta):
            first = time.perf_counter()
        if isinstance(event, TurnEnded):
            turns.append(event)

    with open_session() as session:
        finished = session.drive(watch)
    assert finished.status == "answered", finished
    assert first is not None
    return first - started, turns[0].prompt_tokens, turns[0].evaluated_tokens


def grammar(path: Path, text: str) -> str:
    path.write_text("root ::= " + json.dumps(text), encoding="utf-8")
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (1 on a busy shared machine)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-followup-"))
    os.environ["APPLIANCE_HOME"] = str(root / "home")
    model = write_tiny_gguf(root / "tiny.gguf")
    base = {
        "model.backend": "llamacpp", "model.path": str(model), "model.context_length": 8192,
        "model.max_tokens": 600, "model.temperature": 0.0, "model.seed": 7, "model.n_threads": args.threads,
        "model.summary_grammar": grammar(root / "summary.gbnf", "The answer is \\boxed{Phobos}"),
        "agent.attempts": 0, "tools.enabled": [],
    }  # fmt: skip
    parent_settings = load_settings(overrides={**base, "model.grammar": grammar(root / "long.gbnf", LONG_REPLY)})
    short = {"model.grammar": grammar(root / "short.gbnf", SHORT_REPLY)}
    fresh_settings = load_settings(overrides={**base, **short})
    rows: dict[str, list[tuple[float, int, int]]] = {
        name: [] for name in ("fresh", "follow-up", "fresh, cold", "follow-up, cold")
    }
    with open_history(root / "history.db") as history:
        for _ in range(args.repeats):
            for name, results in rows.items():
                with Backends() as backends:
                    parent = parent_run(history, backends, parent_settings)
                    if name.endswith("cold"):
                        backends.close()
                        clear_model_cache()  # as a new process: the weights load again and the cache is empty
                    if name.startswith("fresh"):
                        results.append(first_token(partial(start_session, history, fresh_settings, QUESTION,
                                                           backends=backends)))  # fmt: skip
                    else:
                        results.append(first_token(partial(followup_session, history, parent, QUESTION, short,
                                                           backends=backends)))  # fmt: skip
    fresh = statistics.median(r[0] for r in rows["fresh"])
    print(f"Tiny GGUF, time to the first streamed token, median of {args.repeats} (each after a parent run):")
    print(f"{'run':<18}{'first token (s)':>16}{'vs fresh':>10}{'prompt':>8}{'evaluated':>11}")
    for name, results in rows.items():
        seconds = statistics.median(r[0] for r in results)
        prompt, evaluated = results[-1][1], results[-1][2]
        print(f"{name:<18}{seconds:>16.3f}{seconds / fresh:>9.2f}x{prompt:>8}{evaluated:>11}")


def parent_run(history: History, backends: Backends, settings: object) -> str:
    with start_session(history, settings, TASK, backends=backends) as session:  # type: ignore[arg-type]
        finished = session.drive()
    assert finished.status == "answered", finished
    return finished.run_id


if __name__ == "__main__":
    main()
