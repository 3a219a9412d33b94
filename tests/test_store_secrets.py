"""Credentials never reach the history database or its exports, and a resumed run gets them back from the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.policy import redact
from appliance.store import open_history
from appliance.store.resume import resume_settings
from tests.store_support import call, env_for, run_store_cli, write_script

SECRETS = ("sk-model-SECRET", "sk-judge-SECRET", "hunter2-SECRET", "qwerty-SECRET")
URL = "http://alice:hunter2-SECRET@127.0.0.1:9/v1?api_key=qwerty-SECRET&mode=fast"


def test_redact_hides_credentials_says_where_and_keeps_the_rest() -> None:
    redacted = redact(
        {
            "model": {"api_key": "sk-1", "max_tokens": 512, "base_url": URL, "name": "m"},
            "extraction": {"api_key": "", "judge_api_key": "sk-2", "hf_token": "hf_x"},
            "list": ["https://bob:pw@host/x", "plain"],
        }
    )
    cleaned = redacted.value
    assert sorted(redacted.paths) == [
        "extraction.hf_token",
        "extraction.judge_api_key",
        "list.0",
        "model.api_key",
        "model.base_url",
    ]
    assert cleaned["model"] == {
        "api_key": "***",
        "max_tokens": 512,
        "base_url": "http://***@127.0.0.1:9/v1?api_key=***&mode=fast",
        "name": "m",
    }
    assert cleaned["extraction"] == {"api_key": "", "judge_api_key": "***", "hf_token": "***"}
    assert cleaned["list"] == ["https://***@host/x", "plain"]


def test_no_secret_in_the_database_or_exports(appliance_home: Path, tmp_path: Path) -> None:
    script = write_script(tmp_path / "s.jsonl", [call("echo", text="hi"), "done", "\\boxed{ok}"])
    env = env_for(
        appliance_home,
        APPLIANCE_MODEL_API_KEY=SECRETS[0],
        APPLIANCE_EXTRACTION_API_KEY=SECRETS[1],
        APPLIANCE_MODEL_BASE_URL=URL,
    )
    result = run_store_cli(["--task", "say hi", "--replay", str(script), "--json"], env)
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    exports = [
        run_store_cli(["history", "show", run_id], env).stdout,
        run_store_cli(["history", "export", run_id], env).stdout,
        run_store_cli(["history", "list", "--json"], env).stdout,
    ]
    stored = b"".join(p.read_bytes() for p in appliance_home.glob("history.db*"))
    for secret in SECRETS:
        assert secret.encode() not in stored
        assert all(secret not in text for text in exports)
    with open_history(appliance_home / "history.db") as history:
        model = history.get_run(run_id).settings["model"]
        assert model["api_key"] == "***" and model["base_url"].startswith("http://***@127.0.0.1:9/v1")


def test_a_resumed_run_takes_credentials_from_the_environment(
    appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.store_support import run_in_process, settings_for, simulate_dead_owner

    monkeypatch.setenv("APPLIANCE_MODEL_API_KEY", SECRETS[0])
    monkeypatch.setenv("APPLIANCE_MODEL_BASE_URL", URL)
    script = write_script(tmp_path / "s.jsonl", ["\\boxed{1}", "\\boxed{1}"])
    with open_history(appliance_home / "history.db") as history:
        run_in_process(history, settings_for(script, **{"tools.enabled": []}), "q", "sec", stop_after=1)
        simulate_dead_owner(history, "sec")
        settings = resume_settings(history.load_resume("sec"), {})
    assert settings.model.api_key == SECRETS[0]
    assert settings.model.base_url == URL
    assert settings.model.replay == str(script) and settings.agent.keep_last == 2
