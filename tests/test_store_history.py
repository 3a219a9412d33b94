"""`appliance history`: list, show, search, export, prune, tag, delete; replay of a past run; output safety."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from appliance.agent import runtime
from appliance.agent.context import OMITTED
from appliance.agent.events import AgentEvent, RunFinished, TextDelta, TurnEnded
from appliance.agent.runtime import build_toolbox, prepare_run
from appliance.llm.replay import load_replay
from appliance.store import History, StoreError, open_history
from tests.conftest import run_cli
from tests.scripted import RecordingReplay
from tests.store_support import call, finished, run_in_process, settings_for, write_script

TASK = "Which city hosts the Louvre?"
SCRIPT = [
    call("google_search", q="louvre city"),
    call("scrape_and_extract_info", url="https://example.org/louvre", info_to_extract="the city of the Louvre"),
    call("echo", text="the museum is in Paris, on the right bank of the Seine"),
    call("echo", text="checked twice"),
    "<think>Paris.</think> Done.",
    "The Louvre is in \\boxed{Paris}. Source: https://example.org/louvre",
]


@pytest.fixture
def recorded(appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A database with one answered run (its prompts kept) and one hostile run."""
    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")
    db = appliance_home / "history.db"
    script = write_script(tmp_path / "s.jsonl", SCRIPT)
    settings = settings_for(script)
    backend = RecordingReplay(load_replay(script))
    toolbox = build_toolbox(settings, lambda: backend)
    with open_history(db) as history:
        agent, state = prepare_run(settings, TASK, backend=backend, toolbox=toolbox, run_id="louvre")
        recorder = history.recorder()
        events = []
        for event in agent.run(state):
            recorder(event)
            events.append(event)
        toolbox.close()
        hostile = write_script(
            tmp_path / "h.jsonl",
            [
                call("echo", text="\x1b]0;pwned\x07\x1b[31mred\x1b[0m \x9b2J ```\n## Injected\n```"),
                "<think>x</think> ok",
                "\\boxed{\x1b[2Jclear}",
            ],
        )
        run_in_process(history, settings_for(hostile), "evil \x1b[5mtask\x1b[0m ```", "hostile")
    return {"db": db, "events": events, "prompts": backend.prompts, "home": appliance_home}


def cli(*args: str) -> Any:
    result = run_cli(["history", *args])
    return result


def test_list_shows_status_and_answer(recorded: dict[str, Any]) -> None:
    result = cli("list")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("louvre"))
    assert "answered" in line and TASK in line and "Paris" in line
    rows = [json.loads(line) for line in cli("list", "--json").stdout.splitlines()]
    assert {r["run_id"] for r in rows} == {"louvre", "hostile"}
    louvre = next(r for r in rows if r["run_id"] == "louvre")
    assert (louvre["status"], louvre["answer"], louvre["turns"], louvre["tool_calls"]) == ("answered", "Paris", 5, 4)
    assert cli("list", "--status", "error").stderr.strip() == "No runs match."


def test_show_is_readable_markdown(recorded: dict[str, Any]) -> None:
    result = cli("show", "louv")  # a unique prefix is enough
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("# Run louvre")
    for part in ("## Task", TASK, "### Turn 1", "`test-tools` / `google_search`", "**Result** (ok", "## Sources"):
        assert part in text, part
    assert "- <https://example.org/louvre>" in text
    assert text.index("## Sources") < text.index("## Answer") and "```text\nParis\n```" in text
    assert "shown to the model as" in text  # an omitted result is marked (keep_last = 2)


def test_printed_output_carries_no_terminal_controls(recorded: dict[str, Any]) -> None:
    outputs = [cli("show", "hostile").stdout, cli("list").stdout, cli("search", "pwned").stdout]
    outputs.append(cli("list", "--json").stdout)
    outputs.append(cli("export", "hostile").stdout)
    for out in outputs:
        assert out
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", out), repr(out)
    show = outputs[0]
    # The injected heading stays inside a fence longer than the backticks it carries.
    lines = show.splitlines()
    injected = lines.index("## Injected")
    opening = next(line for line in reversed(lines[:injected]) if line.startswith("```"))
    assert opening.startswith("````"), opening
    assert show.count("\n## ") == show.count("\n## Injected") + 4  # Task, Steps, Sources, Answer
    # JSON output escapes the controls and round-trips them.
    rows = [json.loads(line) for line in outputs[3].splitlines()]
    assert any("\x1b" in r["task"] for r in rows)


def test_search_finds_tasks_answers_and_tool_results(recorded: dict[str, Any]) -> None:
    with open_history(recorded["db"]) as history:
        assert next((h.run_id, h.field) for h in history.search("louvre city"))[0] == "louvre"
        fields = {h.field for h in history.search("paris")}
        assert {"answer", "tool_result"} <= fields
        hit = next(h for h in history.search("right bank seine") if h.field == "tool_result")
        assert (hit.run_id, hit.tool, hit.turn) == ("louvre", "echo", 3) and "[Seine]" in hit.snippet
        assert history.search("example.org/louvre")[0].field in ("tool_arguments", "tool_result")
        assert history.search("museu*")  # prefix search
        assert history.search("nothing-like-this-anywhere") == []
        # Quotes, dashes and FTS operators in plain words are taken literally.
        assert isinstance(history.search('"the AND NOT ( city x:y'), list)
        assert history.search("louvre OR zebra") == []  # OR is a word to find here, not an operator
        assert next(h.run_id for h in history.search("louvre OR zebra", raw=True)) == "louvre"
        with pytest.raises(StoreError, match="cannot search"):
            history.search('"unbalanced', raw=True)
    out = cli("search", "--json", "seine")
    hits = [json.loads(line) for line in out.stdout.splitlines()]
    assert hits and hits[0]["run_id"] == "louvre" and hits[0]["field"] == "tool_result"
    bad = cli("search", "--raw", "AND AND")
    assert bad.returncode == 2 and "cannot search" in bad.stderr


def test_chatml_export_is_what_the_model_saw(recorded: dict[str, Any]) -> None:
    prompts = recorded["prompts"]
    final = finished(recorded["events"])
    context = json.loads(cli("export", "louvre", "--view", "context").stdout)
    saw = [{"role": m.role, "content": m.content} for m in prompts[-1]]
    assert context["messages"] == [*saw, {"role": "assistant", "content": final.final_text}]
    assert any(m["content"] == OMITTED for m in context["messages"])
    full = json.loads(cli("export", "louvre").stdout)
    roles = [m["role"] for m in full["messages"]]
    assert roles[:3] == ["system", "user", "assistant"] and roles[-2:] == ["user", "assistant"]
    assert OMITTED not in [m["content"] for m in full["messages"]]
    assert len(full["messages"]) == len(context["messages"])
    # Every reply the model wrote, in order, exactly as it wrote it.
    replies = [m["content"] for m in full["messages"] if m["role"] == "assistant"]
    assert replies == [e.content for e in recorded["events"] if isinstance(e, TurnEnded)]
    assert full["metadata"]["answer"] == "Paris" and full["metadata"]["run_id"] == "louvre"


def test_export_formats_and_files(recorded: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    result = cli("export", "--all", "--status", "answered", "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {line["metadata"]["run_id"] for line in lines} == {"louvre", "hostile"}
    report = tmp_path / "r.md"
    assert cli("export", "louvre", "--format", "markdown", "-o", str(report)).returncode == 0
    assert report.read_text(encoding="utf-8").startswith("# Run louvre")
    assert cli("export").returncode == 2


def test_replayed_events_match_the_run(recorded: dict[str, Any]) -> None:
    original: list[AgentEvent] = recorded["events"]
    with open_history(recorded["db"]) as history:
        replayed = list(history.replay_events(history.get_run("louvre")))

    def steady(events: list[AgentEvent]) -> list[AgentEvent]:
        return [e for e in events if not isinstance(e, (TextDelta, RunFinished))]

    assert steady(replayed) == steady(original)
    text = "".join(e.text for e in replayed if isinstance(e, TextDelta))
    assert text == "".join(e.text for e in original if isinstance(e, TextDelta))
    done = replayed[-1]
    assert isinstance(done, RunFinished)
    assert (done.answer, done.turns, done.tool_calls) == (finished(original).answer, 5, 4)


def test_tag_and_delete(recorded: dict[str, Any]) -> None:
    assert cli("tag", "louvre", "museum").returncode == 0
    tagged = [json.loads(line) for line in cli("list", "--json", "--tag", "museum").stdout.splitlines()]
    assert [r["run_id"] for r in tagged] == ["louvre"] and tagged[0]["tags"] == ["museum"]
    assert cli("tag", "louvre", "museum", "--remove").returncode == 0
    assert cli("list", "--tag", "museum").stdout == ""
    run_dir = recorded["home"] / "runs" / "louvre"
    assert run_dir.is_dir()
    assert cli("delete", "louvre", "--files").returncode == 0
    assert not run_dir.exists()
    with open_history(recorded["db"]) as history:
        assert [r.run_id for r in history.list_runs()] == ["hostile"]
        assert history.search("seine") == []  # its tool results left the index too
        counts = history.db.conn.execute(
            "SELECT (SELECT count(*) FROM messages WHERE run_id = 'louvre') + "
            "(SELECT count(*) FROM tool_calls WHERE run_id = 'louvre') + "
            "(SELECT count(*) FROM events WHERE run_id = 'louvre')"
        ).fetchone()[0]
        assert counts == 0
    missing = cli("delete", "louvre")
    assert missing.returncode == 2 and "no run 'louvre'" in missing.stderr


def _age(history: History, run_id: str, iso: str) -> None:
    history.db.conn.execute("UPDATE runs SET started_at = ? WHERE run_id = ?", (iso, run_id))
    history.db.conn.commit()


def test_prune_by_age_keeps_tagged_and_running(recorded: dict[str, Any], tmp_path: Path) -> None:
    with open_history(recorded["db"]) as history:
        _age(history, "louvre", "2020-01-01T00:00:00.000+00:00")
        _age(history, "hostile", "2020-01-02T00:00:00.000+00:00")
        history.tag_run("hostile", "keep")
        settings = settings_for(write_script(tmp_path / "r.jsonl", [call("echo", text="x"), "a", "\\boxed{1}"]))
        run_in_process(history, settings, "still running", "live", stop_after=3)  # owned by this live process
        _age(history, "live", "2020-01-03T00:00:00.000+00:00")
    dry = cli("prune", "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.split() == ["would", "delete", "louvre"]
    result = cli("prune", "--older-than", "30d")
    assert result.returncode == 0, result.stderr
    with open_history(recorded["db"]) as history:
        assert sorted(r.run_id for r in history.list_runs()) == ["hostile", "live"]
    assert cli("prune", "--older-than", "30d", "--include-tagged").stdout.split() == ["deleted", "hostile"]
    assert cli("prune").returncode == 2
    assert cli("prune", "--older-than", "soon").returncode == 2


def test_prune_to_a_size_deletes_the_oldest_first(
    appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")
    db = appliance_home / "history.db"
    script = write_script(tmp_path / "big.jsonl", [call("repeat", text="bulk text ", times=30_000), "x", "\\boxed{1}"])
    settings = settings_for(script)
    with open_history(db) as history:
        for i in range(6):
            run_in_process(history, settings, f"big {i}", f"big-{i}")
            _age(history, f"big-{i}", f"2021-01-0{i + 1}T00:00:00.000+00:00")
    size = db.stat().st_size  # closed: the write-ahead log is folded into the file
    assert size > 6 * 100_000
    limit = size // 2
    result = cli("prune", "--max-size", f"{limit // 1024}k")
    assert result.returncode == 0, result.stderr
    with open_history(db) as history:
        left = sorted(r.run_id for r in history.list_runs(limit=0))
        assert left == [f"big-{i}" for i in range(6 - len(left), 6)] and 1 <= len(left) <= 4
        assert history.size_bytes() <= limit


def test_unknown_or_ambiguous_run_ids(recorded: dict[str, Any]) -> None:
    with open_history(recorded["db"]) as history:
        with pytest.raises(StoreError, match="no run"):
            history.get_run("zzz")
        with pytest.raises(StoreError, match="ambiguous"):
            history.get_run("")
    assert cli("show", "zzz").returncode == 2


def test_no_history_yet(appliance_home: Path) -> None:
    result = cli("list")
    assert result.returncode == 0 and "No runs recorded yet" in result.stderr
    assert not (appliance_home / "history.db").exists()
    assert cli("show", "x").returncode == 3


def test_listing_before_anything_was_recorded_is_empty_not_an_error(appliance_home: Path) -> None:
    from tests.conftest import run_cli

    as_json = run_cli(["history", "list", "--json"])
    assert (as_json.returncode, as_json.stdout) == (0, "")
    plain = run_cli(["history", "list"])
    assert plain.returncode == 0 and "No runs recorded yet" in plain.stderr
    assert not (appliance_home / "history.db").exists()  # listing never creates the database


def test_context_export_follows_the_runs_own_eviction_block(
    appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-default [agent] eviction_block: the exported context is still the last prompt the model saw."""
    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")
    turns = [call("echo", text=f"result {i}") for i in range(9)]
    script = write_script(tmp_path / "s.jsonl", [*turns, "Done.", "\\boxed{7}"])
    overrides = {"agent.keep_last": 1, "agent.eviction": "blocks", "agent.eviction_block": 3}
    settings = settings_for(script, **overrides)
    backend = RecordingReplay(load_replay(script))
    toolbox = build_toolbox(settings, lambda: backend)
    with open_history(appliance_home / "history.db") as history:
        agent, state = prepare_run(settings, TASK, backend=backend, toolbox=toolbox, run_id="blocks")
        recorder = history.recorder()
        events = [e for e in agent.run(state) if recorder(e) is None]
        toolbox.close()
    context = json.loads(cli("export", "blocks", "--view", "context").stdout)
    saw = [{"role": m.role, "content": m.content} for m in backend.prompts[-1]]
    assert context["messages"] == [*saw, {"role": "assistant", "content": finished(events).final_text}]
