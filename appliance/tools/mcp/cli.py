"""`appliance mcp`: the configured MCP servers and their tools; `serve` offers ours to other agents."""

from __future__ import annotations

import click

from appliance.tools.mcp.serve import serve_command


@click.group("mcp")
def mcp_group() -> None:
    """MCP: list the configured MCP servers, or serve the built-in tools to other MCP clients."""


mcp_group.add_command(serve_command)
