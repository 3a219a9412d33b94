"""Helpers for the TUI tests: scripted tool servers under the real server names, replay scripts, waiting.

The servers answer deterministically (the subject of these tests is the UI, not
search quality); they are registered in runtime.TOOL_SERVERS, so runs are built
by the same code path as a user's (settings -> build_toolbox -> prepare_run).
"""

from __future__ import annotations

import asyncio
import dataclasses
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


def transcript_outline(main: Any) -> list[str]:
    """The main screen's transcript, top to bottom: each note's text, each tool call as finished or
    stopped (a turn without calls as "turn"), and "answer" for the answer panel."""
    from appliance.tui.toolcall import ToolCallView
    from appliance.tui.widgets import AnswerPanel, NoteView, TurnView

    lines: list[str] = []
    for child in main.transcript.children:
        if isinstance(child, NoteView):
            lines.append(str(child.render()))
        elif isinstance(child, TurnView):
            calls = list(child.query(ToolCallView))
            lines += ["finished call" if v.finished else "stopped call" for v in calls] or ["turn"]
        elif isinstance(child, AnswerPanel):
            lines.append("answer")
    return lines


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text lines (the compositor's render of the current screen)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


# ---------------------------------------------------------------- fixed runs (for snapshots)

FIXED_SETTINGS = {"profile": "cpu-8b", "agent": {"max_turns": 600, "keep_last": 5}}
FIXED_BACKEND = {"backend": "llamacpp", "model": "MiroThinker-v1.0-8B-Q4_K_M.gguf", "context_length": 32768}


def fixed_run_events(run_id: str, task: str, status: str = "answered") -> list[Any]:
    """The events of a short research run with exact times and counts, as the loop would emit them."""
    from appliance.agent import events as ev

    search_result = json.dumps(
        {
            "organic": [
                {"title": "Phobos and Deimos - NASA", "link": "https://science.nasa.gov/mars/moons/", "position": 1},
                {"title": "Moons of Mars - Wikipedia", "link": "https://en.wikipedia.org/wiki/Moons_of_Mars"},
            ]
        },
        indent=2,
    )
    scrape_args = {"url": "https://science.nasa.gov/mars/moons/", "info_to_extract": "how many moons Mars has"}
    page = "Mars has two small moons, Phobos and Deimos, discovered by Asaph Hall in August 1877."
    out: list[Any] = [
        ev.RunStarted(run_id, task, task, "system prompt", FIXED_SETTINGS, FIXED_BACKEND),
        ev.TurnStarted(1, "turn", 2310),
        ev.TextDelta(1, "<think>\nI should search for the moons of Mars first.\n</think>\n\nLet me search.\n"),
        ev.TextDelta(1, tool_call(specs.SEARCH_SERVER, "google_search", {"q": "moons of Mars"}).split("\n\n", 1)[1]),
        ev.TurnEnded(1, "turn", "", "stop", 2310, 96, 2310, 3.2, 1),
        ev.TurnKept(1, "turn"),
        ev.ToolCallStarted(1, 0, specs.SEARCH_SERVER, "google_search", {"q": "moons of Mars"}),
        ev.ToolCallFinished(
            1, 0, specs.SEARCH_SERVER, "google_search", {"q": "moons of Mars"}, search_result, "ok", 1.4, False, 412
        ),
        ev.ObservationAdded(1, search_result, 120),
        ev.TurnStarted(2, "turn", 2601),
        ev.TextDelta(2, "<think>\nThe NASA page should say.\n</think>\n\n"),
        ev.TurnEnded(2, "turn", "", "stop", 2601, 88, 291, 2.9, 1),
        ev.TurnKept(2, "turn"),
        ev.ToolCallStarted(2, 0, specs.SCRAPE_SERVER, "scrape_and_extract_info", scrape_args),
        ev.ToolCallFinished(
            2,
            0,
            specs.SCRAPE_SERVER,
            "scrape_and_extract_info",
            scrape_args,
            page + "\n[Result truncated]",
            "ok",
            6.8,
            True,
            48211,
        ),
        ev.ObservationAdded(2, page, 40),
        ev.ToolResultOmitted(1),
    ]
    if status == "interrupted":
        stopped = "interrupted by the user"
        out.append(ev.RunFinished(run_id, "interrupted", None, "", 2, 2, 4911, 184, 21.5, stopped, 130))
        return out
    out += [
        ev.TurnStarted(3, "turn", 2702),
        ev.TextDelta(3, "<think>\nTwo moons.\n</think>\n\nMars has **two** moons: *Phobos* and *Deimos*."),
        ev.TurnEnded(3, "turn", "", "stop", 2702, 31, 101, 1.1, 0),
        ev.TurnKept(3, "turn"),
        ev.SummaryStarted("no_tool_call", "Summarize"),
        ev.TurnStarted(4, "summary", 2760),
        ev.TextDelta(4, "Mars has two moons, Phobos and Deimos (https://science.nasa.gov/mars/moons/).\n\n\\boxed{2}"),
        ev.TurnEnded(4, "summary", "", "stop", 2760, 42, 58, 1.5, 0),
        ev.RunFinished(run_id, "answered", "2", "\\boxed{2}", 3, 2, 10373, 257, 83.4),
    ]
    return out


def record_fixed_run(
    db: Path, run_id: str, task: str, status: str = "answered", started_at: str = "", parent_run: str = ""
) -> None:
    """Write a fixed run through the store's real recorder, with a fixed start time (`parent_run`: a follow-up)."""
    from appliance.agent.events import RunStarted, TextDelta, TurnEnded
    from appliance.store import open_history

    with open_history(db) as history:
        recorder = history.recorder()
        text: dict[int, str] = {}
        for event in fixed_run_events(run_id, task, status):
            if isinstance(event, TextDelta):
                text[event.turn] = text.get(event.turn, "") + event.text
            if isinstance(event, TurnEnded):
                # The reply as streamed (the events above leave `content` empty to keep them short).
                event = dataclasses.replace(event, content=text.get(event.turn, ""))
            if isinstance(event, RunStarted) and parent_run:
                event = dataclasses.replace(event, parent_run=parent_run, context_mode="conversation")
            recorder(event)
        with history.lock:
            history.db.conn.execute(
                "UPDATE runs SET started_at = ?, pid = NULL WHERE run_id = ?",
                (started_at or "2025-01-01T09:45:00.000+00:00", run_id),
            )
            history.db.conn.commit()
