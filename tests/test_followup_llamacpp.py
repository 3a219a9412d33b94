"""A follow-up on llama.cpp with the tiny random GGUF: in the same process, the parent's KV prefix is reused.

The parent's last call left its prompt and its final answer in the model's KV
cache; the follow-up's first prompt is that conversation plus the question, so
llama.cpp evaluates only the question (and the few tokens where the cache and
the rendering of the answer differ). A fresh model evaluates the whole prompt.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.llm.llamacpp import clear_model_cache
from appliance.session import Backends, followup_session, start_session
from appliance.store import open_history
from tests.test_llamacpp import grammar_env

# Both turns end the loop at once (no tool call), so each run is one turn and the answer turn.
REPLY = "<think>\nI know this one.\n</think>\n\nIt is forty-two."


def turn_tokens(db: Path, run_id: str, kind: str) -> tuple[int, int, int]:
    """(prompt tokens, tokens evaluated, completion tokens) of the run's kept reply of `kind`."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT prompt_tokens, evaluated_tokens, tokens FROM messages WHERE run_id = ? AND kind = ? "
            "AND state = 'kept' ORDER BY seq LIMIT 1",
            (run_id, kind),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@pytest.fixture
def llama_settings(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, appliance_home: Path) -> None:
    env = grammar_env(tmp_path, REPLY, "The answer is \\boxed{42}", context=8192)
    env.update({"APPLIANCE_MODEL_BACKEND": "llamacpp", "APPLIANCE_MODEL_PATH": str(tiny_gguf)})
    env.update({"APPLIANCE_AGENT_ATTEMPTS": "0", "APPLIANCE_MODEL_TEMPERATURE": "0", "APPLIANCE_MODEL_SEED": "7"})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    clear_model_cache()


def test_a_followup_in_the_same_process_evaluates_only_the_new_tokens(llama_settings: None, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    with open_history(db) as history, Backends() as backends:
        with start_session(history, load_settings(), "What is six times seven?", backends=backends) as session:
            parent = session.drive()
        assert parent.status == "answered", parent
        with followup_session(history, parent.run_id, "And six times eight?", backends=backends) as session:
            child = session.drive()
            assert session.state.context_mode == "conversation"
    assert child.status == "answered", child
    parent_prompt, _, parent_reply = turn_tokens(db, parent.run_id, "summary")
    prompt, evaluated, _ = turn_tokens(db, child.run_id, "turn")
    new_tokens = prompt - parent_prompt - parent_reply
    assert new_tokens > 0
    # Nothing of the parent's last prompt is evaluated again: only the question, and at most the answer's
    # own tokens (sampled under a grammar, they need not be the tokens its rendering gives).
    assert new_tokens <= evaluated <= prompt - parent_prompt + 2, (prompt, evaluated, new_tokens, parent_reply)
    assert evaluated < prompt / 10

    # The same follow-up in a fresh process (a cold model) evaluates all of its prompt.
    clear_model_cache()
    with (
        open_history(db) as history,
        Backends() as backends,
        followup_session(history, parent.run_id, "And six times eight?", backends=backends) as session,
    ):
        cold = session.drive()
    cold_prompt, cold_evaluated, _ = turn_tokens(db, cold.run_id, "turn")
    assert cold_prompt == prompt and cold_evaluated == cold_prompt
