"""avg@K, pass@K, per-level tables and costs, as Markdown and CSV (pure functions over results)."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from appliance.eval.dataset import EvalTask, RowError
from appliance.eval.runner import RunResult

# MiroThinker v1.0's published scores (shared/design/mirothinker-protocol.md). GAIA is
# avg@8 on the text-only validation split, HLE and BrowseComp avg@3, graded by an LLM judge.
PUBLISHED = {
    "8B": {"HLE": 21.5, "BrowseComp": 31.1, "BC-ZH": 40.2, "GAIA": 66.4, "xbench-DS": 60.6},
    "30B": {"HLE": 33.4, "BrowseComp": 41.2, "BC-ZH": 47.8, "GAIA": 73.5, "xbench-DS": 70.6},
    "72B": {"HLE": 37.7, "BrowseComp": 47.1, "BC-ZH": 55.6, "GAIA": 81.9, "xbench-DS": 77.8},
}


@dataclass(frozen=True)
class Scores:
    tasks: int
    runs: int
    avg_at_k: float  # percent
    pass_at_k: float  # percent
    exact_avg_at_k: float  # percent, GAIA's exact-match scorer alone


def scores(results: Sequence[RunResult]) -> Scores:
    by_task: dict[str, list[RunResult]] = defaultdict(list)
    for result in results:
        by_task[result.task_id].append(result)
    if not by_task:
        return Scores(0, 0, 0.0, 0.0, 0.0)
    avg = statistics.mean(statistics.mean(1.0 if r.correct else 0.0 for r in runs) for runs in by_task.values())
    exact = statistics.mean(statistics.mean(1.0 if r.exact_match else 0.0 for r in runs) for runs in by_task.values())
    passed = statistics.mean(1.0 if any(r.correct for r in runs) else 0.0 for runs in by_task.values())
    return Scores(len(by_task), len(results), 100 * avg, 100 * passed, 100 * exact)


def first_attempt_only(results: Sequence[RunResult]) -> list[RunResult]:
    """The results as if each task had one attempt: a task that needed more counts as not answered."""
    return [r if r.attempts <= 1 else replace(r, correct=False, exact_match=False) for r in results]


_WEB_MODES = {
    "live": "live (not recorded)",
    "recorded": "live, recorded into the web archive",
    "replayed": "replayed from the web archive (no network)",
}


def web_summary(results: Sequence[RunResult]) -> str:
    """How the runs reached the web: one mode, or the count of each."""
    counts: dict[str, int] = defaultdict(int)
    for result in results:
        counts[result.web] += 1
    if not counts:
        return "no runs yet"
    if len(counts) == 1:
        return _WEB_MODES.get(next(iter(counts)), next(iter(counts)))
    return "; ".join(
        f"{n} run{'s' if n != 1 else ''} {_WEB_MODES.get(mode, mode)}" for mode, n in sorted(counts.items())
    )


def _mean(values: Sequence[float]) -> float:
    return statistics.mean(values) if values else 0.0


def render_markdown(
    name: str,
    results: Sequence[RunResult],
    tasks: Sequence[EvalTask],
    errors: Sequence[RowError],
    *,
    runs: int,
    model: str,
    judge: str | None,
) -> str:
    overall = scores(results)
    lines = [f"# Evaluation `{name}`", ""]
    lines.append(f"Model: `{model}`. Runs per task K={runs}. Scoring: "
                 + (f"LLM judge `{judge}` (GAIA exact match shown beside it)." if judge else "GAIA exact match.")
                 )  # fmt: skip
    lines += ["", f"Web: {web_summary(results)}."]
    done = len({r.task_id for r in results})
    lines += ["", f"Tasks: {len(tasks)} parsed, {done} with results; {len(errors)} rows skipped.", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [
        f"| avg@{runs} | {overall.avg_at_k:.1f}% |",
        f"| pass@{runs} | {overall.pass_at_k:.1f}% |",
        f"| exact match avg@{runs} | {overall.exact_avg_at_k:.1f}% |",
        f"| runs | {overall.runs} |",
        f"| mean turns / run | {_mean([r.turns for r in results]):.1f} |",
        f"| mean tool calls / run | {_mean([r.tool_calls for r in results]):.1f} |",
        f"| mean prompt tokens / run | {_mean([r.prompt_tokens for r in results]):,.0f} |",
        f"| mean completion tokens / run | {_mean([r.completion_tokens for r in results]):,.0f} |",
        f"| mean time / run | {_mean([r.elapsed_s for r in results]):.1f} s |",
    ]
    statuses: dict[str, int] = defaultdict(int)
    for result in results:
        statuses[result.status] += 1
    lines.append(f"| run endings | {', '.join(f'{k} {v}' for k, v in sorted(statuses.items())) or '-'} |")
    retried = sum(1 for r in results if r.attempts > 1)
    lines += [
        f"| runs that needed more than one attempt | {retried} of {len(results)} |",
        f"| avg@{runs} with only the first attempt | {scores(first_attempt_only(results)).avg_at_k:.1f}% |",
    ]

    lines += ["", "## By level", "", f"| level | tasks | avg@{runs} | pass@{runs} | exact avg@{runs} |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    levels: dict[str, list[RunResult]] = defaultdict(list)
    for result in results:
        levels[result.level].append(result)
    for level in sorted(levels):
        s = scores(levels[level])
        lines.append(f"| {level} | {s.tasks} | {s.avg_at_k:.1f}% | {s.pass_at_k:.1f}% | {s.exact_avg_at_k:.1f}% |")

    lines += ["", "## Per task", "", "| task | level | expected | answers | correct | turns | tool calls | time |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    by_task: dict[str, list[RunResult]] = defaultdict(list)
    for result in results:
        by_task[result.task_id].append(result)
    for task in tasks:
        runs_of = sorted(by_task.get(task.task_id, []), key=lambda r: r.run_index)
        if not runs_of:
            lines.append(f"| {task.task_id} | {task.level} | {_cell(task.answer)} | (not run) | | | | |")
            continue
        answers = "; ".join(_cell(r.answer if r.answer is not None else f"({r.status})") for r in runs_of)
        correct = sum(r.correct for r in runs_of)
        lines.append(
            f"| {task.task_id} | {task.level} | {_cell(task.answer)} | {answers} | {correct}/{len(runs_of)} "
            f"| {_mean([r.turns for r in runs_of]):.1f} | {_mean([r.tool_calls for r in runs_of]):.1f} "
            f"| {_mean([r.elapsed_s for r in runs_of]):.1f} s |"
        )

    columns = list(PUBLISHED["8B"])
    lines += ["", "## Published MiroThinker v1.0 figures (for reference)", ""]
    lines += ["| size | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for size, row in PUBLISHED.items():
        lines.append(f"| {size} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |")
    lines += ["", "GAIA there is avg@8 on the 103 text-only validation tasks, graded by an LLM judge; "
              "a small local dataset is not comparable task for task."]  # fmt: skip
    if errors:
        lines += ["", "## Rows skipped", ""] + [f"- line {e.line}: {e.message}" for e in errors]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= 60 else flat[:59] + "…"


def render_csv(results: Sequence[RunResult]) -> str:
    buffer = io.StringIO()
    fields = list(RunResult.__dataclass_fields__)
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for result in sorted(results, key=lambda r: (r.task_id, r.run_index)):
        writer.writerow(asdict(result))
    return buffer.getvalue()
