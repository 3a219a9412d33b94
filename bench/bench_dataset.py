"""`appliance dataset build` against exporting the same runs as ChatML, per 1,000 trajectories.

Method: a fresh history gets RUNS runs recorded by the real loop and recorder
(the replay backend, an instant search double whose results are ~2,000
characters; TURNS searches then a boxed answer; K=5, so older results are
omitted in the model's view). Four runs per task, half labelled correct and
half incorrect, so the builder pairs as well as filters. Then, alternately and
in alternating order, the two jobs read the same database:
- export: what `appliance history export --all --view context` does (list,
  load each run, the ChatML context view, one JSON line each, to a file);
- build: what `appliance dataset build` does (select, load, score, redact,
  every filter, pairs, manifest and card, the files written).
Medians over the repeats; the ratio is build / export.

    python bench/bench_dataset.py [--runs 400] [--turns 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.agent.runtime import prepare_run
from appliance.config import load_settings
from appliance.dataset.build import BuildOptions, Redactor, Selection, build, score_of, select_runs
from appliance.dataset.files import manifest, write_dataset
from appliance.dataset.filters import Candidate
from appliance.llm.replay import ReplayBackend, ReplayTurn
from appliance.store import History, open_history
from appliance.store.export import chatml, safe_json
from appliance.tools.base import ToolBox
from tests.conftest import tool_call
from tests.storetools import SERVER, StoreTestTools


def record(history: History, runs: int, turns: int) -> None:
    settings = load_settings(overrides={"tools.enabled": [], "agent.keep_last": 5})
    for i in range(runs):
        task, right = i // 4, i % 2 == 0
        script = [
            ReplayTurn(tool_call(SERVER, "google_search", {"q": f"task {task} run {i} step {t}"}, f"Step {t} of {i}."))
            for t in range(turns)
        ]
        script += [ReplayTurn("<think>\nDone.\n</think>\n\nFound it."), ReplayTurn(f"\\boxed{{{42 if right else 41}}}")]
        toolbox = ToolBox([StoreTestTools()])
        agent, state = prepare_run(
            settings, f"Question {task}: what is the answer?", backend=ReplayBackend(script), toolbox=toolbox
        )
        recorder = history.recorder()
        for event in agent.run(state):
            recorder(event)
        toolbox.close()
        history.tag_run(state.run_id, "correct" if right else "incorrect")


def export(history: History, out: Path) -> int:
    ids = [r.run_id for r in history.list_runs(limit=0) if r.status != "running"]
    with out.open("w", encoding="utf-8") as handle:
        for run_id in ids:
            handle.write(safe_json(chatml(history.get_run(run_id), "context")) + "\n")
    return len(ids)


def build_dataset(history: History, out: Path) -> int:
    selection = Selection()
    runs = [history.get_run(s.run_id) for s in select_runs(history, selection)]
    candidates = [Candidate(run, *score_of(run, {})) for run in runs]
    options = BuildOptions()
    dataset = build(candidates, options, Redactor(("not-a-real-secret",), str(Path.home()), True))
    write_dataset(out, dataset, manifest(dataset, selection, options, redact_paths=True), force=True)
    return len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    try:
        with open_history(root / "history.db") as history:
            started = time.perf_counter()
            record(history, args.runs, args.turns)
            print(f"recorded {args.runs} runs of {args.turns} turns in {time.perf_counter() - started:.1f} s")
            times: dict[str, list[float]] = {"export": [], "build": []}
            for repeat in range(args.repeats):
                jobs = [("export", export, root / "export.jsonl"), ("build", build_dataset, root / "dataset")]
                for name, job, out in jobs if repeat % 2 == 0 else reversed(jobs):
                    started = time.perf_counter()
                    count = job(history, out)
                    times[name].append(time.perf_counter() - started)
                    assert count == args.runs
            sft = sum(1 for _ in (root / "dataset" / "sft.jsonl").open())
            dpo = sum(1 for _ in (root / "dataset" / "dpo.jsonl").open())
            written = sum(p.stat().st_size for p in (root / "dataset").iterdir())
            exported = (root / "export.jsonl").stat().st_size
        per_k = {name: statistics.median(values) / args.runs * 1000 for name, values in times.items()}
        ratios = [b / e for b, e in zip(times["build"], times["export"], strict=True)]
        print(
            f"dataset: {sft} SFT trajectories, {dpo} DPO pairs, {written / 1e6:.1f} MB written "
            f"(the export: {exported / 1e6:.1f} MB)"
        )
        print(f"export (ChatML, context view): {per_k['export']:.2f} s per 1,000 runs")
        print(f"dataset build:                 {per_k['build']:.2f} s per 1,000 runs")
        print(
            f"build / export: {statistics.median(ratios):.2f} median over {args.repeats} repeats "
            f"({', '.join(f'{r:.2f}' for r in ratios)})"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
