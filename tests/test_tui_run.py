"""The main screen driven with Pilot: real runs with the replay backend, recorded in a real history."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from appliance.store import open_history
from appliance.tui.app import ApplianceApp
from appliance.tui.main_screen import MainScreen
from appliance.tui.toolcall import ToolCallView
from appliance.tui.transcript import Transcript
from appliance.tui.widgets import AnswerPanel, ThinkingView, TurnView
from tests.tui_support import (
    answer,
    command,
    scrape,
    screen_text,
    search,
    transcript_outline,
    use_scripted_tools,
    wait_for,
    write_script,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
def tools(appliance_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_scripted_tools(monkeypatch)
    monkeypatch.setenv("APPLIANCE_RESULT_MAX_CHARS", "2000")
    return appliance_home


def options(tmp_path: Path, script: Path, **extra: Any) -> dict[str, Any]:
    return {"backend": "replay", "replay": script, "db": tmp_path / "history.db", "keep_last": 2, **extra}


def main_of(app: ApplianceApp) -> MainScreen:
    return app.main


async def start(pilot: Any, task: str) -> None:
    await pilot.click("#task")
    await pilot.press(*task)
    await pilot.press("ctrl+s")


async def test_a_run_with_several_tool_calls(tools: Path, tmp_path: Path) -> None:
    script = write_script(
        tmp_path / "run.jsonl",
        [
            search("moons of mars", "Start with a search."),
            scrape("https://example.org/moons-of-mars/1", "number of moons", "Read the first page."),
            command("flood 5000", "Check something in the sandbox."),
            command("echo done", "One more step."),
            "<think>\nI have enough.\n</think>\n\nMars has two moons, Phobos and Deimos.",
            answer("2"),
        ],
    )
    app = ApplianceApp(options(tmp_path, script))
    async with app.run_test(size=(100, 40)) as pilot:
        await start(pilot, "How many moons does Mars have?")
        main = main_of(app)
        await wait_for(lambda: main.phase == "done", what="the run to finish")
        await pilot.pause()
        transcript = main.query_one(Transcript)
        calls = list(transcript.query(ToolCallView))
        tools_called = [c.call.tool for c in calls]
        assert tools_called == ["google_search", "scrape_and_extract_info", "run_command", "run_command"]
        assert all(c.finished is not None and c.finished.status == "ok" for c in calls)
        # The sandbox flood was cut to the 2,000-character cap and is marked; with keep_last 2 the
        # results of the first two turns left the model's context and are marked too.
        flood = calls[2]
        assert flood.finished is not None and flood.finished.truncated
        assert "-truncated" in flood.classes
        assert [c.omitted for c in calls] == [True, True, False, False]
        # Thinking is in its own (folded) widget; the said text streamed into Markdown.
        turns = list(transcript.query(TurnView))
        assert turns[0].thinking is not None and "Start with a search." in turns[0].thinking.paragraphs.text
        assert all(t.query(ThinkingView).first().collapsed for t in turns if t.thinking is not None)
        assert "Phobos and Deimos" in turns[4].said
        assert "<use_mcp_tool>" not in "".join(t.said for t in turns)
        panel = transcript.query_one(AnswerPanel)
        assert panel.status == "answered" and panel.answer == "2"
        assert [s.url for s in panel.sources] == ["https://example.org/moons-of-mars/1"]
        assert main.meter.state == "answered"
        assert main.meter.turn == 5 and main.meter.max_turns == 600
        # Copy puts the answer and its sources on the clipboard.
        await pilot.press("ctrl+g")
        assert app.clipboard == "2\n\nSources:\n- https://example.org/moons-of-mars/1"
        text = screen_text(app)
        assert "answered" in text and "step 5/600" in text
    with open_history(tmp_path / "history.db") as history:
        runs = history.list_runs()
        assert len(runs) == 1 and runs[0].status == "answered" and runs[0].tool_calls == 4


async def test_cancel_stops_the_running_tool_and_resume_finishes_the_run(tools: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    script = write_script(
        tmp_path / "run.jsonl",
        [
            command("wait release", "Wait for the file."),
            "<think>\nDone waiting.\n</think>\n\nThe file arrived.",
            answer("released"),
        ],
    )
    app = ApplianceApp(options(tmp_path, script, workspace=workspace))
    async with app.run_test(size=(100, 30)) as pilot:
        main = main_of(app)
        await start(pilot, "Wait for the release file")
        await wait_for(lambda: (workspace / "waiting").exists(), what="the tool to start")
        view = main.query_one(ToolCallView)
        assert view.finished is None and "-running" in view.classes
        assert main.check_action("cancel", ()) and not main.check_action("resume", ())
        started = time.monotonic()
        await pilot.press("escape")
        await wait_for(lambda: main.phase == "done", what="the cancel to land")
        # The tool was stopped at once, not after its own end (it would never end on its own).
        assert time.monotonic() - started < 5
        assert main.run_status == "interrupted" and main.meter.state == "interrupted"
        assert view.stopped == "stopped" and "-running" not in view.classes
        panel = main.query_one(AnswerPanel)
        assert panel.status == "interrupted"
        with open_history(tmp_path / "history.db") as history:
            assert history.get_run(main.run_id or "").status == "interrupted"
        assert main.check_action("resume", ())

        (workspace / "release").write_text("go", encoding="utf-8")
        await pilot.press("ctrl+r")
        await wait_for(lambda: main.phase == "done" and main.run_status != "interrupted", what="the resumed run")
        assert main.run_status == "answered"
        panel = main.query_one(AnswerPanel)
        assert panel.answer == "released"
        text = screen_text(app)
        assert "Resumed after turn 1" in "\n".join(str(n.render()) for n in main.query(".note"))
        assert "answered" in text
        # The interrupted call ran again and finished; the stopped one stays marked in the transcript.
        finished = [v for v in main.query(ToolCallView) if v.finished is not None]
        assert [v.finished.result for v in finished if v.finished] == ["released"]
        # Everything reads in the order it happened: the stopped call, the resume and its notes, then the
        # call run again (below the resume, not back in the first turn's box), the next turns, the answer.
        lines = transcript_outline(main)
        resumed = lines.index("Resumed after turn 1.")
        assert lines[:resumed] == ["stopped call"], lines
        assert "did not finish and run again" in lines[resumed + 1], lines
        assert lines[resumed + 2] == "finished call" and lines[-1] == "answer", lines
    with open_history(tmp_path / "history.db") as history:
        (run,) = history.list_runs()
        assert run.status == "answered" and run.answer == "released" and run.turns == 2


async def test_cancel_while_the_model_streams(tools: Path, tmp_path: Path) -> None:
    long_reply = "<think>\n" + "thinking about it " * 400 + "\n</think>\n\nnever said"
    script = write_script(tmp_path / "run.jsonl", [{"content": long_reply, "delay": 20}, answer("x")])
    app = ApplianceApp(options(tmp_path, script))
    async with app.run_test(size=(80, 24)) as pilot:
        main = main_of(app)
        await start(pilot, "Think for a long time")
        await wait_for(lambda: any(t.thinking is not None for t in main.query(TurnView)), what="thinking to stream")
        started = time.monotonic()
        await pilot.press("escape")
        await wait_for(lambda: main.phase == "done", what="the cancel to land")
        assert time.monotonic() - started < 3
        assert main.run_status == "interrupted"
        (turn,) = main.query(TurnView)
        assert turn.thinking is not None and 0 < len(turn.thinking.paragraphs.text) < len(long_reply)


async def test_attach_a_file_export_the_run_and_toggle_thinking(
    tools: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("Phobos is the larger moon.", encoding="utf-8")
    script = write_script(tmp_path / "run.jsonl", [search("phobos size"), "Phobos is larger.", answer("Phobos")])
    app = ApplianceApp(options(tmp_path, script))
    async with app.run_test(size=(100, 30)) as pilot:
        main = main_of(app)
        await pilot.press("ctrl+o")
        field = app.screen.query_one("#attach-path", Input)
        field.value = str(tmp_path / "missing.txt")  # typing long paths key by key is slow
        await pilot.press("enter")
        error = app.screen.query_one("#attach-error")
        assert error.display and "does not exist" in str(error.render())
        field.value = str(notes)
        await pilot.press("enter")
        await pilot.press("escape")
        assert main.attachments == [notes.resolve()]
        assert "notes.txt" in str(main.query_one("#attachments").render())
        await start(pilot, "Which moon is larger?")
        await wait_for(lambda: main.phase == "done", what="the run")
        with open_history(tmp_path / "history.db") as history:
            (run,) = history.list_runs()
            assert history.get_run(run.run_id).attachments == (str(notes.resolve()),)

        # Export: the default name is offered; an existing file is refused in the dialog, not overwritten.
        taken = tmp_path / "taken.md"
        taken.write_text("keep me", encoding="utf-8")
        await pilot.press("ctrl+f")
        field = app.screen.query_one("#export-path", Input)
        assert field.value == str(tmp_path / f"appliance-{run.run_id}.md")
        field.value = str(taken)
        await pilot.press("enter")
        assert "exists" in str(app.screen.query_one("#export-error").render())
        assert taken.read_text(encoding="utf-8") == "keep me"
        field.value = str(tmp_path / "report.md")
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is main
        report = (tmp_path / "report.md").read_text(encoding="utf-8")
        assert "## Answer" in report and "Phobos" in report and "Which moon is larger?" in report

        thinking = [t.thinking for t in main.query(TurnView) if t.thinking is not None]
        assert thinking and all(t.display for t in thinking)
        await pilot.press("ctrl+t")
        assert not any(t.display for t in thinking)
        await pilot.press("ctrl+t")
        assert all(t.display for t in thinking)


async def test_theme_comes_from_the_config(tools: Path, tmp_path: Path) -> None:
    (tools / "config.toml").write_text('[ui]\ntheme = "light"\n', encoding="utf-8")
    script = write_script(tmp_path / "run.jsonl", [answer("1")])
    app = ApplianceApp(options(tmp_path, script))
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.theme == "textual-light"
        await pilot.press("f4")
        assert app.theme == "textual-dark"


async def test_leaving_the_app_mid_run_records_the_run_as_interrupted(tools: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    script = write_script(tmp_path / "run.jsonl", [command("wait release"), "x", answer("x")])
    app = ApplianceApp(options(tmp_path, script, workspace=workspace))
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot, "wait")
        await wait_for(lambda: (workspace / "waiting").exists(), what="the tool to start")
    # The harness closed the app without ctrl+q: the run's thread was still stopped and recorded.
    assert app.main.thread_done.is_set()
    with open_history(tmp_path / "history.db") as history:
        (run,) = history.list_runs()
        assert run.status == "interrupted"


async def test_sources_open_their_archived_copy(
    appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.tui.dialogs import SourcesDialog
    from tests.pagefixtures import serving, standard_routes

    with serving(standard_routes()) as pages:
        # The real scrape tool, archiving what it fetches; the replay backend is its extractor too.
        monkeypatch.setenv("APPLIANCE_TOOLS_ENABLED", "jina_scrape_llm_summary")
        monkeypatch.setenv("APPLIANCE_SCRAPE_ALLOW_HOSTS", f"127.0.0.1:{pages.port}")
        script = write_script(
            tmp_path / "run.jsonl",
            [
                scrape(pages.url("/report.pdf"), "lead level", "Read the report."),
                "The 90th percentile lead level was 3.4 ppb.",
                "The report gives it.",
                answer("3.4 ppb"),
            ],
        )
        app = ApplianceApp(options(tmp_path, script))
        async with app.run_test(size=(100, 40)) as pilot:
            await start(pilot, "What was the lead level?")
            main = main_of(app)
            await wait_for(lambda: main.phase == "done", what="the run to finish")
            panel = main.transcript.query_one(AnswerPanel)
            (source,) = panel.sources
            assert source.url == pages.url("/report.pdf") and source.archived and source.archived_at
            assert "fetched 20" in screen_text(app)
            await pilot.press("ctrl+b")
            await wait_for(lambda: isinstance(app.screen, SourcesDialog), what="the sources dialog")
            await pilot.press("enter")
            await pilot.pause()
            dialog = app.screen
            assert isinstance(dialog, SourcesDialog)
            shown = dialog.shown_text
            # The archived PDF, rendered as text from the WARC record (the server is still there,
            # but the copy is read from the archive: the page was fetched once).
            assert shown.startswith(pages.url("/report.pdf")) and "archived 20" in shown
            assert "The 90th percentile lead level was 3.4 ppb" in shown
            assert pages.hits["/report.pdf"] == 1
            await pilot.press("escape")
    assert (appliance_home / "runs" / source_run_id(appliance_home) / "report.md").is_file()


def source_run_id(home: Path) -> str:
    (run_dir,) = [d for d in (home / "runs").iterdir() if d.is_dir()]
    return run_dir.name
