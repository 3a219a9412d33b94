"""GAIA-format JSONL tasks: parsed row by row, bad rows reported and skipped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ConfigError
from appliance.paths import confined


@dataclass(frozen=True)
class EvalTask:
    task_id: str
    question: str
    answer: str
    level: str
    attachment: Path | None = None


@dataclass(frozen=True)
class RowError:
    line: int
    message: str


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def parse_dataset(path: Path) -> tuple[list[EvalTask], list[RowError]]:
    """Tasks in file order and the rows that could not be used, with the reason for each.

    Columns: task_id, Question, Final answer (also "Final Answer"/"answer"),
    optional file_name (a file in the dataset's folder: an absolute path, '..' or a link out of the
    folder is a row error) and Level.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read dataset {path}: {exc.strerror}", "pass a GAIA-format JSONL file") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"dataset {path} is not UTF-8 text", "pass a GAIA-format JSONL file") from exc
    tasks: list[EvalTask] = []
    errors: list[RowError] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(RowError(number, f"not JSON ({exc.msg})"))
            continue
        if not isinstance(row, dict):
            errors.append(RowError(number, "not a JSON object"))
            continue
        task_id = _text(row.get("task_id"))
        question = _text(row.get("Question"))
        answer = _text(row.get("Final answer", row.get("Final Answer", row.get("answer"))))
        missing = [name for name, value in (("task_id", task_id), ("Question", question), ("Final answer", answer))
                   if value is None]  # fmt: skip
        if missing:
            errors.append(RowError(number, f"missing or empty {', '.join(missing)}"))
            continue
        assert task_id is not None and question is not None and answer is not None
        if task_id in seen:
            errors.append(RowError(number, f"duplicate task_id {task_id!r}"))
            continue
        if any(c in task_id for c in "/\\\x00") or task_id.strip() in (".", ".."):
            # It names files: a replay directory's TASK_ID.jsonl.
            errors.append(RowError(number, f"task_id {task_id!r} cannot be a file name (no '/', '\\' or '..')"))
            continue
        attachment = None
        file_name = _text(row.get("file_name"))
        if file_name:
            attachment = confined(path.parent, file_name)
            if attachment is None:
                errors.append(
                    RowError(number, f"file_name {file_name!r} leaves the dataset's folder (absolute, '..' or a link)")
                )
                continue
            if not attachment.is_file():
                errors.append(RowError(number, f"attachment {file_name!r} not found next to the dataset"))
                continue
        seen.add(task_id)
        tasks.append(EvalTask(task_id, question, answer, _text(row.get("Level")) or "?", attachment))
    return tasks, errors
