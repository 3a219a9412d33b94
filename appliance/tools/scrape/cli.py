"""`appliance fetch URL [--extract TEXT]`: the page reading tool alone."""

from __future__ import annotations

from typing import NoReturn

import click

from appliance.errors import ComponentUnavailable, ConfigError, ExitCode
from appliance.llm.base import Backend
from appliance.textutil import for_terminal, safe_json_text
from appliance.tools.cliutil import exit_with, settings_from_context
from appliance.tools.scrape.reader import ReadError
from appliance.tools.scrape.server import ScrapeServer


@click.command("fetch")
@click.argument("url")
@click.option("--extract", "info", help="Ask the extraction model for this (what the agent's tool does).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON the model would read (with --extract).")
@click.option("--header", "headers", multiple=True, help="Extra request header 'Name: value' (repeatable).")
@click.option("--no-cache", is_flag=True, help="Fetch again even if the page is cached.")
@click.pass_context
def fetch(
    ctx: click.Context, url: str, info: str | None, as_json: bool, headers: tuple[str, ...], no_cache: bool
) -> None:
    """Read URL (http(s), corpus:// or zim://) as text; with --extract, run the extraction model on it."""
    overrides = {"scrape.cache_ttl_hours": 0.0} if no_cache else {}
    settings = settings_from_context(ctx, overrides)
    extra: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise click.UsageError(f"--header {header!r} must look like 'Name: value'")
        extra[name.strip()] = value.strip()

    backend_cache: list[Backend] = []

    def agent_backend() -> Backend:
        # Built only when --extract needs it; the same factory the agent uses.
        from appliance.llm.factory import build_backend

        if not backend_cache:
            backend_cache.append(build_backend(settings))
        return backend_cache[0]

    server = ScrapeServer(settings, agent_backend)
    try:
        if info is None:
            try:
                page = server.read(url, extra or None)
            except ReadError as exc:
                _fail(str(exc), settings.scrape.allow_private)
            click.echo(f"# {for_terminal(page.title)}\n" if page.title else "", nl=False)
            where = for_terminal(page.final_url)
            click.echo(f"<!-- {where} ({page.kind}, {page.source}, {len(page.text):,} chars) -->", err=True)
            click.echo(for_terminal(page.text))
            return
        outcome = server.scrape(url, info, extra or None)
        error = "" if outcome.success else str(outcome.payload["error"])
        if error and outcome.page is not None:  # read fine; the extraction model failed
            raise ComponentUnavailable("extraction", error, "check [extraction] and the model with `appliance doctor`")
        if as_json:
            click.echo(safe_json_text(outcome.text))
        if error:
            if not as_json:
                _fail(error.removeprefix("Scraping failed: "), settings.scrape.allow_private)
            exit_with(ExitCode.NO_ANSWER)
        if not as_json:
            click.echo(for_terminal(str(outcome.payload["extracted_info"])))
            stats = outcome.meta
            model = for_terminal(str(outcome.payload["model_used"]))
            click.echo(
                f"<!-- {stats.get('page_chars', 0):,} page chars, {stats.get('parts', 1)} part(s), "
                f"{outcome.payload['tokens_used']} tokens, model {model} -->",
                err=True,
            )
    finally:
        server.close()
        for backend in backend_cache:
            backend.close()


def _fail(message: str, allow_private: bool) -> NoReturn:
    if "refusing to fetch" in message and not allow_private:
        raise ConfigError(message, "add HOST:PORT to [scrape] allow_hosts to open one local service")
    click.echo(f"appliance: {for_terminal(message)}", err=True)
    exit_with(ExitCode.NO_ANSWER)
