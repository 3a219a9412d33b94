"""Helpers for the TUI tests: scripted tool servers under the real server names, replay scripts, waiting.

The servers answer deterministically (the subject of these tests is the UI, not
search quality); they are registered in runtime.TOOL_SERVERS, so runs are built
by the same code path as a user's (settings -> build_toolbox -> prepare_run).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.agent import runtime
from appliance.config import Settings
from appliance.llm.base import Backend
from appliance.protocol.tooldefs import ToolSpec
from appliance.tools import specs
from appliance.tools.base import CallContext, ToolOutput, ToolServer
from tests.conftest import tool_call


class Search(ToolServer):
    """google_search: two results per query, links derived from the query."""

    name = specs.SEARCH_SERVER

    def tools(self) -> Sequence[ToolSpec]:
        return specs.SEARCH_TOOLS

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        q = str(arguments.get("q", ""))
        slug = "-".join(q.lower().split())[:40]
        organic = [
            {"title": f"{q} ({i})", "link": f"https://example.org/{slug}/{i}", "snippet": f"About {q}.", "position": i}
            for i in (1, 2)
        ]
        return ToolOutput(json.dumps({"organic": organic, "searchParameters": {"q": q}}, indent=2))


class Scrape(ToolServer):
    name = specs.SCRAPE_SERVER

    def tools(self) -> Sequence[ToolSpec]:
        return specs.SCRAPE_TOOLS

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        return ToolOutput(f"The page {arguments['url']} says: {arguments.get('info_to_extract', '')} is 2.")


class Python(ToolServer):
    """tool-python: `wait FILE` blocks until FILE exists in the workspace (or the call is cancelled);
    `flood N` prints N characters; anything else is echoed."""

    name = specs.PYTHON_SERVER

    def tools(self) -> Sequence[ToolSpec]:
        return specs.PYTHON_TOOLS

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        if tool == "create_sandbox":
            return ToolOutput("Sandbox created with sandbox_id: sbx-1")
        command = str(arguments.get("command") or arguments.get("code_block") or "")
        if command.startswith("wait "):
            (ctx.workspace / "waiting").write_text("yes", encoding="utf-8")
            release = ctx.workspace / command.split()[1]
            while not release.exists():
                if ctx.cancel.is_set():
                    return ToolOutput("cancelled", is_error=True)
                time.sleep(0.01)
            return ToolOutput("released")
        if command.startswith("flood "):
            return ToolOutput("x" * int(command.split()[1]))
        return ToolOutput(f"ran: {command}")


def create_search(settings: Settings, get_backend: Callable[[], Backend]) -> ToolServer:
    return Search()


def create_scrape(settings: Settings, get_backend: Callable[[], Backend]) -> ToolServer:
    return Scrape()


def create_python(settings: Settings, get_backend: Callable[[], Backend]) -> ToolServer:
    return Python()


SERVERS = {
    specs.SEARCH_SERVER: "tests.tui_support:create_search",
    specs.SCRAPE_SERVER: "tests.tui_support:create_scrape",
    specs.PYTHON_SERVER: "tests.tui_support:create_python",
}


def use_scripted_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, target in SERVERS.items():
        monkeypatch.setitem(runtime.TOOL_SERVERS, name, target)


def search(q: str, thinking: str = "") -> str:
    return tool_call(specs.SEARCH_SERVER, "google_search", {"q": q}, thinking)


def scrape(url: str, info: str, thinking: str = "") -> str:
    return tool_call(specs.SCRAPE_SERVER, "scrape_and_extract_info", {"url": url, "info_to_extract": info}, thinking)


def command(text: str, thinking: str = "") -> str:
    return tool_call(specs.PYTHON_SERVER, "run_command", {"command": text, "sandbox_id": "sbx-1"}, thinking)


def answer(text: str, thinking: str = "I know the answer.") -> str:
    return f"<think>\n{thinking}\n</think>\n\nThe answer is \\boxed{{{text}}}."


def write_script(path: Path, turns: Sequence[str | dict[str, Any]]) -> Path:
    lines = [json.dumps(t if isinstance(t, dict) else {"content": t}) for t in turns]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll the app's state from the test (the app runs in the same event loop)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text lines (the compositor's render of the current screen)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())
