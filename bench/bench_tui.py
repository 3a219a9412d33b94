"""The terminal UI's throughput as a ratio of the headless mode's, and key-press latency while it streams.

Method: one long scripted run (replay backend; dozens of tool calls on the scripted tool
servers of tests/tui_support.py; thousands of streamed tokens of thinking and Markdown)
is played through
  - the headless path of `appliance --task` (a run session with the store's recorder and the
    progress printer), and
  - the Textual app (headless, via App.run_test) from the ctrl+s press until the run's
    last event is on screen (RunClosed handled: every widget mounted, the answer shown),
alternately, `--repeats` times each, in the same process and database directory. Both
record every step in SQLite. Throughput is streamed tokens per second; the figure is the
median headless time divided by the median UI time (1.0 = the UI costs nothing).

Two pacings: `paced` streams each reply at `--rate` tokens per second (the replay script's
`delay`), a fast local model; `unpaced` streams as fast as the replay backend can, the worst
case for the UI (it competes with the producer for the GIL). CPU time of the whole process is
reported too: with a real local model the UI's CPU is taken from a machine that is also
running the model.

Key-press latency: during a paced UI run, a key bound to a no-op action is pressed every
0.1 s; the time from just before `pilot.press` to the action running is recorded.

    python bench/bench_tui.py [--turns 24] [--repeats 2] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual.binding import Binding, BindingType
from textual.widgets import TextArea

from appliance.agent import runtime
from appliance.cli import HeadlessPrinter
from appliance.llm.base import approximate_tokens
from appliance.options import settings_from_options
from appliance.session import Backends, start_session
from appliance.store import open_history
from appliance.tui.app import ApplianceApp
from tests.tui_support import SERVERS, answer, command, scrape, search, write_script

TASK = "Survey the moons of the solar system and report how many Mars has."

THOUGHT = (
    "I need to check this carefully. The previous result mentioned several facts, some of which "
    "may be out of date, so I will cross-check them with another source before relying on them. "
)
SAID = (
    "So far:\n\n- **Phobos** orbits closer than any other known moon to its planet.\n"
    "- *Deimos* is smaller and farther out.\n\nNext I look at `{topic}` in more detail.\n"
)


def build_script(path: Path, turns: int, rate: float) -> tuple[Path, int]:
    """A run of `turns` tool turns, a closing turn and a summary, each reply streaming at `rate` tokens/s
    (0: as fast as possible); returns the script and its token count."""
    lines: list[dict[str, Any]] = []
    for turn in range(turns):
        thinking = THOUGHT * 2
        topic = f"topic {turn}"
        if turn % 3 == 0:
            reply = search(f"moons of mars {topic}", thinking)
        elif turn % 3 == 1:
            reply = scrape(f"https://example.org/moons/{turn}", f"facts about {topic}", thinking)
        else:
            reply = command(f"echo {topic}", thinking)
        head, _, call = reply.partition("<use_mcp_tool>")
        lines.append({"content": head + SAID.format(topic=topic) + "<use_mcp_tool>" + call})
    lines.append({"content": "<think>\n" + THOUGHT * 10 + "\n</think>\n\n" + SAID.format(topic="all") * 4})
    lines.append({"content": answer("2", THOUGHT * 3)})
    for line in lines:
        line["delay"] = approximate_tokens(line["content"]) / rate if rate else 0.0
    write_script(path, lines)
    tokens = sum(approximate_tokens(line["content"]) for line in lines)
    return path, tokens


def options_for(script: Path, db: Path) -> dict[str, Any]:
    return {"backend": "replay", "replay": script, "db": db, "keep_last": 5}


def run_headless(script: Path, db: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process) for one run of `appliance --task`'s path."""
    options = options_for(script, db)
    started, cpu = time.perf_counter(), time.process_time()
    settings = settings_from_options(options)
    with (
        open_history(db) as history,
        Backends() as backends,
        start_session(history, settings, TASK, backends=backends) as session,
    ):
        finished = session.drive(HeadlessPrinter(io.StringIO()))
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    assert finished.status == "answered", finished
    return elapsed, used


class BenchApp(ApplianceApp):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("f12", "ping", "Ping", show=False)]

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.pinged: float | None = None

    def action_ping(self) -> None:
        self.pinged = time.perf_counter()


async def run_ui(script: Path, db: Path, *, probe_keys: bool) -> dict[str, Any]:
    """One run in the Textual app, from the ctrl+s press until its last event is on screen."""
    app = BenchApp(options_for(script, db))
    latencies: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        main = app.main
        main.query_one("#task", TextArea).text = TASK
        started, cpu = time.perf_counter(), time.process_time()
        await pilot.press("ctrl+s")
        while main.phase != "done":
            if probe_keys and main.phase == "running":
                app.pinged = None
                pressed = time.perf_counter()
                await pilot.press("f12")
                while app.pinged is None:
                    await asyncio.sleep(0.001)
                latencies.append(app.pinged - pressed)
                await asyncio.sleep(0.1)
            else:
                await asyncio.sleep(0.005)
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
        assert main.run_status == "answered", main.run_status
        events = main.transcript.events_seen
    return {"wall": elapsed, "cpu": used, "latencies": latencies, "events": events}


def measure(turns: int, repeats: int, rate: float, workdir: Path) -> dict[str, Any]:
    script, tokens = build_script(workdir / f"script-{rate}.jsonl", turns, rate)
    headless: list[tuple[float, float]] = []
    ui: list[dict[str, Any]] = []
    for i in range(repeats):
        headless.append(run_headless(script, workdir / f"headless-{rate}-{i}.db"))
        ui.append(asyncio.run(run_ui(script, workdir / f"ui-{rate}-{i}.db", probe_keys=False)))
    h = statistics.median(w for w, _ in headless)
    u = statistics.median(r["wall"] for r in ui)
    return {
        "tokens": tokens,
        "events": ui[-1]["events"],
        "headless_s": h,
        "ui_s": u,
        "headless_cpu": statistics.median(c for _, c in headless),
        "ui_cpu": statistics.median(r["cpu"] for r in ui),
        "ratio": h / u,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=24, help="tool turns in the scripted run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rate", type=float, default=200.0, help="tokens per second of the paced model")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ["APPLIANCE_HOME"] = str(workdir / "home")
        for name in [n for n in os.environ if n.startswith("APPLIANCE_") and n != "APPLIANCE_HOME"]:
            del os.environ[name]
        # Room for every turn: the run must not end early on a full context.
        os.environ["APPLIANCE_MODEL_CONTEXT_LENGTH"] = "262144"
        runtime.TOOL_SERVERS.update(SERVERS)

        print(f"scripted run: {args.turns} tool calls, {args.turns + 2} replies, streamed in 16-character chunks")
        for label, rate in ((f"paced at {args.rate:g} tok/s", args.rate), ("unpaced", 0.0)):
            r = measure(args.turns, args.repeats, rate, workdir)
            print(
                f"{label}: {r['tokens']:,} tokens, {r['events']:,} events shown\n"
                f"  headless {r['headless_s']:.2f}s ({r['tokens'] / r['headless_s']:,.0f} tok/s, "
                f"CPU {r['headless_cpu']:.2f}s)\n"
                f"  UI       {r['ui_s']:.2f}s ({r['tokens'] / r['ui_s']:,.0f} tok/s, CPU {r['ui_cpu']:.2f}s = "
                f"{100 * r['ui_cpu'] / r['ui_s']:.0f}% of one core)\n"
                f"  UI/headless throughput {r['ratio']:.2f}"
            )
        script, _ = build_script(workdir / "probe.jsonl", args.turns, args.rate)
        probe = asyncio.run(run_ui(script, workdir / "probe.db", probe_keys=True))
        ms = sorted(x * 1000 for x in probe["latencies"])
        p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
        print(
            f"key-press latency while streaming (paced, {len(ms)} presses): "
            f"median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms"
        )


if __name__ == "__main__":
    main()
