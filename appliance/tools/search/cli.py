"""`appliance search`, `appliance corpus ...` and `appliance searxng ...`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from appliance.errors import ComponentUnavailable, ExitCode
from appliance.textutil import for_terminal, one_line, safe_json, safe_json_text
from appliance.tools.cliutil import exit_with, settings_from_context
from appliance.tools.search import manage
from appliance.tools.search.corpus import AddResult, Corpus, CorpusDocument
from appliance.tools.search.engine import SOURCE_KINDS, SearchEngine, corpus_path
from appliance.tools.search.results import MAX_NUM, MAX_PAGE, BadArguments, organic_entries, parse_request


def _echo_hits(organic: list[dict[str, object]]) -> None:
    for entry in organic:
        click.echo(f"{entry['position']}. {one_line(str(entry['title']), 110)}")
        click.echo(f"   {for_terminal(str(entry['link']))}")
        if entry.get("snippet"):
            click.echo(f"   {one_line(str(entry['snippet']), 200)}")


@click.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option("--num", "-n", type=click.IntRange(1, MAX_NUM), default=10, show_default=True, help="Results per page.")
@click.option("--page", "-p", type=click.IntRange(1, MAX_PAGE), default=1, show_default=True, help="Page of results.")
@click.option("--hl", default="en", show_default=True, help="Language (ISO 639-1).")
@click.option("--gl", default="us", show_default=True, help="Region (ISO 3166-1 alpha-2).")
@click.option("--tbs", help="Time filter: qdr:h, qdr:d, qdr:w, qdr:m or qdr:y.")
@click.option(
    "--source", "sources", multiple=True, type=click.Choice(SOURCE_KINDS), help="Only these sources (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON the model would read.")
@click.pass_context
def search(
    ctx: click.Context,
    query: tuple[str, ...],
    num: int,
    page: int,
    hl: str,
    gl: str,
    tbs: str | None,
    sources: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run the google_search tool alone: SearXNG, the local corpus and ZIM archives, merged."""
    settings = settings_from_context(ctx)
    text = " ".join(query)
    try:
        request = parse_request({"q": text, "num": num, "page": page, "hl": hl, "gl": gl, "tbs": tbs})
    except BadArguments as exc:
        raise click.UsageError(str(exc)) from exc
    engine = SearchEngine(settings.search, settings.dirs, only=sources or None)
    try:
        outcome = engine.search(request)
    finally:
        engine.close()
    for warning in outcome.warnings:
        click.echo(f"appliance: warning: {for_terminal(warning)}", err=True)
    if outcome.status == "unavailable":  # one error line (and with --json, main's one error object)
        raise ComponentUnavailable("search", str(outcome.error), "`appliance doctor` shows each source and its fix")
    if as_json:
        click.echo(safe_json_text(outcome.text))
    else:
        _echo_hits(outcome.payload["organic"])
    if outcome.status == "empty":
        click.echo(f"appliance: no results for {one_line(text, 80)!r}", err=True)
        exit_with(ExitCode.NO_ANSWER)


# ------------------------------------------------------------------ corpus


def _corpus(ctx: click.Context) -> Corpus:
    settings = settings_from_context(ctx)
    return Corpus(corpus_path(settings.search, settings.dirs))


def _document_row(document: CorpusDocument) -> dict[str, object]:
    return {
        "id": document.id,
        "url": document.url,
        "path": document.path,
        "title": document.title,
        "kind": document.kind,
        "size": document.size,
        "chars": document.chars,
        "chunks": document.chunks,
        "indexed_at": dt.datetime.fromtimestamp(document.indexed_at).isoformat(timespec="seconds"),
    }


def _report(results: list[AddResult], as_json: bool) -> None:
    if as_json:
        click.echo(safe_json([r.__dict__ for r in results], indent=2))
        return
    for result in results:
        detail = f" ({for_terminal(result.detail)})" if result.detail else ""
        click.echo(f"{result.status:<9} {for_terminal(result.path)}{detail}")
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    click.echo(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to do")


@click.group("corpus")
def corpus() -> None:
    """Index local documents (HTML, PDF, Markdown, text, office files) for offline search."""


@corpus.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Re-index files even when unchanged.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def corpus_add(ctx: click.Context, paths: tuple[Path, ...], force: bool, as_json: bool) -> None:
    """Add files, or every supported file under directories; changed files are re-indexed."""
    store = _corpus(ctx)
    results = []
    for result in store.add_paths(list(paths), force=force):
        results.append(result)
        if not as_json and result.status != "unchanged":
            click.echo(f"{result.status:<9} {for_terminal(result.path)}", err=True)
    _report(results, as_json)
    if results and all(r.status == "skipped" for r in results):
        exit_with(ExitCode.NO_ANSWER)


@corpus.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def corpus_list(ctx: click.Context, as_json: bool) -> None:
    """The indexed documents and their corpus:// URLs."""
    documents = _corpus(ctx).documents()
    if as_json:
        click.echo(safe_json([_document_row(d) for d in documents], indent=2))
        return
    if not documents:
        click.echo("no documents; add some with `appliance corpus add PATH...`")
    for document in documents:
        url, path = for_terminal(document.url), for_terminal(document.path)
        click.echo(f"{url:<32} {document.kind:<8} {document.chunks:>4} chunks  {path}")


@corpus.command("remove")
@click.argument("targets", nargs=-1, required=True)
@click.pass_context
def corpus_remove(ctx: click.Context, targets: tuple[str, ...]) -> None:
    """Remove documents by path, directory, corpus:// URL or ID."""
    store = _corpus(ctx)
    removed: list[CorpusDocument] = []
    for target in targets:  # a CorpusError is a ComponentUnavailable already, with its fix
        removed += store.remove(target)
    if not removed:
        click.echo("appliance: nothing matched; see `appliance corpus list`", err=True)
        exit_with(ExitCode.NO_ANSWER)
    for document in removed:
        click.echo(f"removed {for_terminal(document.path)}")
    click.echo(f"removed {len(removed)} document{'s' if len(removed) != 1 else ''}")


@corpus.command("refresh")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def corpus_refresh(ctx: click.Context, as_json: bool) -> None:
    """Re-index changed files and drop the ones that no longer exist."""
    _report(list(_corpus(ctx).refresh()), as_json)


@corpus.command("stats")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def corpus_stats(ctx: click.Context, as_json: bool) -> None:
    """Documents, chunks and size of the corpus."""
    stats = _corpus(ctx).stats()
    if as_json:
        click.echo(safe_json(stats, indent=2))
        return
    kinds = ", ".join(f"{k} {n}" for k, n in dict(stats["kinds"]).items()) or "none"  # type: ignore[call-overload]
    click.echo(f"corpus:    {stats['path']}")
    click.echo(f"documents: {stats['documents']} ({kinds})")
    click.echo(f"chunks:    {stats['chunks']}")
    click.echo(f"text:      {stats['chars']:,} characters, database {stats['bytes']:,} bytes")


@corpus.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option("--num", "-n", type=click.IntRange(1, MAX_NUM), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def corpus_search(ctx: click.Context, query: tuple[str, ...], num: int, as_json: bool) -> None:
    """Search the corpus alone (bm25 ranking, best passage of each document)."""
    hits = _corpus(ctx).search(" ".join(query), num)
    organic = organic_entries(hits, 1)
    if as_json:
        click.echo(safe_json(organic, indent=2))
    else:
        _echo_hits(organic)
    if not hits:
        click.echo("appliance: no matching documents", err=True)
        exit_with(ExitCode.NO_ANSWER)


# ------------------------------------------------------------------ searxng


@click.group("searxng")
def searxng() -> None:
    """Run a private SearXNG on 127.0.0.1 for the search tool."""


@searxng.command("install")
@click.pass_context
def searxng_install(ctx: click.Context) -> None:
    """Create SearXNG's Python environment from [search] searxng_src (uses pip)."""
    settings = settings_from_context(ctx)
    click.echo("installing SearXNG's requirements (this takes a minute)...", err=True)
    venv = manage.install(settings)
    click.echo(f"SearXNG environment ready: {venv}")


@searxng.command("start")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for it to answer.")
@click.pass_context
def searxng_start(ctx: click.Context, timeout: float) -> None:
    """Start SearXNG bound to 127.0.0.1 with JSON output and a fresh secret key."""
    settings = settings_from_context(ctx)
    state = manage.start(settings, timeout=timeout)
    click.echo(f"SearXNG running at {state.url} (pid {state.pid}); log: {manage.paths_for(settings).log}")


@searxng.command("stop")
@click.pass_context
def searxng_stop(ctx: click.Context) -> None:
    """Stop the SearXNG started by `appliance searxng start`."""
    pid = manage.stop(settings_from_context(ctx))
    click.echo(f"stopped SearXNG (pid {pid})" if pid else "SearXNG was not running")


@searxng.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def searxng_status(ctx: click.Context, as_json: bool) -> None:
    """Whether SearXNG answers at [search] searxng_url with JSON results."""
    state = manage.status(settings_from_context(ctx))
    if as_json:
        click.echo(json.dumps(state.as_dict()))
    else:
        managed = f", pid {state.pid}" if state.pid else ""
        if state.healthy:
            click.echo(f"SearXNG at {state.url}: running{managed}, JSON API {for_terminal(state.detail)}")
        else:
            click.echo(f"SearXNG at {state.url}: {for_terminal(state.detail)}{managed}")
            if not state.reachable:
                click.echo("  fix: run `appliance searxng start`, or set [search] searxng_url")
    if not state.healthy:
        exit_with(ExitCode.UNAVAILABLE)
