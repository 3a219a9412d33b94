"""Scripted stand-ins for loop tests: a tool server with canned behaviour and a replay backend that
records what the model was shown. The real tool servers are tested on their own against real
components; here the subject is the loop."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from appliance.agent.events import AgentEvent
from appliance.agent.loop import Agent
from appliance.agent.state import RunState, new_state
from appliance.config import AgentSettings
from appliance.llm.base import ChatMessage, Purpose, StreamEvent
from appliance.llm.replay import ReplayBackend, ReplayTurn
from appliance.protocol.prompt import render_system_prompt, render_task_message
from appliance.protocol.tooldefs import ToolSpec
from appliance.tools import specs
from appliance.tools.base import CallContext, ToolBox, ToolOutput, ToolServer


class RecordingReplay(ReplayBackend):
    """A replay backend that keeps every prompt it was given."""

    def __init__(self, turns: Sequence[str | ReplayTurn], **kwargs: Any) -> None:
        super().__init__([t if isinstance(t, ReplayTurn) else ReplayTurn(t) for t in turns], **kwargs)
        self.prompts: list[list[ChatMessage]] = []
        self.purposes: list[str] = []

    @property
    def last_messages(self) -> list[str]:
        """The last message of every prompt (for single-message calls such as extraction)."""
        return [prompt[-1].content for prompt in self.prompts]

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        purpose: Purpose = "turn",
        cancel: threading.Event | None = None,
    ) -> Iterator[StreamEvent]:
        self.prompts.append(list(messages))
        self.purposes.append(purpose)
        yield from super().stream_chat(messages, max_tokens=max_tokens, purpose=purpose, cancel=cancel)


class ScriptedSearch(ToolServer):
    """`search_and_scrape_webpage` answering from a dict; counts calls."""

    name = specs.SEARCH_SERVER

    def __init__(self, results: dict[str, list[dict[str, str]]] | None = None, *, delay: float = 0.0) -> None:
        self.results = results or {}
        self.calls: list[dict[str, Any]] = []
        self.delay = delay

    def tools(self) -> Sequence[ToolSpec]:
        return specs.SEARCH_TOOLS

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        self.calls.append(arguments)
        if self.delay:
            ctx.cancel.wait(self.delay)
        organic = [
            {"title": r["title"], "link": r["link"], "snippet": r.get("snippet", ""), "position": i + 1}
            for i, r in enumerate(self.results.get(arguments["q"], []))
        ]
        text = json.dumps({"organic": organic, "searchParameters": {"q": arguments["q"]}}, indent=2)
        return ToolOutput(text, meta={"empty": not organic})


class ScriptedPython(ToolServer):
    """`tool-python` whose run_command returns `output_for(command)`; can sleep, fail or flood."""

    name = specs.PYTHON_SERVER

    def __init__(self, output_for: Callable[[str], str] | None = None) -> None:
        self.output_for = output_for or (lambda command: f"ran: {command}")
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def tools(self) -> Sequence[ToolSpec]:
        return specs.PYTHON_TOOLS

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        self.calls.append((tool, arguments))
        if tool == "create_sandbox":
            return ToolOutput("Sandbox created with sandbox_id: sbx-test")
        command = str(arguments.get("command") or arguments.get("code_block") or "")
        if command.startswith("sleep "):
            seconds = float(command.split()[1])
            end = time.monotonic() + seconds
            while time.monotonic() < end and not ctx.cancel.is_set():
                time.sleep(0.01)
            return ToolOutput("slept")
        if command == "crash":
            raise RuntimeError("the server broke")
        return ToolOutput(self.output_for(command))


def make_agent(
    turns: Sequence[str],
    servers: Sequence[ToolServer],
    tmp_path: Path,
    *,
    context_length: int = 262_144,
    max_tokens: int = 4096,
    tool_timeout: float = 30.0,
    hidden: Sequence[tuple[str, str]] = (("tool-python", "download_file_from_sandbox_to_local"),),
    task: str = "How many moons does Mars have?",
    **agent_settings: Any,
) -> tuple[Agent, RunState, RecordingReplay]:
    backend = RecordingReplay(turns, context_length=context_length)
    toolbox = ToolBox(servers, hidden=hidden)
    ctx = CallContext("run-test", tmp_path, tmp_path / "ws", tmp_path / "out", timeout=tool_timeout)
    agent = Agent(backend, toolbox, AgentSettings(**agent_settings), ctx, max_tokens=max_tokens)
    system = render_system_prompt(dt.date(2025, 1, 1), toolbox.server_specs())
    state = new_state("run-test", task, render_task_message(task), system)
    return agent, state, backend


def run_all(agent: Agent, state: RunState) -> list[AgentEvent]:
    return list(agent.run(state))
