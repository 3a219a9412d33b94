"""A whole headless run: scripted turns call the real tool-python server on real bwrap and box an answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.tools.sandbox import server as sandbox_server
from tests.conftest import tool_call, write_replay

SANDBOX_ID = "ireplaysandbox000001"


def test_replayed_turns_use_the_sandbox_and_keep_python_state(
    appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The script cannot read the id the server makes up, so the server makes up a known one.
    monkeypatch.setattr(sandbox_server, "new_sandbox_id", lambda: SANDBOX_ID)
    monkeypatch.setenv("APPLIANCE_TOOLS_ENABLED", "tool-python")
    turns = [
        tool_call("tool-python", "create_sandbox", {}, "I need a sandbox."),
        tool_call(
            "tool-python",
            "run_python_code",
            {"code_block": "import math\nvalue = math.factorial(5)\nprint('computed')", "sandbox_id": SANDBOX_ID},
        ),
        tool_call(
            "tool-python",
            "run_python_code",
            {"code_block": "open('/home/user/answer.txt', 'w').write(str(value))\nvalue", "sandbox_id": SANDBOX_ID},
        ),
        tool_call("tool-python", "run_command", {"command": "cat answer.txt", "sandbox_id": SANDBOX_ID}),
        "<think>\nThe value is 120.\n</think>\n\nThe answer is \\boxed{120}.",
        "\\boxed{120}",
    ]
    replay = write_replay(tmp_path / "turns.jsonl", turns)
    result = CliRunner().invoke(cli, ["--task", "What is 5 factorial?", "--replay", str(replay), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "answered" and summary["answer"] == "120"
    assert summary["tool_calls"] == 4
    run_dir = appliance_home / "runs" / summary["run_id"]
    # Turn 3 used `value` from turn 2: the kernel kept its state across turns.
    assert (run_dir / "workspace" / "answer.txt").read_text() == "120"
    assert json.loads((run_dir / "sandboxes.json").read_text())["sandboxes"][SANDBOX_ID]["python_used"] is True
    assert "tool-python/run_python_code" in result.stderr and "-> ok" in result.stderr
