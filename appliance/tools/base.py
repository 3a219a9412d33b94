"""The tool-server interface and the dispatcher the agent calls tools through.

A tool server has a name (what the model writes in `<server_name>`), a list of
tools with JSON schemas (printed into the system prompt) and a `call` method.
Servers are plain objects in this process; each call runs with a timeout and a
cancel event, and nothing a server does or raises can crash the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from appliance.protocol.tooldefs import ServerSpec, ToolSpec

if TYPE_CHECKING:
    from appliance.tools.archive import RunWeb

# ok: the server answered; error: the server answered with an error text of its
# own (shown to the model as is, like an MCP tool returning "[ERROR]: ...");
# failed / timeout / unknown_server: the call itself failed (the model reads
# "Tool call to T on S failed. Error: ..."); unknown_tool / bad_arguments: the
# reference's FastMCP texts; duplicate: refused by the loop; cancelled: by the user.
CallStatus = Literal[
    "ok", "error", "failed", "timeout", "unknown_server", "unknown_tool", "bad_arguments", "duplicate", "cancelled"
]
FAILED_STATUSES = frozenset({"failed", "timeout", "unknown_server"})
TRUNCATION_MARK = "\n... [Result truncated]"

log = logging.getLogger(__name__)


def truncate_result(text: str, limit: int) -> tuple[str, bool]:
    """Cut a tool result at `limit` characters, marked the way the reference marks it."""
    if limit > 0 and len(text) > limit:
        return text[:limit] + TRUNCATION_MARK, True
    return text, False


@dataclass
class CallContext:
    """What a tool call may touch, and how long it may take.

    `run_dir` holds the run's own files: `workspace` (the sandbox's /home/user)
    and `output_dir` (files the model hands back). `attachments` are the only
    host paths the model may upload from. `web` is how searches and fetches reach
    the web (live and archived, or from an archive); None fetches live, unarchived.
    """

    run_id: str
    run_dir: Path
    workspace: Path
    output_dir: Path
    attachments: tuple[Path, ...] = ()
    timeout: float = 600.0
    cancel: threading.Event = field(default_factory=threading.Event)
    web: RunWeb | None = None

    def deadline(self) -> float:
        return time.monotonic() + self.timeout


@dataclass(frozen=True)
class ToolOutput:
    """What a server returns. `text` is what the model will read."""

    text: str
    is_error: bool = False
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ToolOutcome:
    """A finished call as the loop sees it."""

    server: str
    tool: str
    text: str
    status: CallStatus
    duration_s: float
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def model_text(self, limit: int) -> tuple[str, bool]:
        """What the model reads (a failed call in the reference's words), cut at `limit`; and whether it was cut."""
        text = self.text
        if self.status in FAILED_STATUSES:
            text = f"Tool call to {self.tool} on {self.server} failed. Error: {text}"
        return truncate_result(text, limit)


class ToolServerUnavailable(Exception):
    """The server cannot serve calls now (it did not start, or it died).

    The ToolBox turns it into a "failed" result with this message, and a notice
    for the user; the run goes on.
    """


class ToolServer(ABC):
    """Implement `name`, `tools()` and `call()`; `close()` releases resources.

    `call_timeout` (seconds) caps this server's calls below the run's tool timeout.
    """

    name: str
    call_timeout: float | None = None

    @abstractmethod
    def tools(self) -> Sequence[ToolSpec]: ...

    @abstractmethod
    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release processes, connections and files."""

    def ensure_available(self) -> None:  # noqa: B027 - optional hook
        """Raise ToolServerUnavailable when calls cannot be served (a remote server may restart here)."""

    def problems(self) -> list[str]:
        """What went wrong while preparing the server, for the user (the run starts anyway)."""
        return []


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def check_arguments(spec: ToolSpec, arguments: dict[str, Any]) -> str | None:
    """A FastMCP-style validation message, or None when the arguments fit the schema."""
    problems = [f"{name}: field required" for name in spec.required() if name not in arguments]
    for name, value in arguments.items():
        prop = spec.properties().get(name)
        if not isinstance(prop, dict) or "type" not in prop:
            continue
        allowed = _JSON_TYPES.get(str(prop["type"]))
        if allowed is None:
            continue
        if isinstance(value, bool) and bool not in allowed:
            problems.append(f"{name}: expected {prop['type']}, got boolean")
        elif not isinstance(value, allowed):
            # Pydantic's lax mode accepts numbers as strings and digit strings as ints.
            if prop["type"] == "string" and isinstance(value, (int, float)):
                continue
            if prop["type"] in ("integer", "number") and isinstance(value, str) and value.strip().lstrip("-").isdigit():
                continue
            problems.append(f"{name}: expected {prop['type']}, got {type(value).__name__}")
    if not problems:
        return None
    return f"{len(problems)} validation error{'s' if len(problems) > 1 else ''}: " + "; ".join(problems)


class ToolBox:
    """The enabled tool servers, minus hidden tools, behind one safe `call`."""

    def __init__(self, servers: Iterable[ToolServer], hidden: Iterable[tuple[str, str]] = ()) -> None:
        self.servers: dict[str, ToolServer] = {}
        for server in servers:
            if server.name in self.servers:
                raise ValueError(f"two tool servers named {server.name!r}")
            self.servers[server.name] = server
        self.hidden = frozenset(hidden)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tool")

    def server_specs(self) -> list[ServerSpec]:
        specs = []
        for name, server in self.servers.items():
            tools = tuple(t for t in server.tools() if (name, t.name) not in self.hidden)
            specs.append(ServerSpec(name, tools))
        return specs

    def problems(self) -> list[str]:
        return [problem for server in self.servers.values() for problem in server.problems()]

    def _spec(self, server: str, tool: str) -> ToolSpec | None:
        if (server, tool) in self.hidden:
            return None
        return next((t for t in self.servers[server].tools() if t.name == tool), None)

    def call(self, server: str, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutcome:
        started = time.monotonic()

        def outcome(text: str, status: CallStatus, meta: dict[str, Any] | None = None) -> ToolOutcome:
            return ToolOutcome(server, tool, text, status, time.monotonic() - started, meta or {})

        if server not in self.servers:
            return outcome(f"Server '{server}' not found.", "unknown_server")
        try:
            self.servers[server].ensure_available()
        except ToolServerUnavailable as exc:
            return outcome(str(exc), "failed", {"notice": str(exc)})
        spec = self._spec(server, tool)
        if spec is None:
            return outcome(f"Unknown tool: {tool}", "unknown_tool")
        problem = check_arguments(spec, arguments)
        if problem:
            return outcome(f"Error executing tool {tool}: {problem}", "bad_arguments")

        # Each call gets its own cancel event: set by the run's cancel, or by the
        # timeout below, so a server can stop its subprocess either way.
        call_ctx = CallContext(
            run_id=ctx.run_id,
            run_dir=ctx.run_dir,
            workspace=ctx.workspace,
            output_dir=ctx.output_dir,
            attachments=ctx.attachments,
            timeout=ctx.timeout,
            cancel=threading.Event(),
            web=ctx.web,
        )
        timeout = min(ctx.timeout, self.servers[server].call_timeout or ctx.timeout)
        call_ctx.timeout = timeout
        future: Future[ToolOutput] = self._pool.submit(self.servers[server].call, tool, arguments, call_ctx)
        deadline = started + timeout
        while True:
            if ctx.cancel.is_set():
                call_ctx.cancel.set()
                return outcome("Tool call was cancelled by the user.", "cancelled")
            try:
                result = future.result(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                break
            except FutureTimeout:
                if time.monotonic() >= deadline:
                    call_ctx.cancel.set()
                    return outcome(
                        f"Tool call timed out after {timeout:g} seconds. Try a smaller step that finishes faster.",
                        "timeout",
                    )
            except KeyboardInterrupt:
                call_ctx.cancel.set()  # Ctrl-C: stop the server's work too, or the process waits for it at exit
                raise
            except ToolServerUnavailable as exc:
                return outcome(str(exc), "failed", {"notice": str(exc)})
            except Exception as exc:  # a server bug must never end the run
                return outcome(f"Tool execution failed: {type(exc).__name__}: {exc}", "failed")
        return outcome(result.text, "error" if result.is_error else "ok", dict(result.meta))

    def close(self) -> None:
        """Close every server, each even when another fails (a failure is logged with its traceback)."""
        for name, server in self.servers.items():
            try:
                server.close()
            except Exception:
                log.warning("closing the %s tool server failed", name, exc_info=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
