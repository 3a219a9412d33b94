"""MiroThinker versions and the run settings each was evaluated with.

The reference's recommended configurations differ by version only in the turn
budget and in whether a failed attempt writes a failure summary
(conf/agent/mirothinker_v1.0_keep5.yaml, mirothinker_v1.5_keep5_max400.yaml,
mirothinker_1.7_keep5_max200.yaml at 370f983). The version comes from
[model] version, else from the weights' names (file, path, repository, served
model name), else from the GGUF's own metadata (general.name and friends).
The settings apply where no layer of the configuration set them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

VERSION_SETTINGS: dict[str, dict[str, Any]] = {
    "1.0": {"max_turns": 600, "retry_with_summary": True},
    "1.5": {"max_turns": 400, "retry_with_summary": True},
    "1.7": {"max_turns": 200, "retry_with_summary": False},
}
_NAMED = re.compile(r"mirothinker[\s_.-]*v?(1\.[057])(?![0-9])", re.IGNORECASE)
_METADATA_KEYS = (
    "general.name", "general.basename", "general.finetune", "general.version", "general.base_model.0.name",
)  # fmt: skip


def canonical_version(value: str) -> str | None:
    """ "v1.5", "1.5" -> "1.5"; "" -> None; anything unknown -> None."""
    text = value.strip().lower().removeprefix("v")
    return text if text in VERSION_SETTINGS else None


def version_from_names(names: Iterable[str]) -> str | None:
    """The version a weights name says ("miromind-ai_MiroThinker-v1.5-30B-Q4_K_M.gguf" -> "1.5")."""
    for name in names:
        found = _NAMED.search(name or "")
        if found:
            return found.group(1)
    return None


def version_from_metadata(metadata: Mapping[str, Any]) -> str | None:
    """The version in a GGUF header: a MiroThinker name, or general.version beside one."""
    names = [str(metadata.get(key) or "") for key in _METADATA_KEYS]
    named = version_from_names(names)
    if named:
        return named
    if any("mirothinker" in n.lower() for n in names):
        return canonical_version(str(metadata.get("general.version") or ""))
    return None
