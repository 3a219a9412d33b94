"""A user's MCP server as one more tool server of a run.

Its tools are listed in the system prompt exactly as the reference agent lists
an MCP server's: `tool.name`, `tool.description` (None prints as "None") and
`tool.inputSchema`. Calls pass through the same ToolBox as the built-in tools
(argument check, timeout, cancel, truncation by the loop, history events).

Failures never end a run: a server that cannot start leaves its header in the
prompt with no tools (as the reference does) and a notice; a call to it
returns a "failed" result saying why. A server that dies or hangs mid-run is
restarted at its next call, at most RESTARTS_PER_RUN times.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcp import types

from appliance.config import McpServerConfig, Settings
from appliance.protocol.tooldefs import ToolSpec
from appliance.tools.base import CallContext, ToolOutput, ToolServer, ToolServerUnavailable
from appliance.tools.mcp.connection import McpConnection, McpConnectionError, describe_error

RESTARTS_PER_RUN = 3


def log_path_for(settings: Settings, name: str) -> Path:
    return settings.dirs.data_dir / "logs" / f"mcp-{name}.log"


def tool_spec(tool: types.Tool) -> ToolSpec:
    # The reference prints str(description) and the schema dict as the server sent them.
    return ToolSpec(tool.name, str(tool.description), dict(tool.inputSchema))


def offered_specs(config: McpServerConfig, tools: Sequence[types.Tool]) -> tuple[tuple[ToolSpec, ...], list[str]]:
    """The tools the model is offered (the `tools` allowlist, if any) and the allowed names the server lacks."""
    allowed = set(config.tools)
    offered = tuple(tool_spec(t) for t in tools if not allowed or t.name in allowed)
    return offered, sorted(allowed - {t.name for t in tools})


def content_text(block: types.ContentBlock) -> str:
    """One content block as text the model can read; binary content is described, not inlined."""
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, (types.ImageContent, types.AudioContent)):
        kind = "image" if isinstance(block, types.ImageContent) else "audio"
        size = len(block.data) * 3 // 4
        return f"[{kind} content ({block.mimeType}, about {size:,} bytes) omitted: this agent reads text only]"
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            return resource.text
        return f"[binary resource {resource.uri} ({resource.mimeType or 'unknown type'}) omitted]"
    if isinstance(block, types.ResourceLink):
        return f"[resource link: {block.name} {block.uri}]"
    return f"[{getattr(block, 'type', 'unknown')} content omitted]"


def result_text(result: types.CallToolResult) -> str:
    """What the model reads from a tools/call result.

    The reference keeps only `content[-1].text`; its servers answer with one text
    block, where this is the same. A server answering with several blocks gets
    them all, one per line, and structured-only results are printed as JSON.
    """
    if result.content:
        return "\n".join(content_text(block) for block in result.content)
    if result.structuredContent is not None:
        return json.dumps(result.structuredContent, ensure_ascii=False, indent=2)
    return ""


class ExternalMcpServer(ToolServer):
    def __init__(self, config: McpServerConfig, *, log_path: Path | None = None) -> None:
        self.name = config.name
        self.config = config
        self.log_path = log_path
        self.call_timeout = config.timeout or None
        self._lock = threading.Lock()
        self._connection: McpConnection | None = None
        self._specs: tuple[ToolSpec, ...] | None = None
        self._starts = 0
        self._last_error: str | None = None
        self._problems: list[str] = []
        self._abandon_marks: list[tuple[McpConnection, threading.Event]] = []
        self._closers: list[threading.Thread] = []
        self._restart_notice: str | None = None  # for the next result, after a quiet restart

    # ------------------------------------------------------------ ToolServer

    def tools(self) -> Sequence[ToolSpec]:
        """The listing, from the first successful start (the system prompt keeps it for the run)."""
        with self._lock:
            if self._specs is None and self._starts == 0:
                self._connect()
            return self._specs or ()

    @property
    def connected(self) -> bool:
        """Whether a session is up now (a server that exited is noticed at once, not at the next call)."""
        connection = self._connection
        return connection is not None and connection.alive

    def problems(self) -> list[str]:
        self.tools()  # a resumed run asks before anything listed the tools: let the first start finish
        return list(self._problems)

    def ensure_available(self) -> None:
        self._usable_connection()

    def start_in_background(self) -> None:
        """Start the server now, off the caller's thread: several servers then start side by side."""
        threading.Thread(target=self.tools, name=f"mcp-start-{self.name}", daemon=True).start()

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        connection = self._usable_connection()
        # The ToolBox sets ctx.cancel on a timeout or a user's cancel and returns at once; the
        # next call must not reach a server that may still be stuck, so it checks these first.
        with self._lock:
            self._abandon_marks.append((connection, ctx.cancel))
        try:
            # The ToolBox enforces ctx.timeout and sets ctx.cancel; the margin keeps its message the one shown.
            result = connection.call(tool, arguments, ctx.cancel, ctx.timeout + 5)
        except InterruptedError:
            # Cancelled or timed out by the ToolBox: a server that may be stuck is replaced.
            self._drop(connection, None)
            return ToolOutput("cancelled", is_error=True)
        except TimeoutError:
            self._drop(connection, None)
            raise
        except McpConnectionError as exc:
            message = f"MCP server '{self.name}' {exc}"
            self._drop(connection, message)
            notice = self._restart_hint(message)
            raise ToolServerUnavailable(notice) from exc
        except Exception as exc:  # a JSON-RPC error, an invalid result: the server answered badly
            return ToolOutput(f"[ERROR]: {describe_error(exc)}", is_error=True)
        finally:
            with self._lock:
                self._abandon_marks.remove((connection, ctx.cancel))
                restarted, self._restart_notice = self._restart_notice, None
        meta = {"notice": restarted} if restarted else {}
        return ToolOutput(result_text(result), is_error=bool(result.isError), meta=meta)

    def close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
            closers, self._closers = self._closers, []
        if connection is not None:
            connection.close()
        # A replaced server may still be stopping: wait, or it could outlive the appliance.
        for closer in closers:
            closer.join()

    # ------------------------------------------------------------ connection management

    def _connect(self) -> McpConnection | None:
        """Start the server once more (caller holds the lock); None and a recorded reason on failure."""
        self._starts += 1
        connection = McpConnection(self.config, self.log_path)
        try:
            tools = connection.open()
        except McpConnectionError as exc:
            self._last_error = f"MCP server '{self.name}' could not start: {exc}"
            if self._starts == 1:
                self._problems.append(
                    f"{self._last_error}. Its tools are not offered in this run. "
                    f"Check [mcp_servers.{self.name}] or run `appliance mcp list`."
                )
            return None
        self._connection = connection
        if self._specs is None:
            self._specs, missing = offered_specs(self.config, tools)
            if missing:
                self._problems.append(
                    f"MCP server '{self.name}' does not list the configured tools {missing}; "
                    f"it lists {sorted(t.name for t in tools)}"
                )
        return connection

    def _usable_connection(self) -> McpConnection:
        with self._lock:
            connection = self._connection
            abandoned = any(c is connection and cancel.is_set() for c, cancel in self._abandon_marks)
            if connection is not None and connection.alive and not abandoned:
                return connection
            if connection is not None:
                self._connection = None
                self._close_later(connection)
                if abandoned:
                    self._last_error = f"MCP server '{self.name}' did not finish a call in time"
                else:
                    self._last_error = f"MCP server '{self.name}' stopped: {connection.failure or 'connection closed'}"
                    self._restart_notice = f"{self._last_error}. It was started again for this call."
            if self._starts > RESTARTS_PER_RUN:
                raise ToolServerUnavailable(
                    f"{self._last_error or 'it is unavailable'}. It was started {self._starts} times in this run "
                    "and is not started again; carry on without it."
                )
            fresh = self._connect()
            if fresh is None:
                raise ToolServerUnavailable(self._last_error or f"MCP server '{self.name}' is unavailable")
            return fresh

    def _drop(self, connection: McpConnection, message: str | None) -> None:
        with self._lock:
            if self._connection is connection:
                self._connection = None
            if message:
                self._last_error = message
            self._close_later(connection)

    def _close_later(self, connection: McpConnection) -> None:
        """Closing waits for a stdio server to exit: not under the lock, and not on the caller's time."""
        closer = threading.Thread(target=connection.close, name=f"mcp-close-{self.name}", daemon=True)
        closer.start()
        self._closers.append(closer)

    def _restart_hint(self, message: str) -> str:
        if self._starts > RESTARTS_PER_RUN:
            return f"{message}. It has been started {self._starts} times in this run and is not started again."
        return f"{message}. It will be restarted at the next call to it."


def create_servers(settings: Settings) -> list[ExternalMcpServer]:
    return [
        ExternalMcpServer(config, log_path=log_path_for(settings, config.name))
        for config in settings.enabled_mcp_servers()
    ]
