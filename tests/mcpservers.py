"""Real MCP servers for the tests, written with the official SDK's low-level server.

Run as `python tests/mcpservers.py MODE [--http PORT]`:
- `notes`: a small stateful notes server with tools that misbehave on demand
  (crash the process, hang, return huge or binary output, answer with an error);
- `broken-start`: writes a reason to stderr and exits before the handshake;
- `hang-start`: never answers the handshake;
- `noisy`: `notes` that first prints a banner on stdout (not JSON-RPC).
The schemas are explicit dicts, so the listing (and the golden prompt made from
it by the reference agent's own code) does not move with the SDK's version.
"""

from __future__ import annotations

import base64
import os
import sys
import threading
import time
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel import Server

NOTES_TOOLS = [
    types.Tool(
        name="add_note",
        description="Store a note under a title. Returns the number of notes stored.",
        inputSchema={
            "type": "object",
            "properties": {"title": {"type": "string"}, "body": {"type": "string"}},
            "required": ["title", "body"],
        },
    ),
    types.Tool(
        name="search_notes",
        description="Find notes whose title or body contains the query.",
        inputSchema={
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "Words to look for"},
                "limit": {"type": "integer", "default": 5},
            },
            "required": ["query"],
        },
    ),
    types.Tool(
        name="env_has",
        description="Whether an environment variable is set in the server.",
        inputSchema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    ),
    types.Tool(name="undocumented", inputSchema={"type": "object", "properties": {}}),
    types.Tool(
        name="huge",
        description="Return this many characters.",
        inputSchema={"type": "object", "properties": {"chars": {"type": "integer"}}, "required": ["chars"]},
    ),
    types.Tool(name="mixed", description="Text, an image and text again.", inputSchema={"type": "object"}),
    types.Tool(name="refuse", description="Answer with an error result.", inputSchema={"type": "object"}),
    types.Tool(name="crash", description="Exit the server process.", inputSchema={"type": "object"}),
    types.Tool(
        name="hang",
        description="Block the whole server (a synchronous sleep).",
        inputSchema={"type": "object", "properties": {"seconds": {"type": "number"}}},
    ),
    types.Tool(name="pid", description="The server's process id.", inputSchema={"type": "object"}),
]
# Not listed (the golden prompt pins the listing), but callable: the server exits just after answering.
EXIT_SOON = "exit_soon"


def notes_server() -> Server[Any, Any]:
    server: Server[Any, Any] = Server("notes")
    notes: dict[str, str] = {}

    @server.list_tools()  # type: ignore[no-untyped-call, untyped-decorator]
    async def list_tools() -> list[types.Tool]:
        return NOTES_TOOLS

    @server.call_tool()  # type: ignore[untyped-decorator]
    async def call_tool(name: str, arguments: dict[str, Any]) -> Any:
        if name == "add_note":
            notes[arguments["title"]] = arguments["body"]
            return [types.TextContent(type="text", text=f"{len(notes)} notes stored")]
        if name == "search_notes":
            query = arguments["query"].lower()
            found = [f"{t}: {b}" for t, b in notes.items() if query in t.lower() or query in b.lower()]
            return [types.TextContent(type="text", text="\n".join(found[: arguments.get("limit", 5)]) or "no notes")]
        if name == "env_has":
            return [types.TextContent(type="text", text=str(arguments["name"] in os.environ))]
        if name == "undocumented":
            return [types.TextContent(type="text", text="ok")]
        if name == "huge":
            return [types.TextContent(type="text", text="x" * int(arguments["chars"]))]
        if name == "mixed":
            image = base64.b64encode(b"\x89PNG" + b"\0" * 96).decode()
            return [
                types.TextContent(type="text", text="before"),
                types.ImageContent(type="image", data=image, mimeType="image/png"),
                types.TextContent(type="text", text="after"),
            ]
        if name == "refuse":
            return types.CallToolResult(content=[types.TextContent(type="text", text="no such record")], isError=True)
        if name == "crash":
            print("notes: crashing on purpose", file=sys.stderr, flush=True)
            os._exit(3)
        if name == "hang":
            time.sleep(float(arguments.get("seconds", 3600)))  # blocks the event loop: the server is stuck
            return [types.TextContent(type="text", text="woke up")]
        if name == "pid":
            return [types.TextContent(type="text", text=str(os.getpid()))]
        if name == EXIT_SOON:
            print("notes: leaving between calls", file=sys.stderr, flush=True)
            threading.Timer(0.2, os._exit, (4,)).start()
            return [types.TextContent(type="text", text="bye")]
        raise ValueError(f"unknown tool {name}")

    return server


async def serve_stdio(server: Server[Any, Any]) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def serve_http(server: Server[Any, Any], port: int) -> None:
    import contextlib
    from collections.abc import AsyncIterator

    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.routing import Mount

    manager = StreamableHTTPSessionManager(app=server)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    app = Starlette(routes=[Mount("/mcp", app=manager.handle_request)], lifespan=lifespan)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main(argv: list[str]) -> None:
    mode = argv[0] if argv else "notes"
    if mode == "broken-start":
        print("notes: cannot open database /nonexistent/notes.db", file=sys.stderr, flush=True)
        sys.exit(2)
    if mode == "hang-start":
        time.sleep(3600)
        return
    server = notes_server()
    if mode == "noisy":
        # A common bug: a banner on stdout, which is the protocol's channel.
        print("notes server v0.1 starting (this line is not JSON-RPC)", flush=True)
    if "--http" in argv:
        serve_http(server, int(argv[argv.index("--http") + 1]))
    else:
        anyio.run(serve_stdio, server)


if __name__ == "__main__":
    main(sys.argv[1:])
