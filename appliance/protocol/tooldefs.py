"""Tool descriptions as the model sees them in the system prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, the description text and the JSON schema of its arguments.

    `description` and `input_schema` are printed verbatim into the system prompt
    (the schema as a Python dict repr, as the reference does), so their exact
    text and key order matter.
    """

    name: str
    description: str
    input_schema: dict[str, Any] = field(hash=False)

    def required(self) -> list[str]:
        return list(self.input_schema.get("required", []))

    def properties(self) -> dict[str, Any]:
        props = self.input_schema.get("properties", {})
        return props if isinstance(props, dict) else {}


@dataclass(frozen=True)
class ServerSpec:
    name: str
    tools: tuple[ToolSpec, ...]
