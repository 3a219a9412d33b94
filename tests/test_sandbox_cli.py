"""`appliance sandbox exec|check|clean` and the exit codes of every entry point without a working bwrap."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import run_cli, tool_call, write_replay


def test_exec_streams_output_and_exits_with_the_commands_code(appliance_home: Path) -> None:
    ok = run_cli(["sandbox", "exec", "--", "sh", "-c", "echo out; echo err >&2; pwd; id -un"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "out\n/home/user\nuser\n" and ok.stderr == "err\n"
    code = run_cli(["sandbox", "exec", "--", "sh", "-c", "exit 7"])
    assert code.returncode == 7


def test_exec_timeout_exits_124(appliance_home: Path) -> None:
    started = time.monotonic()
    done = run_cli(["sandbox", "exec", "--timeout", "1", "--", "sleep", "30"])
    assert done.returncode == 124 and "killed after 1 seconds" in done.stderr
    assert time.monotonic() - started < 15


def test_exec_uses_the_given_workspace_and_nothing_else(appliance_home: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "input.txt").write_text("given")
    done = run_cli(["sandbox", "exec", "--workspace", str(workspace), "--", "sh", "-c", "cat input.txt > copy.txt; ls"])
    assert done.returncode == 0, done.stderr
    assert (workspace / "copy.txt").read_text() == "given"
    refused = run_cli(["sandbox", "exec", "--workspace", str(appliance_home), "--", "true"])
    assert refused.returncode == 2 and "the appliance's own data" in refused.stderr


def test_missing_bwrap_exits_3_with_the_fix_and_runs_nothing(appliance_home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran-unsandboxed"
    command = ["sandbox", "exec", "--", "touch", str(marker)]
    by_config = run_cli(command, env={"APPLIANCE_SANDBOX_BWRAP": str(tmp_path / "no-such-bwrap")})
    assert by_config.returncode == 3
    assert (
        "bubblewrap (bwrap) is not installed" in by_config.stderr and "apt-get install bubblewrap" in by_config.stderr
    )
    no_path = run_cli(command, env={"PATH": str(tmp_path)})
    assert no_path.returncode == 3 and "not installed on PATH" in no_path.stderr
    check = run_cli(["sandbox", "check"], env={"PATH": str(tmp_path)})
    assert check.returncode == 3
    assert not marker.exists()


def test_a_bwrap_that_cannot_create_namespaces_exits_3_with_the_fix(appliance_home: Path, tmp_path: Path) -> None:
    # Unprivileged user namespaces cannot be switched off for one test on a shared machine,
    # so a stand-in prints what bwrap prints then (bubblewrap.c) and fails the same way.
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because the kernel does not "
        "allow non-privileged user namespaces.' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    marker = tmp_path / "ran-unsandboxed"
    done = run_cli(["sandbox", "exec", "--", "touch", str(marker)], env={"APPLIANCE_SANDBOX_BWRAP": str(fake)})
    assert done.returncode == 3
    assert "No permissions to creating new namespace" in done.stderr and "Fix:" in done.stderr
    assert not marker.exists()


def test_a_headless_run_without_bwrap_exits_3_before_the_model_runs(appliance_home: Path, tmp_path: Path) -> None:
    replay = write_replay(tmp_path / "turns.jsonl", [tool_call("tool-python", "create_sandbox", {}), "\\boxed{1}"])
    done = run_cli(
        ["--task", "anything", "--replay", str(replay), "--json"],
        env={"APPLIANCE_SANDBOX_BWRAP": str(tmp_path / "missing"), "APPLIANCE_TOOLS_ENABLED": "tool-python"},
    )
    assert done.returncode == 3 and "apt-get install bubblewrap" in done.stderr


def test_check_describes_the_isolation(appliance_home: Path) -> None:
    done = run_cli(["sandbox", "check"])
    assert done.returncode == 0, done.stderr
    assert "network: none" in done.stdout and "sandbox: ok" in done.stdout and "ulimit -HS" in done.stdout


def _fake_run(home: Path, run_id: str, age_days: float = 0) -> Path:
    run_dir = home / "runs" / run_id
    (run_dir / "workspace" / "locked").mkdir(parents=True)
    (run_dir / "workspace" / "locked" / "f.txt").write_text("x" * 100)
    (run_dir / "workspace" / "locked").chmod(0o500)
    (run_dir / "sandboxes" / "iabc" / "home").mkdir(parents=True)
    (run_dir / "sandboxes.json").write_text("{}")
    (run_dir / "output").mkdir()
    (run_dir / "output" / "answer.csv").write_text("kept")
    stamp = time.time() - age_days * 86400
    os.utime(run_dir, (stamp, stamp))
    return run_dir


def test_clean_removes_workspaces_and_keeps_outputs(appliance_home: Path) -> None:
    old = _fake_run(appliance_home, "20250101-000000-aaaaaa", age_days=30)
    new = _fake_run(appliance_home, "20260101-000000-bbbbbb")
    dry = run_cli(["sandbox", "clean", "--older-than", "7", "--dry-run"])
    assert dry.returncode == 0 and "would remove" in dry.stdout and (old / "workspace").exists()
    done = run_cli(["sandbox", "clean", "--older-than", "7"])
    assert done.returncode == 0, done.stderr
    assert not (old / "workspace").exists() and not (old / "sandboxes").exists()
    assert not (old / "sandboxes.json").exists() and (old / "output" / "answer.csv").read_text() == "kept"
    assert (new / "workspace").exists()
    by_id = run_cli(["sandbox", "clean", new.name])
    assert by_id.returncode == 0 and not (new / "workspace").exists() and (new / "output").exists()


def test_clean_needs_to_be_told_what(appliance_home: Path) -> None:
    assert run_cli(["sandbox", "clean"]).returncode == 2
    unknown = run_cli(["sandbox", "clean", "../../etc"])
    assert unknown.returncode == 2 and "no run" in unknown.stderr
