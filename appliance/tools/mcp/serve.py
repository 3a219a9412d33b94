"""`appliance mcp serve`: the built-in tools as an MCP server (to be written)."""

from __future__ import annotations

import click


@click.command("serve")
def serve_command() -> None:
    """Serve the built-in sandbox, search and scrape tools over MCP (stdio)."""
    raise click.ClickException("not written yet")
