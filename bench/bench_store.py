"""The history store's cost per step, as a ratio against the same run without the store.

Method: the real loop on the real llama.cpp path with the tiny random-weight GGUF
(tests/tinygguf.py). A GBNF grammar makes every turn the same tool call (a fixed
string reproduces exactly), a tool answers at once with a page of varied text
(different every turn, so the full-text index does real work), K=5 (--keep-last), and the
summary grammar ends the run with \\boxed{42}. Each repeat runs the task twice,
alternating the order: once with no subscriber and once with the store's
recorder subscribed (a fresh database in the same directory each time).

Two figures come out:
- direct: the time spent inside the recorder (every commit of every event),
  per turn, divided by the time of a turn without the store. This is the cost
  the store adds to a step, measured exactly.
- end to end: (run time with store) / (run time without) - 1. It includes the
  same cost plus machine noise, which at this scale is of the same order.
Medians over the repeats are reported; the end-to-end figure averages the two
run orders (bare first, store first), because the first run of a pair is
measurably slower on a busy machine. The tiny model's turn is far faster than
a real model's (an 8B model on a CPU takes seconds to minutes a turn), so the
ratio here is an upper bound for real runs.

    python bench/bench_store.py [--turns 30] [--repeats 6] [--result-chars 2000] [--keep-last 5]
                                [--n-embd 64] [--layers 2] [--synchronous normal|full]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.agent.events import AgentEvent, RunFinished, TextDelta
from appliance.agent.loop import Agent, new_state
from appliance.config import AgentSettings
from appliance.llm.llamacpp import LlamaCppBackend, clear_model_cache
from appliance.protocol.prompt import render_system_prompt, render_task_message
from appliance.protocol.tooldefs import ToolSpec
from appliance.store import open_history
from appliance.tools.base import CallContext, ToolBox, ToolOutput, ToolServer
from tests.tinygguf import _TRAINING_TEXT, write_tiny_gguf

CALL = (
    "<think>\nI will read the next page of the report.\n</think>\n\n<use_mcp_tool>\n"
    "<server_name>bench-tools</server_name>\n<tool_name>read_page</tool_name>\n<arguments>\n"
    '{"document": "annual-report", "page": "next"}\n</arguments>\n</use_mcp_tool>'
)
SUMMARY = "The report says \\boxed{42}."
# Words the tiny model's tokenizer has merges for: text tokenizes about as densely as English does
# for a real model, instead of one token per character.
WORDS = sorted(set(_TRAINING_TEXT.split()))


class BenchTools(ToolServer):
    """Answers at once with a page of varied text."""

    name = "bench-tools"

    def __init__(self, chars: int, seed: int) -> None:
        self.chars = chars
        self.rng = random.Random(seed)

    def tools(self) -> Sequence[ToolSpec]:
        schema = {
            "type": "object",
            "properties": {"document": {"type": "string"}, "page": {"type": "string"}},
            "required": ["document", "page"],
        }
        return (ToolSpec("read_page", "Read the next page of a document.", schema),)

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        words: list[str] = []
        size = 0
        while size < self.chars:
            word = self.rng.choice(WORDS) if self.rng.random() < 0.9 else str(self.rng.randrange(10_000))
            words.append(word)
            size += len(word) + 1
        return ToolOutput(" ".join(words))


def literal(text: str) -> str:
    return "root ::= " + json.dumps(text)


def run_once(
    model: Path, grammars: tuple[Path, Path], args: argparse.Namespace, work: Path, db: Path | None, seed: int
) -> dict[str, float]:
    backend = LlamaCppBackend(
        model, context_length=32768, temperature=0.0, seed=1, grammar=str(grammars[0]), summary_grammar=str(grammars[1])
    )
    toolbox = ToolBox([BenchTools(args.result_chars, seed)])
    ctx = CallContext("bench", work, work / "ws", work / "out", timeout=60)
    agent = Agent(backend, toolbox, AgentSettings(max_turns=args.turns, keep_last=args.keep_last), ctx, max_tokens=400)
    task = "Read the annual report page by page and report the key figure."
    state = new_state(
        f"bench-{seed}-{db is not None}",
        task,
        render_task_message(task),
        render_system_prompt(dt.date(2025, 1, 1), toolbox.server_specs()),
    )
    history = open_history(db) if db is not None else None
    if history is not None and args.synchronous != "normal":
        history.db.conn.execute(f"PRAGMA synchronous = {args.synchronous.upper()}")
    recorder = history.recorder() if history is not None else None
    in_store = in_store_cpu = 0.0
    commits = 0
    last: AgentEvent | None = None
    started, started_cpu = time.perf_counter(), time.process_time()
    for event in agent.run(state):
        if recorder is not None:
            t0, c0 = time.perf_counter(), time.thread_time()
            recorder(event)
            in_store += time.perf_counter() - t0
            in_store_cpu += time.thread_time() - c0
            commits += not isinstance(event, TextDelta)
        last = event
    elapsed, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    toolbox.close()
    assert isinstance(last, RunFinished) and last.status == "answered", last
    assert last.turns == args.turns, last
    size = 0
    if history is not None:
        history.close()
        size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))  # type: ignore[union-attr]
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "store": in_store,
        "store_cpu": in_store_cpu,
        "turns": last.turns,
        "events": commits,
        "bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=6, help="pairs of runs; an even number balances the order")
    parser.add_argument("--keep-last", type=int, default=5, help="-1 keeps every result: the fastest turns")
    parser.add_argument("--result-chars", type=int, default=2000, help="characters of each tool result")
    parser.add_argument("--n-embd", type=int, default=64, help="64 and 2 layers: the test suite's tiny model")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal", help="SQLite synchronous mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        work = Path(tmp)
        model = write_tiny_gguf(
            work / "bench.gguf", n_embd=args.n_embd, n_layer=args.layers, n_ff=args.n_embd * 2, context_length=32768
        )
        grammars = (work / "turn.gbnf", work / "summary.gbnf")
        grammars[0].write_text(literal(CALL))
        grammars[1].write_text(literal(SUMMARY))
        clear_model_cache()
        run_once(model, grammars, args, work, None, 0)  # warm-up: load the model, fill the prompt cache
        bare, stored = [], []
        for repeat in range(args.repeats):
            order = [None, work / f"h{repeat}.db"] if repeat % 2 == 0 else [work / f"h{repeat}.db", None]
            for db in order:
                result = run_once(model, grammars, args, work, db, repeat + 1)
                (bare if db is None else stored).append(result)
    turns = args.turns

    def per_turn(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs) / turns

    direct = [r["store"] / turns / per_turn(bare, "elapsed") for r in stored]
    direct_cpu = [r["store_cpu"] / turns / per_turn(bare, "cpu") for r in stored]
    end_to_end = [s["elapsed"] / b["elapsed"] - 1 for s, b in zip(stored, bare, strict=True)]
    end_to_end_cpu = [s["cpu"] / b["cpu"] - 1 for s, b in zip(stored, bare, strict=True)]

    def balanced(ratios: list[float]) -> float:
        """Mean over the two orders (bare first, store first) of the mean ratio: the order effect cancels."""
        groups = [ratios[0::2], ratios[1::2]]
        return statistics.mean(statistics.mean(g) for g in groups if g)

    events = statistics.median(r["events"] for r in stored)
    ms = 1000
    print(f"model: tiny GGUF n_embd={args.n_embd} layers={args.layers}, llama.cpp, grammar-forced tool call")
    print(
        f"run: {turns} turns + summary, K={args.keep_last}, {args.result_chars:,}-character tool results, "
        f"synchronous={args.synchronous}, {args.repeats} repeats"
    )
    rows = [
        ("turn without store (median):", per_turn(bare, "elapsed"), per_turn(bare, "cpu"), ""),
        ("turn with store (median):", per_turn(stored, "elapsed"), per_turn(stored, "cpu"), ""),
        (
            "store time per turn:",
            per_turn(stored, "store"),
            per_turn(stored, "store_cpu"),
            f"  ({events / (turns + 1):.1f} commits a turn)",
        ),
    ]
    print(f"{'':29}{'wall':>11}{'cpu':>12}")
    for label, wall, cpu, note in rows:
        print(f"{label:<29}{wall * ms:8.3f} ms {cpu * ms:8.3f} ms{note}")
    print(f"database size: {statistics.median(r['bytes'] for r in stored) / 1024:.0f} KiB for {turns} turns")
    print(
        f"store cost per step, direct: {100 * statistics.median(direct):.3f} % wall, "
        f"{100 * statistics.median(direct_cpu):.3f} % cpu  (store time / turn time without the store)"
    )
    print(
        f"store cost, end to end:      {100 * balanced(end_to_end):+.2f} % wall, "
        f"{100 * balanced(end_to_end_cpu):+.2f} % cpu  (with / without - 1, order-balanced; machine noise included)"
    )
    print("direct (wall):     " + ", ".join(f"{100 * r:.3f}%" for r in direct))
    print("end to end (wall): " + ", ".join(f"{100 * r:+.2f}%" for r in end_to_end))
    print("end to end (cpu):  " + ", ".join(f"{100 * r:+.2f}%" for r in end_to_end_cpu))


if __name__ == "__main__":
    main()
