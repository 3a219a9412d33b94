"""From recorded runs to SFT trajectories and DPO pairs: selection, scores, privacy, filters, pairing.

`build` is pure over loaded runs; reading the history and the eval results is
at the edges (`select_runs`, `eval_scores`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.dataset.filters import (
    DUPLICATE_TRAJECTORY,
    FILTERS,
    Candidate,
    Score,
    Side,
    Thresholds,
    filters_for,
    threshold_values,
)
from appliance.eval.runner import load_results
from appliance.policy import redact
from appliance.store.export import View, chatml
from appliance.store.history import History
from appliance.store.records import RunRecord, RunSummary

# The labels a user puts on a run with `appliance history tag RUN_ID correct` (or incorrect).
LABELS: dict[str, Score] = {"correct": "correct", "incorrect": "incorrect"}
EVAL_TAG = "eval:"
Message = dict[str, str]


# ------------------------------------------------------------------ selection


@dataclass(frozen=True)
class Selection:
    """Which runs: of any of these evals, with every one of these tags, these statuses, started in [since, until)."""

    evals: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def matches(self, run: RunSummary) -> bool:
        if self.evals and not any(f"{EVAL_TAG}{name}" in run.tags for name in self.evals):
            return False
        if not set(self.tags) <= set(run.tags):
            return False
        if self.statuses and run.status not in self.statuses:
            return False
        started = dt.datetime.fromisoformat(run.started_at)
        return (self.since is None or started >= self.since) and (self.until is None or started < self.until)

    def describe(self) -> dict[str, Any]:
        return {
            "evals": list(self.evals),
            "tags": list(self.tags),
            "statuses": list(self.statuses),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }


def select_runs(history: History, selection: Selection) -> list[RunSummary]:
    """The matching runs, oldest first (so "the first of two identical trajectories" is the older run)."""
    runs = [run for run in history.list_runs(limit=0) if selection.matches(run)]
    return sorted(runs, key=lambda run: run.started_at)


# ------------------------------------------------------------------ scores


def eval_names(runs: Iterable[RunRecord]) -> list[str]:
    """The evals the runs belong to (their `eval:NAME` tag; `eval:NAME:TASK:K` names the task)."""
    names = {tag[len(EVAL_TAG) :] for run in runs for tag in run.tags if tag.startswith(EVAL_TAG)}
    return sorted(name for name in names if ":" not in name)


def eval_scores(directories: Iterable[Path]) -> dict[str, tuple[Score, str]]:
    """run id -> (score, source) from the results.jsonl of eval directories (missing ones are skipped)."""
    scores: dict[str, tuple[Score, str]] = {}
    for directory in directories:
        for result in load_results(directory):
            scores[result.run_id] = ("correct" if result.correct else "incorrect", f"eval {directory.name}")
    return scores


def score_of(run: RunRecord, from_evals: dict[str, tuple[Score, str]]) -> tuple[Score | None, str | None]:
    """A user's label wins over the eval's verdict; a run labelled both ways has no score."""
    labels = {LABELS[tag] for tag in run.tags if tag in LABELS}
    if len(labels) > 1:
        return None, "conflicting labels"
    if labels:
        return labels.pop(), "label"
    if run.run_id in from_evals:
        return from_evals[run.run_id]
    return None, None


# ------------------------------------------------------------------ privacy


@dataclass(frozen=True)
class Redactor:
    """The history's credential scrubbing, the configured secrets' values, and (optionally) local paths."""

    secrets: tuple[str, ...] = ()
    home: str | None = None  # replaced by ~ with --redact-paths
    redact_paths: bool = False

    def _path_patterns(self, run: RunRecord) -> list[tuple[re.Pattern[str], str]]:
        if not self.redact_paths:
            return []
        paths = [(run.workspace, "<workspace>")] if run.workspace else []
        paths += [(self.home, "~")] if self.home and self.home != "/" else []
        # Longest first (the workspace usually lies under the home); a path must end where a name ends.
        return [
            (re.compile(re.escape(path.rstrip("/")) + r"(?![\w.-])"), replacement)
            for path, replacement in sorted(paths, key=lambda p: -len(p[0]))
        ]

    def messages(self, run: RunRecord, messages: Iterable[Message]) -> list[Message]:
        patterns = self._path_patterns(run)

        def clean(text: str) -> str:
            text = str(redact(text).value)
            for secret in self.secrets:
                text = text.replace(secret, "***")
            for pattern, replacement in patterns:
                text = pattern.sub(replacement, text)
            return text

        return [{"role": m["role"], "content": clean(m["content"])} for m in messages]


# ------------------------------------------------------------------ the build


@dataclass(frozen=True)
class BuildOptions:
    view: View = "context"
    thresholds: Thresholds = field(default_factory=Thresholds)
    disabled: frozenset[str] = frozenset()


@dataclass
class FilterReport:
    name: str
    description: str
    enabled: bool
    thresholds: dict[str, float]
    removed: list[tuple[str, str]] = field(default_factory=list)  # (run id, why)


@dataclass
class Dataset:
    runs: list[Candidate]
    sft: list[dict[str, Any]]
    sft_run_ids: list[str]
    dpo: list[dict[str, Any]]
    dpo_run_ids: list[tuple[str, str]]
    filters: dict[Side, list[FilterReport]]
    score_sources: dict[str, int]
    dpo_notes: list[str]

    def scored(self, score: Score) -> int:
        return sum(1 for c in self.runs if c.score == score)


def _apply(
    side: Side, candidates: Sequence[Candidate], options: BuildOptions
) -> tuple[list[Candidate], list[FilterReport]]:
    """The candidates that pass every enabled filter of one side; each filter reports every run it rejects."""
    reports = []
    rejected: set[str] = set()
    enabled = {f.name for f in filters_for(side, options.disabled)}
    for f in FILTERS:
        if side not in f.sides:
            continue
        report = FilterReport(f.name, f.description, f.name in enabled, threshold_values(f, options.thresholds))
        if report.enabled:
            for candidate in candidates:
                why = f.check(candidate, options.thresholds)
                if why is not None:
                    report.removed.append((candidate.run.run_id, why))
                    rejected.add(candidate.run.run_id)
        reports.append(report)
    return [c for c in candidates if c.run.run_id not in rejected], reports


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def build(candidates: Sequence[Candidate], options: BuildOptions, redactor: Redactor) -> Dataset:
    """Filter the runs (oldest first) into SFT trajectories and DPO pairs; report what each filter removed."""
    messages = {c.run.run_id: redactor.messages(c.run, chatml(c.run, options.view)["messages"]) for c in candidates}
    filters: dict[Side, list[FilterReport]] = {}

    sft_kept, filters["sft"] = _apply("sft", candidates, options)
    duplicates = FilterReport(
        DUPLICATE_TRAJECTORY,
        "the same messages as an earlier trajectory",
        DUPLICATE_TRAJECTORY not in options.disabled,
        {},
    )
    keys = {run_id: _key(m) for run_id, m in messages.items()}
    seen: dict[str, str] = {}
    sft_run_ids = []
    for candidate in sft_kept:
        run_id = candidate.run.run_id
        key = keys[run_id]
        if duplicates.enabled and key in seen:
            duplicates.removed.append((run_id, f"the same as {seen[key]}"))
            continue
        seen.setdefault(key, run_id)
        sft_run_ids.append(run_id)
    filters["sft"].append(duplicates)

    chosen, filters["chosen"] = _apply("chosen", [c for c in candidates if c.score == "correct"], options)
    rejected, filters["rejected"] = _apply("rejected", [c for c in candidates if c.score == "incorrect"], options)
    dpo, dpo_run_ids = _pairs(chosen, rejected, messages, keys)

    sources = Counter(c.source for c in candidates if c.score is not None and c.source)
    return Dataset(
        runs=list(candidates),
        sft=[{"messages": messages[run_id]} for run_id in sft_run_ids],
        sft_run_ids=sft_run_ids,
        dpo=dpo,
        dpo_run_ids=dpo_run_ids,
        filters=filters,
        score_sources=dict(sources),
        dpo_notes=_dpo_notes(candidates, chosen, rejected, {good for good, _ in dpo_run_ids}),
    )


def _pairs(
    chosen: Sequence[Candidate],
    rejected: Sequence[Candidate],
    messages: dict[str, list[Message]],
    keys: dict[str, str],
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every chosen run with every rejected run of the same prompt (system prompt and task as the model read them)."""
    rows: list[dict[str, Any]] = []
    ids: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for good in chosen:
        prompt = messages[good.run.run_id][:2]
        for bad in rejected:
            pair = (keys[good.run.run_id], keys[bad.run.run_id])
            # Identical runs (a replayed eval) would make identical pairs.
            if messages[bad.run.run_id][:2] != prompt or pair in seen:
                continue
            seen.add(pair)
            rows.append(
                {"prompt": prompt, "chosen": messages[good.run.run_id][2:], "rejected": messages[bad.run.run_id][2:]}
            )
            ids.append((good.run.run_id, bad.run.run_id))
    return rows, ids


def _dpo_notes(
    candidates: Sequence[Candidate], chosen: Sequence[Candidate], rejected: Sequence[Candidate], paired: set[str]
) -> list[str]:
    """Why there are no (or fewer) pairs than the scores suggest. `paired`: the chosen runs of the pairs made."""
    notes = []
    if not any(c.score for c in candidates):
        return [
            "no run in the selection has a score, so there are no DPO pairs: score runs with `appliance eval`, "
            "or label them with `appliance history tag RUN_ID correct` (or `incorrect`)"
        ]
    if not paired:
        notes.append(
            f"no DPO pairs: {len(chosen)} run(s) scored correct and {len(rejected)} scored incorrect pass the "
            "filters, and a pair needs one of each for the same task"
        )
    paired_tasks = {c.run.task for c in chosen if c.run.run_id in paired}
    unmatched = ({c.run.task for c in chosen} & {r.run.task for r in rejected}) - paired_tasks
    if unmatched:
        notes.append(
            f"{len(unmatched)} task(s) have correct and incorrect runs whose prompts differ (another date, other "
            "tools or attachments), so they are not paired"
        )
    return notes
