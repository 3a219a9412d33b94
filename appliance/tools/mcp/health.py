"""The health of the configured MCP servers, as `appliance doctor`, `appliance mcp list` and the
TUI's status screen report it: start each one the way a run would, list its tools, stop it."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from appliance.config import McpServerConfig, Settings
from appliance.protocol.prompt import render_mcp_prompt
from appliance.protocol.tooldefs import ServerSpec, ToolSpec
from appliance.tools.mcp.connection import McpConnection, McpConnectionError
from appliance.tools.mcp.server import log_path_for, offered_specs


@dataclass(frozen=True)
class McpHealth:
    name: str
    transport: str  # stdio | http
    target: str  # the command line or URL (never env or headers)
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""
    tools: tuple[str, ...] = ()
    seconds: float = 0.0
    prompt_chars: int = 0  # what its listing adds to the system prompt


def prompt_cost(name: str, tools: Sequence[ToolSpec]) -> int:
    """Characters the server's listing adds to the system prompt (schemas can be long)."""
    today = dt.date.today()
    return len(render_mcp_prompt(today, [ServerSpec(name, tuple(tools))])) - len(render_mcp_prompt(today, []))


def check_server(settings: Settings, config: McpServerConfig) -> McpHealth:
    def health(status: str, detail: str, fix: str = "", tools: tuple[str, ...] = ()) -> McpHealth:
        return McpHealth(config.name, config.transport, config.target(), status, detail, fix, tools, elapsed, cost)

    elapsed, cost = 0.0, 0
    if not config.enabled:
        return health("skip", f"disabled ([mcp_servers.{config.name}] enabled = false)")
    log_path = log_path_for(settings, config.name)
    connection = McpConnection(config, log_path)
    started = time.monotonic()
    try:
        listed = connection.open()
        elapsed = time.monotonic() - started  # the start, not the stop that follows
    except McpConnectionError as exc:
        elapsed = time.monotonic() - started
        fix = f"check [mcp_servers.{config.name}] " + ("command, env and cwd" if config.command else "url and headers")
        if config.command:
            fix += f"; the server's stderr is in {log_path}"
        return health("fail", f"{config.transport} {config.target()}: {exc}", fix)
    finally:
        connection.close()
    specs, missing = offered_specs(config, listed)
    offered = tuple(spec.name for spec in specs)
    cost = prompt_cost(config.name, specs)
    detail = (
        f"{config.transport} {config.target()}: {len(offered)} tools in {elapsed:.1f} s "
        f"({', '.join(offered)}); +{cost:,} prompt characters"
    )
    if missing:
        return health("warn", detail + f"; configured tools not listed: {missing}", "fix tools = [...]", offered)
    if not offered:
        return health("warn", detail, "the server lists no tools the model could use", offered)
    return health("ok", detail, tools=offered)


def check_servers(settings: Settings) -> list[McpHealth]:
    """Every configured server, checked side by side (a slow one costs its startup_timeout once)."""
    configs = list(settings.mcp_servers.values())
    if not configs:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(configs)), thread_name_prefix="mcp-check") as pool:
        return list(pool.map(lambda config: check_server(settings, config), configs))
