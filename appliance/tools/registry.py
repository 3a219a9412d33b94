"""Which tool servers a run gets: the built-in ones by name, then the user's MCP servers.

Built-in servers are found by name in TOOL_SERVERS and imported only when
enabled, so a missing optional component fails that server alone, with its own
fix. A server factory is `create_server(settings, get_backend) -> ToolServer`; it
must be cheap (no processes, no model load) and calls `get_backend()` only when
it needs the model (the scrape tool's extractor). External MCP servers from
`[mcp_servers.NAME]` connect on first use, so building a toolbox never blocks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from appliance.config import Settings
from appliance.errors import ComponentUnavailable, ConfigError
from appliance.llm.base import Backend
from appliance.textutil import did_you_mean
from appliance.tools.base import ToolBox, ToolServer

TOOL_SERVERS: dict[str, str] = {
    "tool-python": "appliance.tools.sandbox.server:create_server",
    "search_and_scrape_webpage": "appliance.tools.search.server:create_server",
    "jina_scrape_llm_summary": "appliance.tools.scrape.server:create_server",
}

BackendProvider = Callable[[], Backend]
ServerFactory = Callable[[Settings, BackendProvider], ToolServer]


def load_server_factory(name: str) -> ServerFactory:
    target = TOOL_SERVERS.get(name)
    if target is None:
        raise ConfigError(
            f"unknown tool server '{name}'" + did_you_mean(name, TOOL_SERVERS),
            f"[tools] enabled may list: {', '.join(TOOL_SERVERS)}",
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ComponentUnavailable(
            name, f"the {name} tool server cannot be loaded ({exc})", f"remove {name} from [tools] enabled or reinstall"
        ) from exc
    factory: ServerFactory = getattr(module, attr)
    return factory


def hidden_tools(settings: Settings) -> set[tuple[str, str]]:
    """(server, tool) pairs the model is not offered."""
    if settings.agent.offer_download_tool:
        return set()
    return {("tool-python", "download_file_from_sandbox_to_local")}


def build_toolbox(settings: Settings, get_backend: BackendProvider, extra: Sequence[ToolServer] = ()) -> ToolBox:
    """The run's tool servers: the enabled built-in ones, `extra`, then the user's MCP servers.

    External servers start in the background at once (side by side), so the
    system prompt, rendered next, waits for the slowest only.
    """
    servers = [load_server_factory(name)(settings, get_backend) for name in settings.tools.enabled]
    builtin = {server.name for server in [*servers, *extra]}
    clashing = [config.name for config in settings.enabled_mcp_servers() if config.name in builtin]
    if clashing:
        raise ConfigError(
            f"[mcp_servers.{clashing[0]}] has the name of a built-in tool server",
            f"rename it: the built-in servers are {', '.join(sorted(builtin))}",
        )
    externals: list[ToolServer] = []
    if settings.enabled_mcp_servers():
        from appliance.tools.mcp.server import create_servers  # the SDK loads only when a server is configured

        for server in create_servers(settings):
            server.start_in_background()
            externals.append(server)
    return ToolBox([*servers, *extra, *externals], hidden=hidden_tools(settings))
