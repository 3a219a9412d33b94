"""What a call to an external MCP server costs, against a built-in tool and against the reference's way.

Method: the same trivial tool (`search_notes` of tests/mcpservers.py, answering
from memory) called through the ToolBox four ways, interleaved call by call so
all four meet the same machine load:
- built-in: an in-process ToolServer doing the same work (the floor: ToolBox only);
- stdio: our external server, one persistent session over stdio (how runs call it);
- http: the same server over streamable HTTP on 127.0.0.1, one persistent session;
- per-call: what the reference agent's ToolManager does for every call: spawn the
  server, initialize, call, stop it (stdio_client + ClientSession per call).
Medians over the calls; ratios are taken within one run of this script.

    python bench/bench_mcp.py [--calls 60]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from appliance.config import parse_mcp_server
from appliance.protocol.tooldefs import ToolSpec
from appliance.tools.base import CallContext, ToolBox, ToolOutput, ToolServer
from appliance.tools.mcp.server import ExternalMcpServer

SERVERS = str(Path(__file__).resolve().parent.parent / "tests" / "mcpservers.py")
ARGS = {"query": "moon"}


class BuiltinNotes(ToolServer):
    name = "builtin"

    def tools(self) -> Sequence[ToolSpec]:
        return [ToolSpec("search_notes", "", {"type": "object", "properties": {"query": {"type": "string"}}})]

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        return ToolOutput("no notes")


def per_call_like_the_reference() -> str:
    async def once() -> str:
        params = StdioServerParameters(command=sys.executable, args=[SERVERS, "notes"])
        with open("/dev/null", "w") as devnull:
            async with stdio_client(params, errlog=devnull) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("search_notes", ARGS)
                return str(result.content[-1].text)  # type: ignore[union-attr]

    return asyncio.run(once())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--per-call-every", type=int, default=4, help="spawn-per-call is slow: sample every Nth call")
    options = parser.parse_args()

    port = free_port()
    http_server = subprocess.Popen([sys.executable, SERVERS, "notes", "--http", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    for _ in range(300):
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    stdio = ExternalMcpServer(parse_mcp_server("stdio", {"command": [sys.executable, SERVERS, "notes"]}, "bench"))
    http = ExternalMcpServer(parse_mcp_server("http", {"url": url}, "bench"))
    box = ToolBox([BuiltinNotes(), stdio, http])
    with tempfile.TemporaryDirectory() as tmp:
        ctx = CallContext("bench", Path(tmp), Path(tmp), Path(tmp), timeout=60)
        started = time.monotonic()
        box.server_specs()  # start both external servers (side by side), outside the timings
        print(f"startup of the two external servers (side by side): {time.monotonic() - started:.2f} s")

        def through_box(server: str) -> Callable[[], str]:
            return lambda: box.call(server, "search_notes", ARGS, ctx).text

        ways: dict[str, Callable[[], str]] = {
            "built-in": through_box("builtin"),
            "stdio": through_box("stdio"),
            "http": through_box("http"),
            "per-call": per_call_like_the_reference,
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        for way in ways.values():
            assert way() == "no notes"  # warm up, and the four ways answer the same
        for i in range(options.calls):
            for name, way in ways.items():
                if name == "per-call" and i % options.per_call_every:
                    continue
                t0 = time.perf_counter()
                way()
                times[name].append(time.perf_counter() - t0)
    box.close()
    http_server.kill()
    http_server.wait()

    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"{name:>9}: median {value * 1000:8.2f} ms over {len(times[name])} calls")
    extra_ms = (median["stdio"] - median["built-in"]) * 1000
    print(f"stdio / built-in    : {median['stdio'] / median['built-in']:.1f}x  (+{extra_ms:.2f} ms a call)")
    print(f"http / stdio        : {median['http'] / median['stdio']:.1f}x")
    print(f"per-call / stdio    : {median['per-call'] / median['stdio']:.0f}x  (what a persistent session saves)")


if __name__ == "__main__":
    main()
