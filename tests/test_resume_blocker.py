"""Whether a recorded run can resume now, found without loading a model (appliance.session.resume_blocker).

The blocker is the error `resume` itself meets, as one line with the fix: the
same text `appliance resume` prints, and nothing is created or changed when
it says no. Real SQLite, replay and llama.cpp (the tiny GGUF) runs, tmp dirs only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import ApplianceError
from appliance.session import Backends, resume_blocker, resume_session
from appliance.store import History, open_history
from tests.conftest import run_cli
from tests.store_support import run_in_process, settings_for, simulate_dead_owner, write_script

NO_TOOLS = {"tools.enabled": []}


@pytest.fixture
def history(appliance_home: Path) -> History:
    with open_history(appliance_home / "history.db") as opened:
        yield opened  # type: ignore[misc]


def interrupted(history: History, tmp_path: Path, run_id: str, **overrides: object) -> Path:
    """A replay run stopped after its first event by a process that is gone; returns its script."""
    script = write_script(tmp_path / f"{run_id}.jsonl", ["\\boxed{1}", "\\boxed{1}"])
    run_in_process(history, settings_for(script, **{**NO_TOOLS, **overrides}), "q", run_id, stop_after=1)
    simulate_dead_owner(history, run_id)
    return script


def refused_alike(history: History, run_id: str, blocker: str, **kwargs: object) -> None:
    """resume_session fails with exactly the blocker's line, and the run stays as it was."""
    before = history.get_run(run_id)
    with Backends() as backends, pytest.raises(ApplianceError) as raised:
        resume_session(history, run_id, backends=backends, **kwargs)  # type: ignore[arg-type]
    assert raised.value.one_line() == blocker
    after = history.get_run(run_id)
    assert (after.status, after.pid, after.turns) == (before.status, before.pid, before.turns)


def test_an_interrupted_run_with_its_script_can_resume(history: History, tmp_path: Path) -> None:
    interrupted(history, tmp_path, "ok")
    assert resume_blocker(history, "ok") is None
    with Backends() as backends, resume_session(history, "ok", backends=backends) as session:
        assert session.drive().answer == "1"


def test_a_replay_script_that_is_gone_blocks_and_resume_says_the_same(
    history: History, tmp_path: Path, appliance_home: Path
) -> None:
    script = interrupted(history, tmp_path, "gone")
    script.unlink()
    blocker = resume_blocker(history, "gone")
    assert blocker == (
        f"cannot read replay file {script}: it does not exist. Fix: pass an existing JSONL file with --replay"
    )
    refused_alike(history, "gone", blocker)
    # `appliance resume` prints that same line, with the usage exit code.
    result = run_cli(["resume", "gone"])
    assert result.returncode == 2 and blocker in result.stderr, result.stderr


def test_finished_live_and_unknown_runs_block(history: History, tmp_path: Path) -> None:
    script = write_script(tmp_path / "done.jsonl", ["\\boxed{1}", "\\boxed{1}"])
    run_in_process(history, settings_for(script, **NO_TOOLS), "q", "done")
    assert history.get_run("done").status == "answered"
    finished = resume_blocker(history, "done")
    assert finished is not None and "already finished (answered)" in finished and "Fix: start a new run" in finished
    # Recorded as running by this (live) process: nobody may resume it.
    run_in_process(history, settings_for(script, **NO_TOOLS), "q", "alive", stop_after=1)
    assert history.get_run("alive").status == "running"
    live = resume_blocker(history, "alive")
    assert live is not None and "is still running" in live and "Fix: wait for it to finish" in live
    refused_alike(history, "alive", live)
    unknown = resume_blocker(history, "nope")
    assert unknown is not None and "no run 'nope'" in unknown


def test_a_model_file_that_is_gone_blocks_without_loading_anything(
    history: History, tmp_path: Path, tiny_gguf: Path
) -> None:
    model = tmp_path / "models" / "copy.gguf"
    model.parent.mkdir()
    shutil.copy(tiny_gguf, model)
    interrupted(history, tmp_path, "local", **{"model.backend": "llamacpp", "model.path": str(model)})
    assert resume_blocker(history, "local") is None
    model.unlink()
    blocker = resume_blocker(history, "local")
    assert blocker == (
        f"model file {model} not found. Fix: run `appliance install` to download the weights, "
        "or set [model] path / --model to a GGUF file"
    )
    refused_alike(history, "local", blocker)


def test_a_profile_that_no_longer_exists_blocks(history: History, tmp_path: Path, appliance_home: Path) -> None:
    profiles = appliance_home / "profiles"
    profiles.mkdir()
    (profiles / "mine.toml").write_text("[agent]\nkeep_last = 3\n", encoding="utf-8")
    script = write_script(tmp_path / "p.jsonl", ["\\boxed{1}", "\\boxed{1}"])
    overrides = {"model.backend": "replay", "model.replay": str(script), "tools.enabled": []}
    run_in_process(history, load_settings(profile="mine", overrides=overrides), "q", "mine", stop_after=1)
    simulate_dead_owner(history, "mine")
    assert resume_blocker(history, "mine") is None
    (profiles / "mine.toml").unlink()
    blocker = resume_blocker(history, "mine")
    assert blocker is not None and "mine" in blocker and "Fix:" in blocker
    refused_alike(history, "mine", blocker)
    # Naming another profile (as `appliance resume --profile` does) lifts it.
    assert resume_blocker(history, "mine", profile="cpu-8b") is None


def test_recorded_settings_this_version_refuses_block(history: History, tmp_path: Path) -> None:
    interrupted(history, tmp_path, "odd")
    with history.lock:
        history.db.conn.execute(
            "UPDATE runs SET settings = json_set(settings, '$.model.temperature', -3) WHERE run_id = 'odd'"
        )
        history.db.conn.commit()
    blocker = resume_blocker(history, "odd")
    assert blocker is not None and "temperature must be >= 0" in blocker
    refused_alike(history, "odd", blocker)


def test_a_refused_workspace_blocks(history: History, tmp_path: Path, appliance_home: Path) -> None:
    interrupted(history, tmp_path, "ws")
    blocker = resume_blocker(history, "ws", workspace=appliance_home)
    assert blocker is not None and "would expose the appliance's own data" in blocker
    refused_alike(history, "ws", blocker, workspace=appliance_home)
    missing = tmp_path / "not-there"
    gone = resume_blocker(history, "ws", workspace=missing)
    assert gone is not None and "does not exist" in gone and not missing.exists()


def test_a_server_address_hidden_for_its_key_blocks_until_it_is_given_again(
    history: History, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_url = "http://127.0.0.1:9/v1?api_key=sk-SECRET"
    overrides = {"model.backend": "openai", "model.base_url": secret_url, "model.name": "m", "tools.enabled": []}
    run_in_process(history, load_settings(overrides=overrides), "q", "remote", stop_after=1)
    simulate_dead_owner(history, "remote")
    blocker = resume_blocker(history, "remote")
    assert blocker is not None and "[model] base_url held a credential" in blocker
    assert "Fix: set APPLIANCE_MODEL_BASE_URL" in blocker and "sk-SECRET" not in blocker
    refused_alike(history, "remote", blocker)
    monkeypatch.setenv("APPLIANCE_MODEL_BASE_URL", secret_url)
    assert resume_blocker(history, "remote") is None
    # A replay run with a hidden address never talks to it: nothing blocks.
    script = interrupted(history, tmp_path, "replayed", **{"model.base_url": secret_url})
    monkeypatch.delenv("APPLIANCE_MODEL_BASE_URL")
    assert script.exists() and resume_blocker(history, "replayed") is None
