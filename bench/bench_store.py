"""The history store's cost per step, as a ratio against the same run without the store.

Method: the real loop on the real llama.cpp path with the tiny random-weight GGUF
(tests/tinygguf.py). A GBNF grammar makes every turn the same tool call (a fixed
string reproduces exactly), a tool answers at once with a page of varied text
(different every turn, so the full-text index does real work), K=5 (--keep-last),
and the summary grammar ends the run with \\boxed{42}.

Each repeat runs the same task twice at once, interleaved event by event: one
run with no subscriber, one with the store's recorder subscribed (a fresh
database each repeat). Each run has its own copy of the model (its own KV
cache), the same tool results, and so the same prompts. Interleaving makes
both runs meet the same machine load (other processes), which a run-after-run
comparison does not on a shared machine. Two figures come out:
- direct: the time spent inside the recorder (every commit of every event), per
  turn, divided by the time of a turn of the run without the store;
- end to end: (time of the run with the store, recorder included) / (time of
  the run without) - 1, which includes what the direct figure may miss.
Medians over the repeats; which run goes first alternates. The tiny model's turn
is far shorter than a real model's (seconds to minutes for an 8B model on a CPU),
so these ratios are upper bounds for real runs.

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
from appliance.agent.loop import Agent
from appliance.agent.state import new_state
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


class Side:
    """One of the two interleaved runs."""

    def __init__(
        self, model: Path, grammars: tuple[Path, Path], args: argparse.Namespace, work: Path, db: Path | None, seed: int
    ) -> None:
        backend = LlamaCppBackend(
            model,
            context_length=32768,
            temperature=0.0,
            seed=1,
            grammar=str(grammars[0]),
            summary_grammar=str(grammars[1]),
        )
        self.toolbox = ToolBox([BenchTools(args.result_chars, seed)])
        ctx = CallContext("bench", work, work / "ws", work / "out", timeout=60)
        settings = AgentSettings(max_turns=args.turns, keep_last=args.keep_last)
        agent = Agent(backend, self.toolbox, settings, ctx, max_tokens=400)
        task = "Read the annual report page by page and report the key figure."
        system = render_system_prompt(dt.date(2025, 1, 1), self.toolbox.server_specs())
        state = new_state(f"bench-{seed}", task, render_task_message(task), system)
        self.events = agent.run(state)
        self.db = db
        self.history = open_history(db) if db is not None else None
        if self.history is not None and args.synchronous != "normal":
            self.history.db.conn.execute(f"PRAGMA synchronous = {args.synchronous.upper()}")
        self.recorder = self.history.recorder() if self.history is not None else None
        self.elapsed = self.store = 0.0
        self.commits = 0
        self.last: AgentEvent | None = None

    def step(self) -> bool:
        """Advance by one event; False once the run has finished."""
        t0 = time.perf_counter()
        event = next(self.events, None)
        t1 = time.perf_counter()
        self.elapsed += t1 - t0
        if event is None:
            return False
        if self.recorder is not None:
            self.recorder(event)
            spent = time.perf_counter() - t1
            self.store += spent
            self.elapsed += spent
            self.commits += not isinstance(event, TextDelta)
        self.last = event
        return True

    def close(self) -> int:
        self.toolbox.close()
        if self.history is None or self.db is None:
            return 0
        self.history.close()
        return sum(p.stat().st_size for p in self.db.parent.glob(self.db.name + "*"))


def run_pair(
    models: tuple[Path, Path], grammars: tuple[Path, Path], args: argparse.Namespace, work: Path, repeat: int
) -> dict[str, float]:
    bare = Side(models[0], grammars, args, work, None, repeat)
    stored = Side(models[1], grammars, args, work, work / f"h{repeat}.db", repeat)
    sides = [bare, stored] if repeat % 2 == 0 else [stored, bare]
    running = list(sides)
    while running:
        running = [side for side in running if side.step()]
    for side in sides:
        assert isinstance(side.last, RunFinished) and side.last.status == "answered", side.last
        assert side.last.turns == args.turns, side.last
    bare.close()
    size = stored.close()
    return {
        "bare": bare.elapsed,
        "stored": stored.elapsed,
        "store": stored.store,
        "commits": stored.commits,
        "bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--keep-last", type=int, default=5, help="-1 keeps every result: the fastest turns")
    parser.add_argument("--result-chars", type=int, default=2000, help="characters of each tool result")
    parser.add_argument("--n-embd", type=int, default=64, help="64 and 2 layers: the test suite's tiny model")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal", help="SQLite synchronous mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        work = Path(tmp)
        models = (work / "a.gguf", work / "b.gguf")
        for model in models:  # two files: two Llama objects, two KV caches
            write_tiny_gguf(model, n_embd=args.n_embd, n_layer=args.layers, n_ff=args.n_embd * 2, context_length=32768)
        grammars = (work / "turn.gbnf", work / "summary.gbnf")
        grammars[0].write_text(literal(CALL))
        grammars[1].write_text(literal(SUMMARY))
        clear_model_cache()
        run_pair(models, grammars, args, work, -1)  # warm-up: load both models
        results = [run_pair(models, grammars, args, work, repeat) for repeat in range(args.repeats)]
    turns = args.turns

    def median(key: str) -> float:
        return statistics.median(r[key] for r in results)

    direct = [r["store"] / r["bare"] for r in results]
    end_to_end = [r["stored"] / r["bare"] - 1 for r in results]
    ms = 1000 / turns
    print(f"model: tiny GGUF n_embd={args.n_embd} layers={args.layers}, llama.cpp, grammar-forced tool call")
    print(
        f"run: {turns} turns + summary, K={args.keep_last}, {args.result_chars:,}-character tool results, "
        f"synchronous={args.synchronous}, {args.repeats} repeats, the two runs interleaved"
    )
    print(f"turn without store (median):  {median('bare') * ms:9.3f} ms")
    print(f"turn with store (median):     {median('stored') * ms:9.3f} ms")
    print(
        f"store time per turn (median): {median('store') * ms:9.3f} ms  "
        f"({median('commits') / (turns + 1):.1f} commits a turn)"
    )
    print(f"database size: {median('bytes') / 1024:.0f} KiB for {turns} turns")
    print(f"store cost per step, direct:  {100 * statistics.median(direct):.3f} %  (store time / time without store)")
    print(f"store cost per step, end to end: {100 * statistics.median(end_to_end):+.3f} %  (with / without - 1)")
    print("direct:     " + ", ".join(f"{100 * r:.3f}%" for r in direct))
    print("end to end: " + ", ".join(f"{100 * r:+.3f}%" for r in end_to_end))


if __name__ == "__main__":
    main()
