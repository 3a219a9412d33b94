"""The UI from a real terminal: `python -m appliance` in tmux, keys sent with send-keys, the screen read
with capture-pane. The search tool is the real one, answering from a local corpus (no SearXNG)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.store import open_history
from tests.conftest import REPO_ROOT, cli_env, run_cli
from tests.tui_support import answer, scrape, search, write_script

if shutil.which("tmux") is None:  # installer/test.sh installs it; a machine without it fails loudly
    pytest.fail("tmux is not installed: apt-get install tmux (installer/test.sh lists it)", pytrace=False)


class Terminal:
    """One tmux session running one command in a fixed-size window."""

    def __init__(self, command: list[str], env: dict[str, str], width: int = 100, height: int = 30) -> None:
        self.name = f"appliance-test-{uuid.uuid4().hex[:8]}"
        self.socket = f"appliance-test-{os.getpid()}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # COLUMNS/LINES from the test runner's environment would override the real window size.
        shell = (
            f"cd {shlex.quote(str(REPO_ROOT))} && env -u COLUMNS -u LINES {exports} {shlex.join(command)}; "
            "echo EXITED $?; sleep 30"
        )
        self.tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), shell)

    def tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise AssertionError(f"tmux {args[0]} failed: {result.stderr}")
        return result.stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def wait_for(self, *texts: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        shown = ""
        while time.monotonic() < deadline:
            shown = self.screen()
            if all(text in shown for text in texts):
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{texts} not on screen after {timeout}s; the screen was:\n{shown}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def corpus_env(appliance_home: Path, tmp_path: Path) -> dict[str, str]:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "mars.md").write_text(
        "# The moons of Mars\n\nMars has two moons, Phobos and Deimos, found by Asaph Hall in 1877.\n",
        encoding="utf-8",
    )
    env = {
        "APPLIANCE_HOME": str(appliance_home),
        "APPLIANCE_TOOLS_ENABLED": "search_and_scrape_webpage",
        "APPLIANCE_SEARCH_SOURCES": "corpus",
        "APPLIANCE_SEARXNG_URL": "",
        "TERM": "xterm-256color",
    }
    added = run_cli(["corpus", "add", str(docs)], env=env)
    assert added.returncode == 0, added.stderr
    return env


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def appliance(script: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "appliance", "--backend", "replay", "--replay", str(script), "--db", str(db)]


def full_env(extra: dict[str, str]) -> dict[str, str]:
    env = cli_env(extra)
    return {k: v for k, v in env.items() if k.startswith(("APPLIANCE_", "PYTHON", "TERM", "PATH", "HOME", "LANG"))}


def test_a_run_from_a_real_terminal(corpus_env: dict[str, str], tmp_path: Path, terminals: list[Terminal]) -> None:
    script = write_script(
        tmp_path / "run.jsonl",
        [
            search("moons of Mars", "Search the local documents."),
            scrape("corpus://1/mars.md", "the moons of Mars", "Read the document."),
            "Mars has two moons, Phobos and Deimos.",  # the extractor's answer (the same replay)
            "Phobos and Deimos.",
            answer("2"),
        ],
    )
    db = tmp_path / "history.db"
    env = {**corpus_env, "APPLIANCE_TOOLS_ENABLED": "search_and_scrape_webpage,jina_scrape_llm_summary"}
    term = Terminal(appliance(script, db), full_env(env), width=120, height=50)
    terminals.append(term)
    term.wait_for("Type a research task", "ctrl+s")
    term.keys("How many moons does Mars have?", literal=True)
    term.keys("C-s")
    # The run is over once the footer offers a new run; the sources arrive with that last message.
    shown = term.wait_for("Answer", "answered", "^n New", "Sources")
    assert "google_search" in shown and "moons of Mars" in shown, shown
    # The document the run read is its source (a search's hits are not).
    assert "1. corpus://1/mars.md" in shown, shown
    term.keys("F2")
    shown = term.wait_for("Past runs", "How many moons does Mars have?")
    assert "answered" in shown
    term.keys("Escape")
    # Back on the finished run, the task box offers a follow-up on it (issue 19).
    term.wait_for("Ask a follow-up about this run")
    term.keys("C-q")
    term.wait_for("EXITED 0")
    with open_history(db) as history:
        (run,) = history.list_runs()
        assert run.status == "answered" and run.answer == "2" and run.tool_calls == 2


def start_slow_run(
    corpus_env: dict[str, str], tmp_path: Path, terminals: list[Terminal], thinking: str
) -> tuple[Terminal, Path]:
    """The UI in a terminal, thinking through a turn that takes a minute to stream."""
    slow = {"content": "<think>\n" + thinking + "\n</think>\nok", "delay": 60}
    script = write_script(tmp_path / "slow.jsonl", [slow, answer("late")])
    db = tmp_path / "history.db"
    term = Terminal(appliance(script, db), full_env(corpus_env), width=80, height=24)
    terminals.append(term)
    term.wait_for("Type a research task")
    term.keys("Think slowly", literal=True)
    term.keys("C-s")
    term.wait_for("Thinking", "running")
    return term, db


def test_cancel_from_a_real_terminal_saves_the_run_as_interrupted(
    corpus_env: dict[str, str], tmp_path: Path, terminals: list[Terminal]
) -> None:
    term, db = start_slow_run(corpus_env, tmp_path, terminals, "Let me think this through slowly. " * 200)
    term.keys("Escape")
    shown = term.wait_for("Interrupted", "ctrl+r resume", "^r Resume")
    assert "interrupted" in shown
    term.keys("C-q")
    term.wait_for("EXITED 0")
    with open_history(db) as history:
        (run,) = history.list_runs()
        assert run.status == "interrupted"


def test_quitting_during_a_run_records_it_as_interrupted(
    corpus_env: dict[str, str], tmp_path: Path, terminals: list[Terminal]
) -> None:
    term, db = start_slow_run(corpus_env, tmp_path, terminals, "Slow thoughts. " * 300)
    term.keys("C-q")
    term.wait_for("EXITED 0", timeout=20)
    with open_history(db) as history:
        (run,) = history.list_runs()
        assert run.status == "interrupted"


def test_control_characters_show_as_escapes_on_a_real_terminal(
    corpus_env: dict[str, str], tmp_path: Path, terminals: list[Terminal]
) -> None:
    # A carriage return would put "Right" over "Wrong"; a bidi override would reverse what follows it;
    # an escape sequence would clear the screen. On screen each is its visible escape, and every word stays.
    hostile = "Wrong\rRight \u202eevil\u202c \x1b[2Jcleared \x1b]0;title\x07"
    script = write_script(tmp_path / "evil.jsonl", ["Thinking \x1b[2J\rhidden.", answer(hostile)])
    db = tmp_path / "history.db"
    term = Terminal(appliance(script, db), full_env(corpus_env), width=120, height=40)
    terminals.append(term)
    term.wait_for("Type a research task")
    term.keys("Say it", literal=True)
    term.keys("C-s")
    shown = term.wait_for("answered", "^n New")
    assert "Wrong\\rRight" in shown, shown  # both words
    assert "\\u202eevil\\u202c" in shown and "\\x1b[2Jcleared" in shown and "\\x1b]0;title\\x07" in shown, shown
    assert "Say it" in shown  # the task is still on screen: nothing cleared it
    term.keys("C-q")
    term.wait_for("EXITED 0")


def test_follow_up_palette_and_recall_from_a_real_terminal(
    corpus_env: dict[str, str], tmp_path: Path, terminals: list[Terminal]
) -> None:
    """Issue 19 on a real terminal: a follow-up under the answer, `/` lists commands, ↑ recalls a task."""
    script = write_script(tmp_path / "run.jsonl", ["Done.", answer("ok")])
    db = tmp_path / "history.db"
    env = {**corpus_env, "APPLIANCE_TOOLS_ENABLED": ""}
    term = Terminal(appliance(script, db), full_env(env), width=120, height=40)
    terminals.append(term)
    term.wait_for("Type a research task")
    term.keys("Capital of France?", literal=True)
    term.keys("C-s")
    term.wait_for("answered", "^n New")
    term.keys("And of Germany?", literal=True)
    term.keys("C-s")
    term.wait_for("And of Germany?", "answered", "^n New")
    term.keys("C-n")
    term.wait_for("Type a research task")
    term.keys("/", literal=True)
    shown = term.wait_for("Open history", "Show settings")
    assert "New run" in shown, shown
    term.keys("Escape")
    term.wait_for("Type a research task")
    term.keys("Up")
    term.wait_for("And of Germany?")
    term.keys("C-q")
    term.wait_for("EXITED 0")
    with open_history(db) as history:
        runs = sorted(history.list_runs(), key=lambda run: run.started_at)
    assert [run.task for run in runs] == ["Capital of France?", "And of Germany?"]
    assert runs[0].parent_run is None and runs[1].parent_run == runs[0].run_id
