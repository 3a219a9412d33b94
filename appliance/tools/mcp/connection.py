"""One live session with an external MCP server, driven from synchronous code.

The SDK is async (anyio) and its transports are context managers that must be
entered and left by the same task, while the agent calls tools from worker
threads. So each connection owns a thread with its own event loop, and one task
on it (`_hold`) opens the transport and the session, lists the tools, and keeps
them open until `close()`. Calls are submitted to that loop from any thread.

A stdio server's stderr goes to a log file (it would tear the TUI apart on the
terminal), and its last lines are quoted when it fails. The server's
environment is the SDK's short safe list (HOME, PATH, USER, ...) plus the
configured `env`: the appliance's own variables and secrets never reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import McpError
from mcp.shared.message import SessionMessage

from appliance.config import McpServerConfig
from appliance.policy import redact_url

T = TypeVar("T")

# The SDK logs a server's stray stdout lines and closed streams with tracebacks; on the
# terminal they would tear the TUI and bury headless output. Nothing is lost that a
# result or a notice does not say (an application that configures logging still gets them).
logging.getLogger("mcp.client").addHandler(logging.NullHandler())

LOG_MAX_BYTES = 2_000_000
# How long close() waits for the server to go (the SDK gives a stdio server 2 s
# after closing its stdin, then terminates its process group).
CLOSE_WAIT_S = 10.0
START_MARK = "--- appliance: starting "


class McpConnectionError(Exception):
    """The server could not be started or reached, or the connection broke."""


def innermost(exc: BaseException) -> BaseException:
    """anyio wraps transport failures in exception groups: the first real one."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe_error(exc: BaseException) -> str:
    exc = innermost(exc)
    if isinstance(exc, McpError):
        return exc.error.message
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {redact_url(str(exc.request.url))}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})" if str(exc) else "cannot connect"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"command not found: {exc.filename}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def log_tail(path: Path | None, lines: int = 5, max_chars: int = 600) -> str:
    """The last lines a stdio server wrote to stderr, for error messages."""
    if path is None or not path.is_file():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 8192))
        text = handle.read().decode("utf-8", "replace")
    # Only what the latest start wrote: each start begins with a "--- " line.
    latest = text.rsplit(f"\n{START_MARK}", 1)[-1].split("\n", 1)[-1] if START_MARK in text else text
    tail = "\n".join(line for line in latest.splitlines()[-lines:] if line.strip())
    return tail[-max_chars:]


async def list_all_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(100):  # a server paging forever must not hang the start
        page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools.extend(page.tools)
        cursor = page.nextCursor
        if not cursor:
            break
    return tools


class McpConnection:
    """Start with `open()` (blocking, bounded by the server's startup_timeout), then `call()`, then `close()`."""

    def __init__(self, config: McpServerConfig, log_path: Path | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mcp-{config.name}", daemon=True)
        self._session: ClientSession | None = None
        self._closing: asyncio.Event | None = None
        self._ended: asyncio.Event | None = None
        self._hold_future: Any = None
        self._errlog: TextIO | None = None
        self.failure: str | None = None  # why the connection ended, if it ended on its own
        self._close_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    def open(self) -> list[types.Tool]:
        """Start the server, initialize and list its tools; raises McpConnectionError."""
        self._thread.start()
        ready: asyncio.Future[list[types.Tool]] = self._run(self._new_future())
        self._hold_future = asyncio.run_coroutine_threadsafe(self._hold(ready), self._loop)
        waiter = asyncio.run_coroutine_threadsafe(self._wait(ready), self._loop)
        try:
            return waiter.result(timeout=self.config.startup_timeout + CLOSE_WAIT_S)
        except McpConnectionError:
            self.close()
            raise
        except TimeoutError as exc:
            self.close()
            raise McpConnectionError(self._with_log("did not start")) from exc

    @property
    def alive(self) -> bool:
        return (
            self._session is not None and self.failure is None and self._ended is not None and not self._ended.is_set()
        )

    def close(self) -> None:
        """End the session and stop the server; safe to call twice and from any thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._close()

    def _close(self) -> None:
        if self._thread.is_alive():
            if self._closing is not None:
                self._loop.call_soon_threadsafe(self._closing.set)
            if self._hold_future is not None:
                with contextlib.suppress(Exception):
                    self._hold_future.result(timeout=CLOSE_WAIT_S)
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._cancel_leftovers(), self._loop).result(timeout=CLOSE_WAIT_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=CLOSE_WAIT_S)
        if not self._thread.is_alive():
            self._loop.close()
        if self._errlog is not None:
            self._errlog.close()
            self._errlog = None

    # ------------------------------------------------------------ calls

    def call(
        self, tool: str, arguments: dict[str, Any], cancel: threading.Event, timeout: float
    ) -> types.CallToolResult:
        """One tools/call. Raises McpConnectionError when the connection breaks, TimeoutError, or
        InterruptedError when `cancel` is set (the request is then abandoned)."""
        if not self.alive:
            raise McpConnectionError(self.failure or "the connection is closed")
        future = asyncio.run_coroutine_threadsafe(self._call(tool, arguments), self._loop)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return future.result(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                if cancel.is_set() or time.monotonic() >= deadline:
                    future.cancel()
                    if cancel.is_set():
                        raise InterruptedError("cancelled") from None
                    raise

    async def _call(self, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        session, ended = self._session, self._ended
        if session is None or ended is None:
            raise McpConnectionError("the connection is closed")
        request = asyncio.ensure_future(session.call_tool(tool, arguments))
        watch = asyncio.ensure_future(ended.wait())
        try:
            # The session answers pending requests when the server's stdout closes, but a
            # write to a dead process can leave a request waiting: watch the session too.
            await asyncio.wait({request, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not request.done():
            request.cancel()
            raise McpConnectionError(self._gone("during the call"))
        try:
            return request.result()
        except McpError as exc:
            if exc.error.code == types.CONNECTION_CLOSED:
                raise McpConnectionError(self._gone("during the call")) from exc
            raise
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            # The request met the streams of a transport that was just closing.
            raise McpConnectionError(self._gone("during the call")) from exc

    def _gone(self, when: str) -> str:
        """The server went away: a stdio server exited, an HTTP one closed the connection."""
        return self._with_log(f"{'exited' if self.config.command else 'closed the connection'} {when}")

    # ------------------------------------------------------------ the loop's side

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @staticmethod
    async def _cancel_leftovers() -> None:
        """Abandoned calls still wait on the loop: end them before it stops."""
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    async def _new_future(self) -> asyncio.Future[list[types.Tool]]:
        self._closing = asyncio.Event()
        self._ended = asyncio.Event()
        return asyncio.get_running_loop().create_future()

    @staticmethod
    async def _wait(ready: asyncio.Future[list[types.Tool]]) -> list[types.Tool]:
        return await asyncio.shield(ready)

    async def _hold(self, ready: asyncio.Future[list[types.Tool]]) -> None:
        assert self._closing is not None and self._ended is not None
        try:
            async with contextlib.AsyncExitStack() as stack:
                # Entering the transports only spawns the process or prepares the client; the
                # handshake is what can hang. fail_after bounds it inside this task, so the
                # transports then close the normal way (the SDK stops a stdio server's process
                # group), and the scope does not straddle their task groups.
                session = await stack.enter_async_context(await self._transport_session(stack))
                with anyio.fail_after(self.config.startup_timeout):
                    await session.initialize()
                    tools = await list_all_tools(session)
                self._session = session
                ready.set_result(tools)
                await self._closing.wait()
        except BaseException as exc:  # every failure becomes a message; none escapes the loop
            if isinstance(innermost(exc), TimeoutError) and not ready.done():
                message = self._with_log(f"did not start within {self.config.startup_timeout:g} s")
            else:
                message = self._with_log(describe_error(exc))
            if not ready.done():
                ready.set_exception(McpConnectionError(message))
            elif not self._closing.is_set():
                self.failure = message
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            self._session = None
            self._ended.set()

    async def _transport_session(self, stack: contextlib.AsyncExitStack) -> ClientSession:
        config = self.config
        if config.command:
            params = StdioServerParameters(
                command=config.command[0],
                args=list(config.command[1:]),
                env=dict(config.env) or None,
                cwd=str(Path(config.cwd).expanduser()) if config.cwd else None,
            )
            read, write = await stack.enter_async_context(stdio_client(params, errlog=self._open_log()))
        else:
            client = create_mcp_http_client(headers=dict(config.headers) or None)
            await stack.enter_async_context(client)
            read, write, _ = await stack.enter_async_context(streamable_http_client(config.url, http_client=client))
        # The session does not say when the server went away between calls (a stdio server
        # that exited): the messages pass through here, and the end of them marks the
        # connection dead at once, so the next call starts the server again instead of failing.
        relay_in, relay_out = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        relay = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(relay.cancel_scope.cancel)  # runs before the group's exit, which would wait
        relay.start_soon(self._relay, read, relay_in)
        return ClientSession(relay_out, write)

    async def _relay(
        self,
        source: MemoryObjectReceiveStream[SessionMessage | Exception],
        sink: MemoryObjectSendStream[SessionMessage | Exception],
    ) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            async with sink:
                async for message in source:
                    await sink.send(message)
        if self._closing is not None and not self._closing.is_set():
            self.failure = self._gone("between calls")
            self._closing.set()

    def _open_log(self) -> TextIO:
        """The server's stderr: the log file (kept short), or /dev/null when there is none."""
        if self.log_path is None:
            self._errlog = open("/dev/null", "w")  # noqa: SIM115 - closed in close()
            return self._errlog
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.is_file() and self.log_path.stat().st_size > LOG_MAX_BYTES:
            self.log_path.replace(self.log_path.with_suffix(".log.1"))
        self._errlog = open(self.log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._errlog.write(f"\n{START_MARK}{self.config.target()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._errlog.flush()
        return self._errlog

    def _with_log(self, message: str) -> str:
        tail = log_tail(self.log_path) if self.config.command else ""
        if tail:
            message += f"; its stderr ends with: {tail}"
        return message
