"""`appliance mcp`: the configured MCP servers and their tools; `serve` offers ours to other agents."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from appliance.errors import ExitCode
from appliance.tools.mcp.serve import serve_command


@click.group("mcp")
def mcp_group() -> None:
    """MCP: list the configured MCP servers, or serve the built-in tools to other MCP clients."""


@mcp_group.command("list")
@click.option("--profile", help="Use this profile's settings.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, a server per object.")
@click.pass_context
def list_command(ctx: click.Context, profile: str | None, as_json: bool) -> None:
    """Start each configured MCP server, list its tools and stop it; exit 3 if one fails."""
    from appliance.config import load_settings
    from appliance.tools.mcp.health import check_servers

    settings = load_settings(profile=profile or (ctx.obj or {}).get("profile"))
    results = check_servers(settings)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2))
    elif not results:
        click.echo("No MCP servers are configured. Add one to the config file, for example:\n")
        click.echo(
            f'  # {settings.dirs.config_file}\n  [mcp_servers.notes]\n  command = ["python", "-m", "my_notes_server"]'
        )
    for result in [] if as_json else results:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "off "}[result.status]
        click.echo(f"[{mark}] {result.name}: {result.detail}")
        if result.fix and result.status in ("warn", "fail"):
            click.echo(f"       fix: {result.fix}")
    if any(r.status == "fail" for r in results):
        ctx.exit(ExitCode.UNAVAILABLE)


mcp_group.add_command(serve_command)
