"""The research report of a run: the answer, the model's reasoning summary, numbered sources.

Markdown (`appliance history show --report`, `export --format md`, `report.md`
in the run's directory at the end of a run) and HTML (`export --format html`).
Every source is one the run read (store.sources.run_sources), with the time
its archived copy was fetched and the passage the extractor used. Untrusted
text (the task, the model's words, page passages) stays inside fences in
Markdown and is escaped in HTML.
"""

from __future__ import annotations

import html
from pathlib import Path

from markdown_it import MarkdownIt

from appliance.llm.base import ChatMessage
from appliance.protocol.answer import extract_boxed
from appliance.protocol.parsing import split_thinking
from appliance.protocol.prompt import render_task_message
from appliance.store.export import fence
from appliance.store.history import History
from appliance.store.records import RunRecord
from appliance.store.sources import Source, final_text, run_sources
from appliance.textutil import one_line

REPORT_FILE = "report.md"


def web_mode(run: RunRecord) -> str:
    """How the run reached the web, from its recorded settings."""
    archive = run.settings.get("archive")
    if not isinstance(archive, dict):
        return "live (not archived: recorded before the web archive existed)"
    mode = str(archive.get("web") or "live")
    if mode == "live" and archive.get("enabled") is False:
        return "live, not archived ([archive] enabled = false)"
    return mode if mode != "live" else "live, archived in the run's directory"


def reasoning_summary(run: RunRecord) -> str:
    """What the model said in its final answer turn, its thinking left out (kept when it said nothing else)."""
    thinking, said = split_thinking(final_text(run))
    return (said.strip() or thinking.strip()) if (said or thinking) else ""


def _source_lines(source: Source) -> list[str]:
    facts = []
    if source.archived_at:
        facts.append(f"fetched {source.archived_at}")
    if source.archived:
        facts.append(f"archived copy: `archive/{source.warc_file}` at byte {source.warc_offset}")
    elif source.kind in ("corpus", "zim"):
        facts.append(f"local {source.kind} document")
    else:
        facts.append("no archived copy")
    if source.origin and source.origin.startswith("archive:"):
        facts.append(f"replayed from {source.origin}")
    if source.cited:
        facts.append("cited in the answer")
    lines = [f"{source.number}. <{source.url}> — " + "; ".join(facts)]
    if source.passage:
        lines += ["", *("   " + line for line in fence(source.passage).splitlines())]
    return lines


def research_report(run: RunRecord) -> str:
    """The report as Markdown."""
    answer = run.answer if run.answer is not None else extract_boxed(final_text(run))
    lines = [
        "# Research report",
        "",
        f"- **Run:** {run.run_id} ({run.status})",
        f"- **Model:** {run.model or '?'} ({run.backend or '?'})",
        f"- **Started:** {run.started_at}",
        f"- **Web:** {web_mode(run)}",
        "",
        "## Question",
        "",
        fence(run.task),
        "",
        "## Answer",
        "",
        fence(answer) if answer else "(no answer)",
        "",
        "## Reasoning summary",
        "",
    ]
    summary = reasoning_summary(run)
    lines.append(fence(summary) if summary else "(the model gave none)")
    lines += ["", "## Sources", ""]
    sources = run_sources(run)
    if not sources:
        lines.append("(the run read no page or document)")
    for source in sources:
        lines += [*_source_lines(source), ""]
    # The exact text (a file keeps it); a face printing it to a terminal passes it through for_terminal.
    return "\n".join(lines).rstrip() + "\n"


def report_html(run: RunRecord) -> str:
    """The same report as one HTML page (raw HTML in any text is escaped, never passed through)."""
    renderer = MarkdownIt("commonmark", {"html": False})
    body = renderer.render(research_report(run))
    title = html.escape(one_line(run.task, 80))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def save_report(run: RunRecord, run_dir: Path) -> Path | None:
    """Write `report.md` into the run's directory; None when it cannot be written (the run stands anyway)."""
    path = run_dir / REPORT_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(research_report(run), encoding="utf-8")
    except OSError:
        return None
    return path


def finish_report(history: History, run_dir: Path, run_id: str) -> list[Source]:
    """At the end of a run (any face): `report.md` into its directory; its sources, for `--json` and the UI."""
    run = history.get_run(run_id)
    save_report(run, run_dir)
    return run_sources(run)


def report_context(run: RunRecord, *, passage_chars: int = 600) -> list[ChatMessage]:
    r"""A run's report as the earlier exchange a follow-up starts from, when its conversation is too long.

    The question as the run's task message (\boxed{} instruction included, attachments left
    out), then the report as the assistant's reply: the answer boxed as the model boxes it,
    the findings (the reasoning summary) and the numbered sources with the passage each gave.
    """
    answer = run.answer if run.answer is not None else extract_boxed(final_text(run))
    lines = [
        "Research report of the earlier run (its full conversation no longer fits the context window).",
        "",
        f"Answer: \\boxed{{{answer}}}" if answer else "Answer: (none was found)",
        "",
        "Findings:",
        reasoning_summary(run) or "(the model gave none)",
        "",
        "Sources:",
    ]
    sources = run_sources(run)
    for source in sources:
        lines.append(f"{source.number}. {source.url}")
        if source.passage:
            lines.append("   " + one_line(source.passage, passage_chars))
    if not sources:
        lines.append("(the run read no page or document)")
    return [ChatMessage("user", render_task_message(run.task)), ChatMessage("assistant", "\n".join(lines))]
