"""How numbers, tool calls and results read on screen. Pure functions over plain values; no textual import.

Everything returned here is plain text with control characters written as
visible escapes (textutil.for_terminal); widgets show it as literal content
(never parsed as markup).
"""

from __future__ import annotations

import json
from typing import Any

from appliance.textutil import for_terminal, one_line

# The argument that says what a call is about, per tool (the rest shows when expanded).
_SUBJECT_KEYS = {
    "google_search": "q",
    "scrape_and_extract_info": "url",
    "run_command": "command",
    "run_python_code": "code_block",
    "upload_file_from_local_to_sandbox": "local_file_path",
    "download_file_from_internet_to_sandbox": "url",
    "download_file_from_sandbox_to_local": "sandbox_file_path",
}
TRUNCATED_MARK = "[Result truncated]"

SUMMARY_REASONS = {
    "no_tool_call": "the model called no more tools",
    "max_turns": "the turn budget is spent",
    "context_full": "the context window is full",
    "rollbacks": "too many replies were discarded in a row",
    "resumed": "the run was resumed at its summary",
}

ROLLBACK_REASONS = {
    "format": "tool-call tags without a parseable call",
    "refusal": "a refusal",
    "bad_arguments": "invalid tool arguments",
    "duplicate": "a repeated query",
    "repetition": "the reply repeats itself",
    "empty": "an empty reply",
    "tool_error": "a wasted tool call",
    "empty_search": "a search with no results",
    "context_full": "dropped to make room for the final answer",
    "no_boxed": "no \\boxed{} answer",
}


def clean(text: str) -> str:
    """Untrusted text as the screen may show it: controls as visible escapes, newlines and tabs kept."""
    return for_terminal(text)


def duration(seconds: float) -> str:
    """0.4s, 12s, 2m05s, 1h02m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def clock(seconds: float) -> str:
    """Elapsed time as 0:07, 12:34 or 1:02:03."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def count(n: int) -> str:
    """950, 12.3k, 262k, 1.2M."""
    if n < 1000:
        return str(n)
    if n < 100_000:
        return f"{n / 1000:.1f}k".replace(".0k", "k")
    if n < 1_000_000:
        return f"{n // 1000}k"
    return f"{n / 1_000_000:.1f}M".replace(".0M", "M")


def pretty_arguments(arguments: dict[str, Any]) -> str:
    return clean(json.dumps(arguments, ensure_ascii=False, indent=2))


def tool_subject(tool: str, arguments: dict[str, Any], limit: int = 60) -> str:
    """One line saying what the call is about: the query, the URL, the command."""
    key = _SUBJECT_KEYS.get(tool)
    value = arguments.get(key) if key else None
    if value is None:
        value = next((v for v in arguments.values() if isinstance(v, str) and v.strip()), None)
    if value is None:
        return ""
    return one_line(str(value), limit)


def result_preview(result: str, *, max_lines: int = 12, max_chars: int = 1200) -> tuple[str, int]:
    """(the first lines of a result, characters left out)."""
    text = clean(result)
    lines = text.splitlines()
    cut = "\n".join(lines[:max_lines])
    if len(cut) > max_chars:
        cut = cut[:max_chars]
    return cut.rstrip(), max(0, len(text) - len(cut))


def search_preview(result: str, limit: int = 8) -> str | None:
    """A search result (Serper-shaped JSON) as numbered titles and links; None if it is not one."""
    try:
        data = json.loads(result)
    except (ValueError, TypeError):
        return None
    organic = data.get("organic") if isinstance(data, dict) else None
    if not isinstance(organic, list):
        return None
    if not organic:
        return "(no results)"
    lines = []
    for number, entry in enumerate(organic[:limit], 1):
        if not isinstance(entry, dict):
            continue
        lines.append(f"{number}. {one_line(str(entry.get('title', '')), 100)}")
        lines.append(f"   {one_line(str(entry.get('link', '')), 100)}")
    if len(organic) > limit:
        lines.append(f"… {len(organic) - limit} more")
    return "\n".join(lines)


def split_error(error: str) -> tuple[str, str]:
    """An ApplianceError.one_line() text as (message, fix)."""
    message, marker, fix = error.partition(". Fix: ")
    return clean(message), clean(fix) if marker else ""


def rollback_text(reason: str, detail: str) -> str:
    said = ROLLBACK_REASONS.get(reason, reason.replace("_", " "))
    return f"{said}: {one_line(detail, 80)}" if detail else said


def word_count(text: str) -> int:
    return len(text.split())
