"""The dataset directory: sft.jsonl, dpo.jsonl, manifest.json and a README.md dataset card.

A new directory is written beside its final name and renamed into place, so a
failed build leaves nothing half-written; `--force` replaces the dataset's own
files in an existing directory (one atomic rename each) and touches nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.dataset.build import BuildOptions, Dataset, FilterReport, Selection
from appliance.dataset.filters import SIDES, Side
from appliance.errors import ConfigError

SFT_FILE, DPO_FILE, MANIFEST_FILE, CARD_FILE = "sft.jsonl", "dpo.jsonl", "manifest.json", "README.md"
SIDE_TITLES: dict[Side, str] = {
    "sft": "SFT",
    "chosen": "DPO chosen (runs scored correct)",
    "rejected": "DPO rejected (runs scored incorrect)",
}


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _filters_json(reports: list[FilterReport]) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "description": r.description,
            "enabled": r.enabled,
            "thresholds": r.thresholds,
            "removed": len(r.removed),
            "runs": [{"run_id": run_id, "why": why} for run_id, why in r.removed],
        }
        for r in reports
    ]


def manifest(dataset: Dataset, selection: Selection, options: BuildOptions, *, redact_paths: bool) -> dict[str, Any]:
    return {
        "format": "appliance-dataset/1",
        "appliance_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "selection": selection.describe(),
        "view": options.view,
        "redact_paths": redact_paths,
        "models": dict(Counter(c.run.model or "?" for c in dataset.runs)),
        "runs": len(dataset.runs),
        "scores": {
            "correct": dataset.scored("correct"),
            "incorrect": dataset.scored("incorrect"),
            "unscored": sum(1 for c in dataset.runs if c.score is None),
            "sources": dataset.score_sources,
        },
        "sft": {
            "file": SFT_FILE if dataset.sft else None,
            "trajectories": len(dataset.sft),
            "run_ids": dataset.sft_run_ids,
        },
        "dpo": {
            "file": DPO_FILE if dataset.dpo else None,
            "pairs": len(dataset.dpo),
            "run_ids": [{"chosen": good, "rejected": bad} for good, bad in dataset.dpo_run_ids],
            "notes": dataset.dpo_notes,
        },
        "filters": {side: _filters_json(dataset.filters[side]) for side in SIDES},
        "source_run_ids": [c.run.run_id for c in dataset.runs],
    }


def card(dataset: Dataset, meta: dict[str, Any]) -> str:
    """A short dataset card, with the Hugging Face front matter that names the two files as configs."""
    configs = [(name, f) for name, f, rows in (("sft", SFT_FILE, dataset.sft), ("dpo", DPO_FILE, dataset.dpo)) if rows]
    lines = ["---"]
    if configs:
        lines.append("configs:")
        for name, filename in configs:
            lines += [f"- config_name: {name}", f"  data_files: {filename}"]
    lines += [
        "tags:",
        "- agent",
        "- tool-use",
        "- mirothinker",
        "---",
        "",
        "# Agent trajectories from the appliance",
        "",
    ]
    models = ", ".join(f"`{m}` ({n})" for m, n in meta["models"].items()) or "none"
    lines += [
        f"Built by the appliance {meta['appliance_version']} on {meta['created_at']} from {meta['runs']} run(s) "
        f"of its history. Models: {models}. Scores: {meta['scores']['correct']} correct, "
        f"{meta['scores']['incorrect']} incorrect, {meta['scores']['unscored']} unscored.",
        "",
        "## Files",
        "",
        f"- `{SFT_FILE}`: {len(dataset.sft)} trajectories, one per line, in the `messages` column (TRL's "
        "SFTTrainer): the system prompt, the task, every assistant turn with its `<think>` text, the tool results "
        f"as user messages as the model read them ({_view_words(meta['view'])}), the summary prompt and the "
        "final answer."
        if dataset.sft
        else f"- `{SFT_FILE}`: not written: no trajectory passed the filters.",
        f"- `{DPO_FILE}`: {len(dataset.dpo)} pairs in `prompt` / `chosen` / `rejected` (TRL's DPOTrainer): the "
        "prompt is the system prompt and the task; chosen is a run of that prompt scored correct, rejected one "
        "scored incorrect (preference by final-answer correctness only)."
        if dataset.dpo
        else f"- `{DPO_FILE}`: not written: " + "; ".join(meta["dpo"]["notes"]) + ".",
        f"- `{MANIFEST_FILE}`: the selection, the filters with their thresholds, what each removed and why, "
        "and the source run ids (line order of both files).",
        "",
        "## Filters",
        "",
        "| applies to | filter | thresholds | removed |",
        "| --- | --- | --- | --- |",
    ]
    for side in SIDES:
        for report in dataset.filters[side]:
            knobs = ", ".join(f"{k}={v}" for k, v in report.thresholds.items()) or "-"
            removed = str(len(report.removed)) if report.enabled else "off"
            lines.append(f"| {SIDE_TITLES[side]} | {report.name} | {knobs} | {removed} |")
    lines += [
        "",
        "## Privacy",
        "",
        "Credentials are removed as in the history (keys named like api_key or token, user:password in URLs, "
        "?api_key= parameters, the values of the configured API keys)"
        + (", and home and workspace paths are replaced by `~` and `<workspace>`." if meta["redact_paths"] else ".")
        + " Tasks, web pages and tool output are included as recorded: review before sharing.",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        *(f'{name} = load_dataset("json", data_files="{filename}", split="train")' for name, filename in configs),
        "```",
        "",
    ]
    return "\n".join(lines)


def _view_words(view: str) -> str:
    if view == "context":
        return "older results replaced by the placeholder, as in the context of the final turn"
    return "every result whole"


def check_output(out: Path, *, force: bool) -> None:
    """Refuse an existing path unless --force, never anything but a directory, and never a missing parent.

    Only OUT itself is created: folders a user did not ask for are not made on their host.
    """
    if not out.parent.is_dir():
        raise ConfigError(
            f"the folder {out.parent} does not exist", f"create it first (mkdir -p {out.parent}), or choose another OUT"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory", "choose a new directory for the dataset")
    if out.exists() and not force:
        raise ConfigError(
            f"{out} already exists", "choose a new directory, or pass --force to replace its dataset files"
        )


def write_dataset(out: Path, dataset: Dataset, meta: dict[str, Any], *, force: bool) -> list[Path]:
    """Write the files; the data files only when they have rows. Returns the files written."""
    check_output(out, force=force)
    files = {MANIFEST_FILE: json.dumps(meta, ensure_ascii=False, indent=2) + "\n", CARD_FILE: card(dataset, meta)}
    if dataset.sft:
        files[SFT_FILE] = _jsonl(dataset.sft)
    if dataset.dpo:
        files[DPO_FILE] = _jsonl(dataset.dpo)
    try:
        if out.is_dir():
            _replace_files(out, files)
        else:
            _new_directory(out, files)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the dataset to {out}: {exc.strerror or exc}", "choose a writable directory"
        ) from exc
    return [out / name for name in files]


def _new_directory(out: Path, files: dict[str, str]) -> None:
    # Not mkdtemp: its 0700 would become OUT's mode; mkdir gives the user's umask like any folder they make.
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_files(out: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        partial = out / f".{name}.partial"
        partial.write_text(text, encoding="utf-8")
        partial.replace(out / name)
    for stale in (SFT_FILE, DPO_FILE):  # a data file this build has no rows for would describe another selection
        if stale not in files:
            (out / stale).unlink(missing_ok=True)
