"""Finding `<use_mcp_tool>` blocks in a reply and repairing their arguments."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from json_repair import repair_json

MCP_TAGS = (
    "<use_mcp_tool>",
    "</use_mcp_tool>",
    "<server_name>",
    "</server_name>",
    "<arguments>",
    "</arguments>",
)

# Phrases after which the reference discards the reply and samples again.
REFUSAL_PHRASES = (
    "time constraint",
    "I’m sorry, but I can’t",
    "I'm sorry, I cannot solve",
)

_CALL = re.compile(
    r"<use_mcp_tool>\s*<server_name>(.*?)</server_name>\s*<tool_name>(.*?)</tool_name>"
    r"\s*<arguments>\s*([\s\S]*?)\s*</arguments>\s*</use_mcp_tool>",
    re.DOTALL,
)
_SERVER_LINE = re.compile(r"## Server name:\s*(.+)")
_TOOL_LINE = re.compile(r"### Tool name:\s*(.+)")

# The tools the model most often files under the wrong server (reference list).
_SERVER_FIX_TARGETS = frozenset({"run_python_code", "google_search", "scrape_and_extract_info"})


@dataclass(frozen=True)
class ToolCall:
    """One parsed call. `error` is set when the arguments could not be repaired."""

    server: str
    tool: str
    arguments: dict[str, Any] = field(hash=False)
    raw_arguments: str = ""
    error: str | None = None
    repaired_by: str = "json"


def tool_server_map(system_prompt: str) -> dict[str, str]:
    """tool -> server for the tools the model tends to misfile, read from the prompt."""
    mapping: dict[str, str] = {}
    server: str | None = None
    for line in system_prompt.split("\n"):
        if m := _SERVER_LINE.match(line):
            server = m.group(1).strip()
            continue
        if (m := _TOOL_LINE.match(line)) and server:
            tool = m.group(1).strip()
            if tool in _SERVER_FIX_TARGETS:
                mapping[tool] = server
    return mapping


def fix_server_names(text: str, mapping: dict[str, str]) -> str:
    """Correct known slips before parsing, as the reference does.

    `python`/`python_code` become `run_python_code`; a known tool written under
    the wrong server gets the server the system prompt lists it under.
    """
    if not mapping:
        return text
    if "run_python_code" in mapping:
        for wrong in ("python", "python_code"):
            text = text.replace(f"<tool_name>{wrong}</tool_name>", "<tool_name>run_python_code</tool_name>")
    for tool, server in mapping.items():
        tool_tag = f"<tool_name>{tool}</tool_name>"
        server_tag = f"<server_name>{server}</server_name>"
        if tool_tag not in text or server_tag in text:
            continue
        text = re.sub(
            r"<server_name>[^<]+</server_name>(\s*" + re.escape(tool_tag) + r")",
            lambda m, tag=server_tag: tag + m.group(1),  # type: ignore[misc]
            text,
        )
    return text


def _common_fixes(raw: str) -> str:
    """Python-literal slips: single quotes, None/True/False."""
    return raw.replace("'", '"').replace("None", "null").replace("True", "true").replace("False", "false")


def _escape_stray_backslashes(raw: str) -> str:
    r"""Escape backslashes that do not start a valid JSON escape (Windows paths, \d in regexes)."""
    fixed = re.sub(r"(?<!\\)\\([A-Z])", r"\\\\\1", raw)
    fixed = re.sub(r"(?<!\\)\\([0-9])", r"\\\\\1", fixed)
    return re.sub(r'(?<!\\)\\([^\\"/bfnrtu])', r"\\\\\1", fixed)


def repair_arguments(raw: str) -> tuple[dict[str, Any] | None, str]:
    """Parse a call's arguments through the repair chain.

    Returns (arguments, step) where step names the repair that worked
    ("json", "common", "backslashes", "json_repair"), or (None, reason).
    """
    text = raw.strip()
    if not text:
        return {}, "json"
    attempts = (
        ("json", lambda s: s),
        ("common", _common_fixes),
        ("backslashes", _escape_stray_backslashes),
    )
    for step, transform in attempts:
        try:
            value = json.loads(transform(text))
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, dict):
            return value, step
    try:
        repaired = repair_json(text, return_objects=True)
    except Exception:  # json_repair raises assorted errors on garbage
        repaired = None
    if isinstance(repaired, dict) and repaired:
        return repaired, "json_repair"
    return None, "arguments are not a JSON object"


def _drop_nulls(arguments: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in arguments.items() if v is not None}


def fix_argument_names(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Argument-name slips the reference corrects before executing a call."""
    fixed = dict(arguments)
    if tool == "scrape_and_extract_info" and "info_to_extract" not in fixed:
        for wrong in ("description", "introduction"):
            if wrong in fixed:
                fixed["info_to_extract"] = fixed.pop(wrong)
                break
    if tool == "run_python_code":
        if "code_block" not in fixed and "code" in fixed:
            fixed["code_block"] = fixed.pop("code")
        # The reference's sandbox treats a missing id as "run statelessly".
        fixed.setdefault("sandbox_id", "default")
    return fixed


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every `<use_mcp_tool>` block of a reply, in order (think text included)."""
    calls: list[ToolCall] = []
    for server, tool, raw in _CALL.findall(text):
        server, tool, raw = server.strip(), tool.strip(), raw.strip()
        arguments, step = repair_arguments(raw)
        if arguments is None:
            calls.append(ToolCall(server, tool, {}, raw, error=step, repaired_by=""))
            continue
        calls.append(ToolCall(server, tool, fix_argument_names(tool, _drop_nulls(arguments)), raw, None, step))
    return calls


def has_mcp_tags(text: str) -> bool:
    return any(tag in text for tag in MCP_TAGS)


def refusal_phrase(text: str) -> str | None:
    return next((p for p in REFUSAL_PHRASES if p in text), None)


def query_key(tool: str, arguments: dict[str, Any]) -> str | None:
    """The key under which a repeated search or scrape is detected (reference rules)."""
    if tool == "google_search":
        return f"{tool}_{arguments.get('q', '')}"
    if tool == "scrape_and_extract_info":
        return f"{tool}_{arguments.get('url', '')}_{arguments.get('info_to_extract', '')}"
    if tool in ("scrape_website", "sogou_search", "search_and_browse"):
        value = arguments.get("url") or arguments.get("Query") or arguments.get("subtask") or ""
        return f"{tool}_{value}"
    return None


def text_before_tool_call(text: str) -> str:
    """What the model said before its tool call (for display)."""
    index = text.find("<use_mcp_tool>")
    return (text if index < 0 else text[:index]).strip()


def split_thinking(text: str) -> tuple[str, str]:
    """(thinking, rest) for a reply that may start with <think>...</think>."""
    start = text.find("<think>")
    end = text.find("</think>")
    if end < 0:
        if start >= 0:  # unterminated: all of it is still thinking
            return text[start + len("<think>") :].strip(), ""
        return "", text
    think_start = start + len("<think>") if 0 <= start < end else 0
    return text[think_start:end].strip(), text[end + len("</think>") :].lstrip()


def is_degenerate(text: str) -> bool:
    """The reference's repetition check: the last 50 characters recur more than 5 times."""
    return len(text) >= 50 and text.count(text[-50:]) > 5
