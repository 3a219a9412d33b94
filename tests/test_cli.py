"""`appliance --task` headless: output, exit codes, errors, Ctrl-C (subprocesses of `python -m appliance`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO_ROOT, cli_env, run_cli, tool_call, write_replay

NO_TOOLS = {"APPLIANCE_TOOLS_ENABLED": ""}
JSON_KEYS = [
    "run_id", "status", "answer", "turns", "tool_calls", "prompt_tokens", "completion_tokens", "elapsed_s", "sources",
    "attempts",
]  # fmt: skip


def test_version() -> None:
    result = run_cli(["--version"])
    assert result.returncode == 0
    assert result.stdout.startswith("appliance, version ")


def test_task_with_replay_prints_the_json_object(appliance_home: Path, tmp_path: Path) -> None:
    replay = write_replay(
        tmp_path / "r.jsonl",
        [tool_call("nowhere", "lookup", {"q": "x"}), "Two moons.", "The answer is \\boxed{2}"],
    )
    result = run_cli(["--task", "How many moons does Mars have?", "--replay", str(replay), "--json"], env=NO_TOOLS)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert list(payload) == JSON_KEYS
    assert payload["status"] == "answered" and payload["answer"] == "2"
    assert payload["turns"] == 2 and payload["tool_calls"] == 1
    assert payload["sources"] == []  # the call named no URL: the run read nothing
    assert payload["prompt_tokens"] > 0 and payload["completion_tokens"] > 0
    assert "[turn 1] nowhere/lookup" in result.stderr  # progress goes to stderr
    assert (appliance_home / "runs" / payload["run_id"] / "workspace").is_dir()


def test_plain_output_is_the_answer(appliance_home: Path, tmp_path: Path) -> None:
    replay = write_replay(tmp_path / "r.jsonl", ["Paris.", "\\boxed{Paris}"])
    result = run_cli(["--task", "Capital of France?", "--replay", str(replay)], env=NO_TOOLS)
    assert (result.returncode, result.stdout) == (0, "Paris\n")


def test_no_boxed_answer_exits_1(appliance_home: Path, tmp_path: Path) -> None:
    replay = write_replay(tmp_path / "r.jsonl", ["hmm", "no idea", "still none", "nothing"])
    # One run (attempts off): with attempts, each would need a failure summary scripted.
    result = run_cli(["--task", "?", "--replay", str(replay), "--json", "--attempts", "0"], env=NO_TOOLS)
    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == "no_answer"


def test_replay_ending_early_exits_2_with_the_fix(appliance_home: Path, tmp_path: Path) -> None:
    replay = write_replay(tmp_path / "r.jsonl", [tool_call("nowhere", "lookup", {"q": "x"})])
    result = run_cli(["--task", "?", "--replay", str(replay), "--json"], env=NO_TOOLS)
    assert result.returncode == 2
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["status"] == "error"
    assert "add more lines to the replay file" in payload["error"]


def test_unknown_backend_is_a_usage_error(appliance_home: Path) -> None:
    result = run_cli(["--task", "x", "--backend", "ollama"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("appliance: error: unknown backend 'ollama'")
    assert "Fix: use --backend llamacpp | openai | replay" in result.stderr


def test_missing_model_file_is_component_unavailable(appliance_home: Path, tmp_path: Path) -> None:
    result = run_cli(["--task", "x", "--model", str(tmp_path / "missing.gguf"), "--json"], env=NO_TOOLS)
    assert result.returncode == 3
    line = result.stderr.strip().splitlines()[-1]
    assert "missing.gguf not found" in line and "appliance install" in line
    assert json.loads(result.stdout)["status"] == "error"


def test_unreadable_profile_is_a_usage_error(appliance_home: Path) -> None:
    (appliance_home / "profiles").mkdir()
    (appliance_home / "profiles" / "bad.toml").write_text("[model\n", encoding="utf-8")
    result = run_cli(["--task", "x", "--profile", "bad"])
    assert result.returncode == 2
    assert "profile 'bad'" in result.stderr and "not valid TOML" in result.stderr


def test_missing_replay_file_and_bad_attachment(appliance_home: Path, tmp_path: Path) -> None:
    result = run_cli(["--task", "x", "--replay", str(tmp_path / "none.jsonl")], env=NO_TOOLS)
    assert result.returncode == 2 and "cannot read replay file" in result.stderr
    replay = write_replay(tmp_path / "r.jsonl", ["\\boxed{1}", "\\boxed{1}"])
    result = run_cli(["--task", "x", "--replay", str(replay), "--attach", str(tmp_path / "nope.csv")], env=NO_TOOLS)
    assert result.returncode == 2 and "attachment" in result.stderr and "does not exist" in result.stderr


def test_empty_task_is_refused(appliance_home: Path) -> None:
    result = run_cli(["--task", "   "])
    assert result.returncode == 2 and "the task is empty" in result.stderr


def test_ctrl_c_ends_the_run_as_interrupted(appliance_home: Path, tmp_path: Path) -> None:
    slow = tmp_path / "slow.jsonl"
    slow.write_text(json.dumps({"content": "thinking " * 200, "delay": 30}) + "\n", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--task", "x", "--replay", str(slow), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(NO_TOOLS), cwd=REPO_ROOT,
    )  # fmt: skip
    # Signal once the run is recorded as running, so this is the in-run path (not the one before it started).
    deadline = time.monotonic() + 60
    while '"status": "running"' not in run_cli(["history", "list", "--json"]).stdout:
        assert process.poll() is None and time.monotonic() < deadline, "the run never started"
        time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    payload = json.loads(stdout)
    assert payload["status"] == "interrupted" and payload["run_id"] is not None
    assert f'"run_id": "{payload["run_id"]}", "status": "interrupted"' in run_cli(["history", "list", "--json"]).stdout


def test_prompt_command_without_tools_has_no_listing(appliance_home: Path) -> None:
    result = run_cli(["prompt", "--date", "2030-01-02"], env=NO_TOOLS)
    assert result.returncode == 0
    assert "Today is: 2030-01-02" in result.stdout
    assert "## Server name" not in result.stdout
    bad = run_cli(["prompt", "--date", "tomorrow"], env=NO_TOOLS)
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr


def test_prompt_command_prints_the_reference_prompt_byte_for_byte(appliance_home: Path) -> None:
    golden = REPO_ROOT / "tests" / "golden"
    result = run_cli(["prompt", "--date", "2025-11-26"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == (golden / "system_prompt_v1.txt").read_text(encoding="utf-8")
    offered = run_cli(["prompt", "--date", "2025-11-26"], env={"APPLIANCE_OFFER_DOWNLOAD_TOOL": "1"})
    assert offered.stdout == (golden / "system_prompt_with_download.txt").read_text(encoding="utf-8")
    python_only = run_cli(["prompt", "--date", "2025-11-26"], env={"APPLIANCE_TOOLS_ENABLED": "tool-python"})
    assert python_only.stdout == (golden / "system_prompt_python_only.txt").read_text(encoding="utf-8")


def test_bad_attempts_exit_2_with_the_fix(appliance_home: Path, tmp_path: Path) -> None:
    replay = write_replay(tmp_path / "r.jsonl", ["\\boxed{2}", "\\boxed{2}"])
    base = ["--task", "?", "--replay", str(replay)]
    negative = run_cli([*base, "--attempts", "-1"], env=NO_TOOLS)
    assert negative.returncode == 2
    assert "attempts must be 0 (one run) or more, got -1" in negative.stderr
    assert "use --attempts N with N >= 0" in negative.stderr
    word = run_cli([*base, "--attempts", "two"], env=NO_TOOLS)
    assert word.returncode == 2 and "'two' is not a valid integer" in word.stderr
    keep_all = run_cli([*base, "--attempts", "2", "--keep-last", "-1"], env=NO_TOOLS)
    assert keep_all.returncode == 2 and "use --attempts 0 with --keep-last -1" in keep_all.stderr
    # --keep-last -1 alone runs (attempts are implied off) and nothing was recorded by the refused ones.
    alone = run_cli([*base, "--keep-last", "-1", "--json"], env=NO_TOOLS)
    assert alone.returncode == 0, alone.stderr
    listing = run_cli(["history", "list"], env=NO_TOOLS)
    assert listing.stdout.count("answered") == 1


def test_a_continued_reply_is_one_progress_line(appliance_home: Path, tmp_path: Path) -> None:
    long_reply = "<think>" + " ".join(f"step{i}" for i in range(60)) + "</think> Two moons."
    replay = write_replay(tmp_path / "r.jsonl", [long_reply, "\\boxed{2}"])
    result = run_cli(
        ["--task", "?", "--replay", str(replay), "--json"], env={**NO_TOOLS, "APPLIANCE_MODEL_MAX_TOKENS": "50"}
    )
    assert result.returncode == 0, result.stderr
    assert "[turn 1] reply cut at 50 tokens: continuing (up to 67 more)" in result.stderr
