"""`appliance mcp serve`: the built-in tool servers as one MCP server, for other MCP clients.

    appliance mcp serve [--tools NAME[,NAME]] [--attach PATH]... [--workspace DIR]
    appliance mcp serve --http PORT [--host 127.0.0.1]

Every call goes through the same ToolBox as a run's calls (argument checks,
`[agent] tool_timeout`, cancellation, error texts) with one run-like directory
for the whole process: `runs/mcp-<time>-<hex>`, its workspace the sandboxes'
/home/user. Only `--attach`ed paths may be uploaded into a sandbox.

Over stdio nothing but the protocol reaches stdout: file descriptor 1 is
pointed at stderr before any tool runs, so a stray print (ours, a library's,
llama.cpp's) cannot corrupt the stream. Over HTTP the server listens on a
loopback address only, with DNS-rebinding protection: it runs code for anyone
who can reach it and has no authentication.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import io
import ipaddress
import logging
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import click
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from appliance import __version__
from appliance.config import Settings, ToolsSettings
from appliance.errors import ComponentUnavailable, ConfigError, ExitCode
from appliance.llm.base import Backend
from appliance.options import collect_common, common_options, settings_from_options
from appliance.protocol.tooldefs import ServerSpec, ToolSpec
from appliance.tools.base import CallContext, ToolBox, ToolOutcome, ToolOutput, ToolServer
from appliance.tools.registry import TOOL_SERVERS, hidden_tools, load_server_factory
from appliance.tools.rundirs import call_context, check_attachments, new_run_id, run_dirs
from appliance.tools.specs import PYTHON_SERVER, PYTHON_TOOLS, SCRAPE_SERVER, SCRAPE_TOOLS, SEARCH_SERVER, SEARCH_TOOLS

PROG = "appliance mcp serve"
HTTP_PATH = "/mcp"
# What a server lists when its component is missing: the tools stay visible and answer with the fix.
BUILTIN_TOOLS: dict[str, Sequence[ToolSpec]] = {
    PYTHON_SERVER: PYTHON_TOOLS,
    SEARCH_SERVER: SEARCH_TOOLS,
    SCRAPE_SERVER: SCRAPE_TOOLS,
}
NOT_LOOPBACK = (
    "it runs code in the sandbox for anyone who can reach it and has no authentication; "
    "use 127.0.0.1, ::1 or localhost (for another machine, use SSH port forwarding)"
)


def note(text: str) -> None:
    click.echo(f"{PROG}: {text}", err=True)


# ------------------------------------------------------------------ tools


class UnavailableServer(ToolServer):
    """A built-in server whose component is missing (no bwrap): listed as usual, every call returns the fix."""

    def __init__(self, name: str, error: ComponentUnavailable) -> None:
        self.name = name
        self.error = error

    def tools(self) -> Sequence[ToolSpec]:
        return BUILTIN_TOOLS[self.name]

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        return ToolOutput(f"[ERROR]: The {self.name} tools are unavailable: {self.error.one_line()}", is_error=True)


def tool_index(specs: Sequence[ServerSpec]) -> dict[str, tuple[str, ToolSpec]]:
    """Tool name -> (server, spec). MCP has one flat namespace, so a name two servers share is refused."""
    index: dict[str, tuple[str, ToolSpec]] = {}
    for server in specs:
        for tool in server.tools:
            if tool.name in index:
                raise ConfigError(
                    f"tool '{tool.name}' is offered by both {index[tool.name][0]} and {server.name}",
                    "serve one of them, with --tools",
                )
            index[tool.name] = (server.name, tool)
    return index


def call_result(outcome: ToolOutcome, max_chars: int) -> types.CallToolResult:
    """A finished call as MCP's result: the text the model would read in a run, isError unless ok."""
    text, _ = outcome.model_text(max_chars)
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=not outcome.ok)


def parse_tool_servers(values: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(n.strip() for v in values for n in v.split(",") if n.strip()))
    unknown = [n for n in names if n not in TOOL_SERVERS]
    if not names:
        raise click.BadParameter(f"name at least one tool server: {', '.join(TOOL_SERVERS)}", param_hint="'--tools'")
    if unknown:
        raise click.BadParameter(
            f"unknown tool server {unknown[0]!r}; choose from: {', '.join(TOOL_SERVERS)}", param_hint="'--tools'"
        )
    return names


class ServedTools:
    """The chosen built-in servers, one call context, and the MCP handlers over them."""

    def __init__(self, settings: Settings, names: Sequence[str], ctx: CallContext) -> None:
        self.settings = dataclasses.replace(settings, tools=ToolsSettings(enabled=list(names)))
        self.ctx = ctx
        self._backend: Backend | None = None
        self._backend_lock = threading.Lock()
        self.unavailable: list[ComponentUnavailable] = []
        servers: list[ToolServer] = []
        try:
            for name in names:
                try:
                    servers.append(load_server_factory(name)(self.settings, self.backend))
                except ComponentUnavailable as exc:
                    if name not in BUILTIN_TOOLS:
                        raise
                    servers.append(UnavailableServer(name, exc))
                    self.unavailable.append(exc)
        except BaseException:
            for server in servers:
                server.close()
            raise
        # The servers are built here rather than by build_toolbox, so one missing component leaves
        # the others served; the hidden tools are a run's. The user's own MCP servers are theirs
        # to expose, not ours.
        self.toolbox = ToolBox(servers, hidden=hidden_tools(self.settings))
        try:
            self.index = tool_index(self.toolbox.server_specs())
        except ConfigError:
            self.close()
            raise

    def backend(self) -> Backend:
        """The model, built on the first scrape that needs it (then kept for the others)."""
        with self._backend_lock:
            if self._backend is None:
                from appliance.llm.factory import build_backend

                self._backend = build_backend(self.settings)
            return self._backend

    def tools(self) -> list[types.Tool]:
        return [
            types.Tool(name=spec.name, description=spec.description, inputSchema=spec.input_schema)
            for _server, spec in self.index.values()
        ]

    async def list_tools(self) -> list[types.Tool]:
        return self.tools()

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        found = self.index.get(name)
        if found is None:
            text = f"Unknown tool: {name}"
            return types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=True)
        server = found[0]
        # ToolBox.call stops the server's work when the context's cancel is set; each request has
        # its own, so a client cancelling one request stops that one only.
        ctx = dataclasses.replace(self.ctx, cancel=threading.Event())
        try:
            outcome = await anyio.to_thread.run_sync(
                self.toolbox.call, server, name, dict(arguments), ctx, abandon_on_cancel=True
            )
        except anyio.get_cancelled_exc_class():
            # notifications/cancelled, a closed session or shutdown: the thread sees this within 0.1 s.
            ctx.cancel.set()
            raise
        return call_result(outcome, self.settings.agent.result_max_chars)

    def mcp_server(self) -> Server[Any, Any]:
        server: Server[Any, Any] = Server(
            "appliance",
            version=__version__,
            instructions=(
                "The appliance's research tools: a Linux sandbox without network (tool-python), "
                "web and offline search, and page reading with extraction. Create a sandbox first "
                "and pass its sandbox_id to the other sandbox tools."
            ),
        )
        # list_tools() is untyped in the SDK. Input is checked by ToolBox (the texts a run's model
        # reads), not by the SDK's jsonschema pass.
        server.list_tools()(self.list_tools)  # type: ignore[no-untyped-call]
        server.call_tool(validate_input=False)(self.call_tool)
        return server

    def close(self) -> None:
        self.toolbox.close()
        with self._backend_lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None


def serve_context(settings: Settings, workspace: Path | None, attachments: Sequence[Path]) -> CallContext:
    """One run-like directory for the whole process, made the way a run's is."""
    attached = check_attachments(attachments)
    run_id = new_run_id(prefix="mcp-")
    return call_context(settings, run_id, run_dirs(settings, run_id, workspace), attached)


# ------------------------------------------------------------------ transports


class StdinLines(anyio.AsyncFile[str]):
    """The client's lines, read from fd 0 by a daemon thread.

    The SDK reads stdin in a worker thread that cancellation cannot interrupt,
    so a SIGTERM would wait for the client's next line. A daemon thread does not
    hold up the exit, provided it reads the descriptor itself: blocked inside
    sys.stdin's buffered reader, it would hold a lock the interpreter's
    shutdown needs, and Python aborts.
    """

    def __init__(self, stdin: IO[str]) -> None:
        super().__init__(stdin)
        self._fd = stdin.fileno()
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, name="mcp-stdin", daemon=True).start()

    def _pump(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        partial: list[str] = []
        try:
            while chunk := os.read(self._fd, 1 << 16):
                text = decoder.decode(chunk)
                while (end := text.find("\n")) >= 0:
                    partial.append(text[: end + 1])
                    self._lines.put("".join(partial))
                    partial.clear()
                    text = text[end + 1 :]
                if text:
                    partial.append(text)
        except OSError:
            pass
        rest = "".join(partial) + decoder.decode(b"", final=True)
        if rest:
            self._lines.put(rest)
        self._lines.put("")  # end of input

    async def readline(self) -> str:
        return await anyio.to_thread.run_sync(self._lines.get, abandon_on_cancel=True)

    def release(self) -> None:
        """Wake a worker thread a cancelled readline left waiting, so the interpreter can exit."""
        self._lines.put("")


def protocol_stdout() -> io.TextIOWrapper:
    """The real stdout for the protocol alone; fd 1 (print, C libraries, children) goes to stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    return io.TextIOWrapper(os.fdopen(protocol_fd, "wb"), encoding="utf-8", line_buffering=False)


class Stopper:
    """Ends the transport on SIGTERM, SIGHUP or SIGINT; remembers which one for the exit code."""

    def __init__(self) -> None:
        self.signal: int | None = None

    async def watch(self, on_signal: Callable[[], None]) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP, signal.SIGINT) as signals:
            async for signum in signals:
                self.signal = signum
                note(f"stopping ({signal.Signals(signum).name})")
                on_signal()
                return

    @property
    def exit_code(self) -> int:
        return int(ExitCode.INTERRUPTED) if self.signal == signal.SIGINT else 0


async def serve_stdio(server: Server[Any, Any], stdin: StdinLines, stdout: io.TextIOWrapper, stop: Stopper) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(stop.watch, group.cancel_scope.cancel)
        try:
            async with stdio_server(stdin, anyio.wrap_file(stdout)) as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
        finally:
            stdin.release()
        group.cancel_scope.cancel()  # the client closed stdin


def loopback_address(host: str) -> str:
    """The address to bind for --host; anything but loopback is a usage error."""
    if host.strip().lower() == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        raise click.BadParameter(
            f"{host!r} is not an IP address or localhost; {NOT_LOOPBACK}", param_hint="'--host'"
        ) from None
    if not address.is_loopback:
        raise click.BadParameter(
            f"{host} is not a loopback address, and this server must not listen there: {NOT_LOOPBACK}",
            param_hint="'--host'",
        )
    return str(address)


def bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)  # connections made as soon as the URL is printed wait in the backlog
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {address} port {port}: {exc.strerror}", "choose another port, or --http 0 for a free one"
        ) from exc
    sock.set_inheritable(False)
    return sock


async def serve_http(server: Server[Any, Any], sock: socket.socket, stop: Stopper) -> None:
    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send

    address, port = sock.getsockname()[:2]
    authority = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    hosts = [authority, f"localhost:{port}"]
    # A web page in the user's browser may reach 127.0.0.1; the Host and Origin checks stop it
    # (DNS rebinding, cross-origin POSTs) from driving the sandbox.
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{host}" for host in hosts],
    )
    manager = StreamableHTTPSessionManager(app=server, security_settings=security)
    url = f"http://{authority}{HTTP_PATH}"

    class Endpoint:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await manager.handle_request(scope, receive, send)

    class Uvicorn(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            # Stopper handles the signals for both transports; uvicorn would re-raise them after
            # shutting down and end the process before the tool box is closed.
            yield

    app = Starlette(routes=[Route(HTTP_PATH, endpoint=Endpoint())])
    web = Uvicorn(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    stopping = anyio.Event()
    web_done = anyio.Event()

    async def run_web() -> None:
        try:
            await web.serve(sockets=[sock])
        finally:
            stopping.set()
            web_done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(stop.watch, stopping.set)
        # The sessions live here rather than in a Starlette lifespan: uvicorn ends the lifespan only
        # after the open requests, and an in-flight tool call or a client's event stream would hold
        # it for the whole graceful-shutdown timeout. Ending the sessions first cancels their calls.
        async with manager.run():
            group.start_soon(run_web)
            note(f"listening on {url}")
            await stopping.wait()
            # Ending the sessions closes their event streams under the SDK's writers, which it
            # logs as errors with tracebacks; that is the shutdown working, not a fault.
            logging.getLogger("mcp.server.streamable_http").setLevel(logging.CRITICAL)
        web.should_exit = True
        await web_done.wait()
        group.cancel_scope.cancel()


# ------------------------------------------------------------------ command


@click.command("serve")
@click.option(
    "--tools",
    "tool_servers",
    multiple=True,
    metavar="NAME[,NAME]",
    help=f"Built-in tool servers to serve (repeatable; default: [tools] enabled). One of: {', '.join(TOOL_SERVERS)}.",
)
@click.option("--http", "http_port", type=click.IntRange(0, 65535), help="Serve streamable HTTP on this port (0: any).")
@click.option("--host", default=None, help="Loopback address to listen on with --http (default 127.0.0.1).")
@common_options
@click.pass_context
def serve_command(
    ctx: click.Context,
    /,
    tool_servers: tuple[str, ...],
    http_port: int | None,
    host: str | None,
    **options: Any,
) -> None:
    """Serve the built-in sandbox, search and scrape tools to other MCP clients (stdio, or --http PORT).

    Calls run as in an agent run: the same sandbox, timeouts and error texts, one run
    directory for the whole process. Only --attach'ed paths may be uploaded into a sandbox.
    """
    if host is not None and http_port is None:
        raise click.UsageError("--host needs --http PORT")
    names = parse_tool_servers(tool_servers) if tool_servers else None
    protocol_out: io.TextIOWrapper | None = None
    sock: socket.socket | None = None
    if http_port is None:
        # First, before anything could print: from here on only the protocol reaches the real stdout.
        protocol_out = protocol_stdout()
    else:
        sock = bind(loopback_address(host or "127.0.0.1"), http_port)
    stop = Stopper()
    try:
        options = collect_common(ctx, options)
        settings = settings_from_options(options)
        call_ctx = serve_context(settings, options.get("workspace"), list(options.get("attach") or ()))
        served = ServedTools(settings, names if names is not None else settings.tools.enabled, call_ctx)
        try:
            for problem in served.unavailable:
                note(f"warning: {problem.one_line()} (its tools answer with this error)")
            server = served.mcp_server()
            summary = f"{len(served.index)} tools from {', '.join(served.settings.tools.enabled) or 'no servers'}"
            note(f"{summary}; run directory {call_ctx.run_dir}, sandbox home {call_ctx.workspace}")
            if sock is not None:
                anyio.run(serve_http, server, sock, stop)
            else:
                assert protocol_out is not None
                anyio.run(serve_stdio, server, StdinLines(sys.stdin), protocol_out, stop)
        finally:
            served.close()
    finally:
        if sock is not None:
            sock.close()
    raise SystemExit(stop.exit_code)
