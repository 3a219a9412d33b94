"""The run session every face drives its runs through (appliance.session).

A run stopped in the middle of a tool call keeps the model's KV cache, and its
resume starts from it, whichever face drove it: the TUI and the eval harness
here, the headless CLI and `appliance resume` in test_llamacpp.py (they need a
process to interrupt). The model is llama.cpp with the tiny random GGUF, its
replies forced by literal grammars; the tool blocks until a file appears.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.config import load_settings
from appliance.eval.dataset import EvalTask
from appliance.eval.runner import EvalRunner, load_results, run_tag
from appliance.llm.llamacpp import clear_model_cache
from appliance.session import Backends, resume_session, start_session
from appliance.store import open_history
from appliance.tools import specs
from appliance.tui.app import ApplianceApp
from tests.store_support import run_in_process, settings_for, simulate_dead_owner, write_script
from tests.test_llamacpp import grammar_env
from tests.tui_support import command, use_scripted_tools, wait_for

WAIT_CALL = command("wait release", "The file is not there yet.")


@pytest.fixture
def llama_env(tiny_gguf: Path, tmp_path: Path, appliance_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """One turn that waits on the scripted tool, then a summary with the answer 42."""
    use_scripted_tools(monkeypatch)
    env = grammar_env(tmp_path, WAIT_CALL, "\\boxed{42}", tools=specs.PYTHON_SERVER, context=8192)
    env.update({"APPLIANCE_MODEL_BACKEND": "llamacpp", "APPLIANCE_MODEL_PATH": str(tiny_gguf)})
    env["APPLIANCE_MAX_TURNS"] = "1"
    env["APPLIANCE_AGENT_ATTEMPTS"] = "0"  # one run: out of turns, it answers (an attempt of several would not)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    clear_model_cache()
    return env


def checkpoint_of(home: Path, run_id: str) -> Path:
    return home / "runs" / run_id / "kv-cache.bin"


def summary_tokens(db: Path, run_id: str) -> tuple[int, int]:
    """(prompt tokens, tokens evaluated) of the run's final answer turn."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT prompt_tokens, evaluated_tokens FROM messages WHERE run_id = ? AND kind = 'summary' "
            "AND state = 'kept'",
            (run_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.asyncio
async def test_the_tui_keeps_the_cache_of_a_cancelled_run_and_resumes_from_it(
    llama_env: dict[str, str], appliance_home: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()  # a named workspace must exist: the appliance never makes one
    app = ApplianceApp({"db": tmp_path / "history.db", "workspace": workspace})
    async with app.run_test(size=(100, 30)) as pilot:
        main = app.main
        await pilot.click("#task")
        await pilot.press(*"Wait, then answer")
        await pilot.press("ctrl+s")
        await wait_for(lambda: (workspace / "waiting").exists(), timeout=60, what="the tool to start")
        await pilot.press("escape")
        await wait_for(lambda: main.phase == "done", timeout=30, what="the cancel to land")
        assert main.run_status == "interrupted"
        run_id = main.run_id or ""
        checkpoint = checkpoint_of(appliance_home, run_id)
        assert checkpoint.is_file()

        (workspace / "release").write_text("go", encoding="utf-8")
        await pilot.press("ctrl+r")
        await wait_for(
            lambda: main.phase == "done" and main.run_status != "interrupted", timeout=60, what="the resumed run"
        )
        assert main.run_status == "answered"
        notes = "\n".join(str(n.render()) for n in main.query(".note"))
        assert "restored the model's cache of the interrupted run" in notes
        assert not checkpoint.exists()  # used once
    with open_history(tmp_path / "history.db") as history:
        run = history.get_run(run_id)
        assert (run.status, run.answer, run.resumes) == ("answered", "42", 1)


def test_eval_keeps_the_cache_of_a_stopped_task_and_resumes_from_it(
    llama_env: dict[str, str], appliance_home: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    task = EvalTask("t1", "Wait, then answer.", "42", "1")
    out, db = tmp_path / "eval", tmp_path / "history.db"
    first = EvalRunner(settings, name="kv", out_dir=out, db_path=db)
    outcome: list[bool] = []
    worker = threading.Thread(target=lambda: outcome.append(first.run([task])))
    worker.start()
    deadline = time.monotonic() + 60
    while not list(appliance_home.rglob("waiting")) and time.monotonic() < deadline:
        time.sleep(0.05)
    (waiting,) = appliance_home.rglob("waiting")
    first.stop()  # Ctrl-C in the eval's main thread
    worker.join(30)
    assert outcome == [False] and load_results(out) == []
    with open_history(db) as history:
        (stopped,) = history.list_runs(tag=run_tag("kv", "t1", 1))
    assert stopped.status == "interrupted"
    checkpoint = checkpoint_of(appliance_home, stopped.run_id)
    assert checkpoint.is_file()

    (waiting.parent / "release").write_text("go", encoding="utf-8")
    clear_model_cache()  # a new process: nothing in memory but the checkpoint
    assert EvalRunner(settings, name="kv", out_dir=out, db_path=db).run([task])
    (result,) = load_results(out)
    assert (result.run_id, result.answer, result.correct) == (stopped.run_id, "42", True)
    assert not checkpoint.exists()
    prompt, evaluated = summary_tokens(db, stopped.run_id)
    assert evaluated < prompt / 2, (prompt, evaluated)  # the restored prefix was not evaluated again
    # The loop's own count of each prompt (TurnStarted) is the model's, to the token.
    with sqlite3.connect(db) as conn:
        counts = conn.execute(
            "SELECT prompt_estimate, prompt_tokens FROM messages WHERE kind IN ('turn', 'summary')"
        ).fetchall()
    assert len(counts) >= 2 and all(estimate == exact for estimate, exact in counts), counts


def test_a_session_closes_its_tools_and_backends_are_shared_only_where_that_pays(
    appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_scripted_tools(monkeypatch)
    script = write_script(tmp_path / "s.jsonl", ["\\boxed{1}", "\\boxed{1}"])
    settings = settings_for(script, **{"tools.enabled": [specs.PYTHON_SERVER]})
    closed: list[str] = []
    with open_history(tmp_path / "h.db") as history, Backends() as backends:
        session = start_session(history, settings, "q", backends=backends)
        monkeypatch.setattr(session.toolbox, "close", lambda: closed.append("tools"))
        with session:
            events: list[Any] = []
            finished = session.drive(events.append)
        assert closed == ["tools"] and finished.answer == "1" and not session.kept_checkpoint
        assert type(events[0]).__name__ == "RunStarted" and events[-1] is finished
        # A replay script is never shared: each run reads its own from the start.
        first, release_first = backends.acquire(settings)
        second, release_second = backends.acquire(settings)
        assert first is not second
        release_first()
        release_second()
        # A model stays loaded between runs (the UI's next question, eval's next task) until another is asked for.
        remote = load_settings(
            overrides={"model.backend": "openai", "model.base_url": "http://127.0.0.1:9/v1", "model.name": "m"}
        )
        held, release_held = backends.acquire(remote)
        release_held()
        assert backends.acquire(remote)[0] is held
        other = load_settings(
            overrides={"model.backend": "openai", "model.base_url": "http://127.0.0.1:8/v1", "model.name": "m"}
        )
        assert backends.acquire(other)[0] is not held


def test_a_run_whose_base_url_has_a_query_parameter_resumes_with_it(appliance_home: Path, tmp_path: Path) -> None:
    base_url = "http://127.0.0.1:9/v1?api-version=2024-06-01&mode=fast"
    secret_url = "http://127.0.0.1:9/v1?mode=slow&api_key=sk-SECRET"
    script = write_script(tmp_path / "s.jsonl", ["\\boxed{1}", "\\boxed{1}"])
    with open_history(appliance_home / "history.db") as history:
        for run_id, url in (("plain", base_url), ("secret", secret_url)):
            settings = settings_for(script, **{"tools.enabled": [], "model.base_url": url})
            run_in_process(history, settings, "q", run_id, stop_after=1)
            simulate_dead_owner(history, run_id)
        plain = history.load_resume("plain")
        assert plain.settings["model"]["base_url"] == base_url and plain.settings["redacted"] == []
        with Backends() as backends, resume_session(history, "plain", backends=backends) as session:
            assert session.settings.model.base_url == base_url
        # A secret in the URL is never recorded, and the record says so: the URL comes from the
        # configuration (here the default), not from the masked copy.
        secret = history.load_resume("secret")
        assert secret.settings["redacted"] == ["model.base_url"]
        assert "sk-SECRET" not in str(secret.settings) and "api_key=***" in secret.settings["model"]["base_url"]
        with Backends() as backends, resume_session(history, "secret", backends=backends) as session:
            assert session.settings.model.base_url == load_settings().model.base_url


def test_closing_tools_and_models_logs_what_failed_and_closes_the_rest(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.tools.base import ToolBox
    from tests.tui_support import Python, Search

    class Broken(Search):
        def close(self) -> None:
            raise OSError("the pipe is gone")

    closed: list[str] = []
    python = Python()
    monkeypatch.setattr(python, "close", lambda: closed.append("python"))
    with caplog.at_level("WARNING"):
        ToolBox([Broken(), python]).close()
    assert closed == ["python"]
    (record,) = caplog.records
    assert record.getMessage() == f"closing the {specs.SEARCH_SERVER} tool server failed"
    assert record.exc_info is not None and "the pipe is gone" in str(record.exc_info[1])

    caplog.clear()
    remote = load_settings(
        overrides={"model.backend": "openai", "model.base_url": "http://127.0.0.1:9/v1", "model.name": "m"}
    )
    backends = Backends()
    held, _ = backends.acquire(remote)
    monkeypatch.setattr(held, "close", lambda: (_ for _ in ()).throw(RuntimeError("stuck")))
    with caplog.at_level("WARNING"):
        backends.close()
    assert [r.getMessage() for r in caplog.records] == ["closing the openai backend failed"]
    assert backends.acquire(remote)[0] is not held  # the failed one is not handed out again


def test_a_finished_session_writes_the_report_and_hands_its_sources_to_the_face(
    appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sources a face shows are the store's one list (store.sources), and the report is in the run's directory."""
    from appliance.agent import runtime
    from appliance.store.sources import run_sources
    from tests.store_support import call

    monkeypatch.setitem(runtime.TOOL_SERVERS, "test-tools", "tests.storetools:create_server")
    script = write_script(
        tmp_path / "s.jsonl",
        [
            call("scrape_and_extract_info", url="https://example.org/mars", info_to_extract="moons"),
            "Two.",
            "\\boxed{2}",
        ],
    )
    with open_history(tmp_path / "h.db") as history, Backends() as backends:
        with start_session(history, settings_for(script), "How many moons?", backends=backends) as session:
            session.drive()
        assert [s.url for s in session.sources] == ["https://example.org/mars"]
        assert session.sources == run_sources(history.get_run(session.run_id))
        assert (session.settings.dirs.run_dir(session.run_id) / "report.md").is_file()
