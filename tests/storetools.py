"""A small tool server for store tests: deterministic results, and a call that blocks.

Registered only by tests (tests/store_cli.py puts it in TOOL_SERVERS for a
subprocess run; in-process tests pass it to ToolBox directly).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from appliance.protocol.tooldefs import ToolSpec
from appliance.tools.base import CallContext, ToolOutput, ToolServer

SERVER = "test-tools"

_OBJECT = "object"


def _schema(**props: str) -> dict[str, Any]:
    return {
        "type": _OBJECT,
        "properties": {name: {"type": kind} for name, kind in props.items()},
        "required": list(props),
    }


class StoreTestTools(ToolServer):
    name = SERVER

    def tools(self) -> Sequence[ToolSpec]:
        return (
            ToolSpec("google_search", "Search the web (test double with fixed results).", _schema(q="string")),
            ToolSpec(
                "scrape_and_extract_info",
                "Read a page (test double).",
                _schema(url="string", info_to_extract="string"),
            ),
            ToolSpec(
                "wait",
                "Write the file `marker` in the workspace, then block until the file `release` appears there "
                "(or `seconds` pass).",
                _schema(seconds="number", marker="string", release="string"),
            ),
            ToolSpec("write_file", "Write a file in the workspace.", _schema(path="string", content="string")),
            ToolSpec("read_file", "Read a file from the workspace.", _schema(path="string")),
            ToolSpec("echo", "Return the text as is.", _schema(text="string")),
            ToolSpec("repeat", "Return the text `times` times.", _schema(text="string", times="integer")),
        )

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        if tool == "google_search":
            q = str(arguments["q"])
            slug = "-".join(q.lower().split())[:40]
            organic = [
                {
                    "title": f"{q} ({i})",
                    "link": f"https://example.org/{slug}/{i}",
                    "snippet": f"About {q}.",
                    "position": i,
                }
                for i in (1, 2)
            ]
            return ToolOutput(json.dumps({"organic": organic}, indent=2))
        if tool == "scrape_and_extract_info":
            return ToolOutput(f"The page {arguments['url']} says: {arguments['info_to_extract']} is 42.")
        if tool == "wait":
            (ctx.workspace / str(arguments["marker"])).write_text("started", encoding="utf-8")
            release = ctx.workspace / str(arguments["release"])
            deadline = time.monotonic() + float(arguments["seconds"])
            while time.monotonic() < deadline and not release.exists():
                if ctx.cancel.is_set():
                    return ToolOutput("cancelled", is_error=True)
                time.sleep(0.02)
            return ToolOutput("done waiting")
        if tool == "write_file":
            (ctx.workspace / str(arguments["path"])).write_text(str(arguments["content"]), encoding="utf-8")
            return ToolOutput(f"wrote {arguments['path']}")
        if tool == "read_file":
            path = ctx.workspace / str(arguments["path"])
            if not path.is_file():
                return ToolOutput(f"[ERROR]: no file {arguments['path']}", is_error=True)
            return ToolOutput(path.read_text(encoding="utf-8"))
        if tool == "echo":
            return ToolOutput(str(arguments["text"]))
        if tool == "repeat":
            return ToolOutput(str(arguments["text"]) * int(arguments["times"]))
        return ToolOutput(f"Unknown tool: {tool}", is_error=True)


def create_server(settings: object, get_backend: object) -> ToolServer:
    return StoreTestTools()
