"""Every documented exit code over every command, as a user meets it (README, "Exit codes").

One table: the command line, its input, the exit code and a fragment of the one
line that says what to do. Every error is one line on stderr, never a
traceback; with --json stdout is one JSON object, usage errors included.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, cli_env, run_cli, write_replay

NO_TOOLS = {"APPLIANCE_TOOLS_ENABLED": ""}
OFFLINE_SEARCH = {"APPLIANCE_SEARCH_SOURCES": "corpus", "APPLIANCE_SEARXNG_URL": ""}


@dataclass(frozen=True)
class Case:
    args: list[str]
    code: int
    says: str  # a fragment of stderr (the error line, or the command's own message)
    stdin: str | None = None
    config: bytes | None = None  # the user's config.toml, as bytes
    env: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    # 0 answered, 1 no answer
    "answered": Case(["--task", "x", "--replay", "{answer}", "--json"], 0, "[summary]"),
    "task from stdin": Case(["--task", "-", "--replay", "{answer}", "--json"], 0, "[summary]", stdin="Moons?\n"),
    "task from a file": Case(["--task-file", "{task_file}", "--replay", "{answer}", "--json"], 0, "[summary]"),
    # One run (attempts off): with attempts, each would need a failure summary scripted.
    "no answer": Case(["--task", "x", "--replay", "{no_answer}", "--attempts", "0"], 1, "without a \\boxed{} answer"),
    "no answer, --json": Case(
        ["--task", "x", "--replay", "{no_answer}", "--json", "--attempts", "0"], 1, "reply discarded (no_boxed)"
    ),
    "ask a follow-up": Case(["ask", "{run_id}", "And of Spain?", "--replay", "{answer}", "--json"], 0, "follow-up of"),
    "ask, question on stdin": Case(
        ["ask", "{run_id}", "-", "--replay", "{answer}", "--json"], 0, "follow-up of", stdin="And of Spain?\n"
    ),
    "--continue the latest run": Case(["--continue", "And?", "--replay", "{answer}", "--json"], 0, "follow-up of"),
    "history search, no match": Case(["history", "search", "zebra", "--json"], 1, "no matches for 'zebra'"),
    "history search, a match": Case(["history", "search", "Capital"], 0, ""),
    # 2 usage or configuration
    "unknown backend": Case(["--task", "x", "--backend", "ollama", "--json"], 2, "unknown backend 'ollama'"),
    "empty task": Case(["--task", " ", "--json"], 2, "the task is empty"),
    "empty task on stdin": Case(["--task", "-", "--json"], 2, "the task is empty", stdin=""),
    "task file missing": Case(["--task-file", "{missing}", "--json"], 2, "cannot read the task from"),
    "task file not UTF-8": Case(["--task-file", "{latin1}", "--json"], 2, "is not UTF-8 text"),
    "task twice": Case(["--task", "x", "--task-file", "{task_file}", "--json"], 2, "were both given"),
    "replay: bad delay": Case(["--task", "x", "--replay", "{bad_delay}", "--json"], 2, "delay must be a number"),
    "replay: nan delay": Case(["--task", "x", "--replay", "{nan_delay}", "--json"], 2, "delay must be a number"),
    "replay: bad bytes": Case(["--task", "x", "--replay", "{bad_bytes}", "--json"], 2, "is not UTF-8 text"),
    "replay: a directory": Case(["--task", "x", "--replay", "{dir}", "--json"], 2, "cannot read replay file"),
    "replay runs out": Case(["--task", "x", "--replay", "{too_short}", "--json"], 2, "add more lines"),
    "config not UTF-8": Case(["--task", "x", "--json"], 2, "is not UTF-8 text", config=b"\xff\xfe[model]\n"),
    "config temperature -3": Case(
        ["--task", "x", "--json"], 2, "temperature must be >= 0", config=b"[model]\ntemperature = -3\n"
    ),
    "config temperature nan": Case(
        ["--task", "x", "--json"], 2, "must be a finite number", config=b"[model]\ntemperature = nan\n"
    ),
    "config unknown key": Case(["prompt"], 2, "did you mean 'max_turns'", config=b"[agent]\nmax_turn = 3\n"),
    "env timeout 0": Case(
        ["--task", "x", "--json"], 2, "tool_timeout must be > 0", env={"APPLIANCE_TOOL_TIMEOUT": "0"}
    ),
    "max turns 0": Case(["--task", "x", "--max-turns", "0", "--json"], 2, "max_turns must be at least 1"),
    "keep last -2": Case(["--task", "x", "--keep-last", "-2", "--json"], 2, "keep_last must be -1"),
    "max turns not a number": Case(
        ["--task", "x", "--max-turns", "lots", "--json"], 2, "Invalid value for '--max-turns'"
    ),
    "empty profile": Case(["--task", "x", "--profile", "", "--json"], 2, "'' is not a profile name"),
    "profile path": Case(["doctor", "--profile", "../../etc/x", "--json"], 2, "is not a profile name"),
    "unknown profile": Case(["doctor", "--profile", "cpu8b", "--json"], 2, "did you mean 'cpu-8b'"),
    "unknown option": Case(["--bogus", "--json"], 2, "No such option '--bogus'"),
    # "did you mean" suggestions come from the names valid at that place
    "unknown command": Case(["histroy", "list"], 2, "No such command 'histroy' (did you mean 'history'?)"),
    "unknown subcommand": Case(["history", "lst"], 2, "Did you mean 'list'?"),
    "env typo": Case(["prompt"], 2, "(did you mean APPLIANCE_PROFILE?)", env={"APPLIANCE_PROFLE": "x"}),
    "env ambiguous": Case(["prompt"], 2, "APPLIANCE_MODEL_MAX_TOKENS", env={"APPLIANCE_MAX_TOKENS": "5"}),
    "section typo": Case(["prompt"], 2, "(did you mean [mcp_servers.NAME]?)", config=b"[mcp_server.x]\nurl = 'x'\n"),
    "tool server typo": Case(
        ["prompt"], 2, "(did you mean 'tool-python'?)", env={"APPLIANCE_TOOLS_ENABLED": "tool-pyton"}
    ),
    "resume a finished run": Case(["resume", "{run_id}", "--json"], 2, "already finished (answered)"),
    "resume an unknown run": Case(["resume", "nope", "--json"], 2, "no run 'nope'"),
    "ask an unknown run": Case(["ask", "nope", "Why?", "--json"], 2, "no run 'nope'"),
    "ask, empty question": Case(["ask", "{run_id}", " ", "--json"], 2, "the follow-up question is empty"),
    "ask, no question": Case(["ask", "{run_id}", "--json"], 2, "the follow-up question is empty"),
    "ask, empty question on stdin": Case(["ask", "{run_id}", "-", "--json"], 2, "question is empty", stdin=""),
    "ask a run that failed": Case(["ask", "{failed_run}", "Why?", "--json"], 2, "resume it first: appliance resume"),
    "ask, unknown profile": Case(
        ["ask", "{run_id}", "Why?", "--profile", "cpu8b", "--json"], 2, "did you mean 'cpu-8b'"
    ),
    "--continue with a task": Case(["--continue", "And?", "--task", "x", "--json"], 2, "were both given"),
    "history list -n -1": Case(["history", "list", "-n", "-1", "--json"], 2, "Invalid value for '--limit'"),
    "history list -n huge": Case(["history", "list", "-n", "99999999999999999999"], 2, "Invalid value for '--limit'"),
    "history search -n 0": Case(["history", "search", "-n", "0", "x", "--json"], 2, "Invalid value for '--limit'"),
    "history bad status": Case(["history", "list", "--status", "done", "--json"], 2, "Invalid value for '--status'"),
    "history show unknown": Case(["history", "show", "nope"], 2, "no run 'nope'"),
    "history export, no ids": Case(["history", "export"], 2, "name one or more RUN_IDs"),
    "export over a file": Case(["history", "export", "{run_id}", "-o", "{existing}"], 2, "exists. Fix: choose another"),
    "export with --force": Case(["history", "export", "{run_id}", "-o", "{existing}", "--force"], 0, "wrote 1 run(s)"),
    "history db is a directory": Case(["history", "--db", "{dir}", "list"], 2, "is a directory"),
    "prune: bad age": Case(["history", "prune", "--older-than", "soon"], 2, "'soon' is not an age"),
    "search -n 0": Case(["search", "-n", "0", "x", "--json"], 2, "Invalid value for '--num'", env=OFFLINE_SEARCH),
    "search -p 0": Case(["search", "-p", "0", "x", "--json"], 2, "Invalid value for '--page'", env=OFFLINE_SEARCH),
    "corpus search -n 0": Case(["corpus", "search", "-n", "0", "x"], 2, "Invalid value for '--num'"),
    "prompt: bad date": Case(["prompt", "--date", "2025-13-01"], 2, "is not a date"),
    "prompt: empty date": Case(["prompt", "--date", ""], 2, "is not a date"),
    "profiles: bad hardware file": Case(["profiles", "--hardware", "{bad_json}"], 2, "is not a machine description"),
    "eval: no dataset": Case(["eval", "{missing}"], 2, "cannot read dataset"),
    "eval: --out under a missing folder": Case(["eval", "--sample", "--out", "{missing}/a/out"], 2, "does not exist"),
    "eval: --web-archive under a missing folder": Case(
        ["eval", "--sample", "--web-archive", "{missing}/a/web"], 2, "does not exist"
    ),
    "bundle: OUT under a missing folder": Case(["bundle", "create", "{missing}/a/out"], 2, "does not exist"),
    "dataset: OUT under a missing folder": Case(["dataset", "build", "{missing}/a/out"], 2, "does not exist"),
    "sandbox exec: nan timeout": Case(["sandbox", "exec", "--timeout", "nan", "--", "true"], 2, "--timeout must be"),
    "sandbox clean: no target": Case(["sandbox", "clean"], 2, "say which workspaces to remove"),
    # 3 a required component is unavailable
    "model file missing": Case(["--task", "x", "--model", "{missing}.gguf", "--json"], 3, "not found"),
    "corpus remove, no corpus": Case(["corpus", "remove", "x"], 3, "Fix: add documents with `appliance corpus add"),
    "search with no source": Case(
        ["search", "x", "--json"], 3, "", env={"APPLIANCE_SEARXNG_URL": "http://127.0.0.1:9"}
    ),
    # the command's own code, and 124 when the sandbox's time limit stopped it
    "sandbox exec: its exit code": Case(["sandbox", "exec", "--", "sh", "-c", "exit 7"], 7, ""),
    "sandbox exec: timeout": Case(["sandbox", "exec", "--timeout", "0.5", "--", "sleep", "30"], 124, "killed after"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files the cases refer to, and a history with one answered run."""
    root = tmp_path_factory.mktemp("world")
    home = root / "home"
    home.mkdir()
    files = {
        "answer": str(write_replay(root / "answer.jsonl", ["Paris.", "\\boxed{Paris}"])),
        "no_answer": str(write_replay(root / "none.jsonl", ["hmm", "no idea", "still none", "nothing"])),
        "too_short": str(write_replay(root / "short.jsonl", ["thinking"])),
        "bad_delay": str(root / "delay.jsonl"),
        "nan_delay": str(root / "nan.jsonl"),
        "bad_bytes": str(root / "bytes.jsonl"),
        "task_file": str(root / "task.txt"),
        "latin1": str(root / "latin1.txt"),
        "bad_json": str(root / "machine.json"),
        "existing": str(root / "existing.jsonl"),
        "missing": str(root / "missing"),
        "dir": str(root),
        "home": str(home),
    }
    Path(files["bad_delay"]).write_text('{"content": "x", "delay": "soon"}\n', encoding="utf-8")
    Path(files["nan_delay"]).write_text('{"content": "x", "delay": NaN}\n', encoding="utf-8")
    Path(files["bad_bytes"]).write_bytes(b'{"content": "\xff"}\n')
    Path(files["task_file"]).write_text("Capital of France?\n", encoding="utf-8")
    Path(files["latin1"]).write_bytes("Qu'est-ce qu'un café ?".encode("latin-1"))
    Path(files["bad_json"]).write_text("{not json", encoding="utf-8")
    env = {"APPLIANCE_HOME": str(home), **NO_TOOLS}
    done = run_cli(["--task", "Capital of France?", "--replay", files["answer"], "--json"], env=env)
    assert done.returncode == 0, done.stderr
    files["run_id"] = json.loads(done.stdout)["run_id"]
    failed = run_cli(["--task", "Capital of Peru?", "--replay", files["too_short"], "--json"], env=env)
    assert failed.returncode == 2, failed.stderr
    files["failed_run"] = json.loads(failed.stdout)["run_id"]
    return files


@pytest.mark.parametrize("name", list(CASES))
def test_exit_code(name: str, world: dict[str, str]) -> None:
    case = CASES[name]
    home = Path(world["home"])
    config = home / "config.toml"
    if case.config is not None:
        config.write_bytes(case.config)
    Path(world["existing"]).write_text("keep me\n", encoding="utf-8")
    args = [arg.format(**world) for arg in case.args]
    try:
        result = run_cli(args, env={"APPLIANCE_HOME": str(home), **NO_TOOLS, **case.env}, input=case.stdin)
    finally:
        config.unlink(missing_ok=True)
    assert result.returncode == case.code, (result.stdout, result.stderr)
    assert case.says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    if case.code in (2, 3):
        last = result.stderr.rstrip("\n").splitlines()[-1]
        # The run's own error (it started, then failed) or the command's: one line either way, with the fix.
        assert last.startswith(("appliance: error: ", "appliance: run error: ")) and "Fix: " in last, result.stderr
    if "--json" in args and case.code != 1:
        payload = json.loads(result.stdout.strip().splitlines()[-1])
        assert payload["status"] == ("answered" if case.code == 0 else "error"), payload
        if case.code != 0:
            assert case.says in payload["error"]
    assert not Path(world["missing"]).exists()  # no folder a user named is created with its parents
    if name == "export over a file":
        assert Path(world["existing"]).read_text(encoding="utf-8") == "keep me\n"  # nothing was lost
    if name == "export with --force":
        assert json.loads(Path(world["existing"]).read_text(encoding="utf-8"))["metadata"]["run_id"] == world["run_id"]


def test_every_documented_code_is_in_the_table() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("Exit codes, for every entry point") :][:800]
    documented = {int(code) for code in re.findall(r"`(\d+)`", section)}
    assert documented == {0, 1, 2, 3, 70, 124, 130}
    tested = {case.code for case in CASES.values()}
    assert documented - {70, 130} <= tested  # 70 and 130 have their own tests (a bug; Ctrl-C in test_cli)


# A command that fails the way a bug does: main() must turn it into one line and exit 70.
_BUG = """
import sys, click
from appliance import cli
@cli.cli.command("crash")
def crash() -> None:
    raise RuntimeError("boom")
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize("debug", [False, True])
def test_an_internal_error_is_one_line_exit_70_and_a_log(appliance_home: Path, debug: bool) -> None:
    args = ["--debug", "--json", "crash"] if debug else ["--json", "crash"]
    result = subprocess.run(
        [sys.executable, "-c", _BUG, *args], capture_output=True, text=True, env=cli_env(), cwd=REPO_ROOT, timeout=60
    )
    assert result.returncode == 70
    line = result.stderr.rstrip("\n").splitlines()[-1]
    assert line.startswith("appliance: error: internal error (a bug): RuntimeError: boom. Fix: report it")
    assert json.loads(result.stdout)["exit_code"] == 70
    (log,) = (appliance_home / "logs").glob("appliance-crash-*.log")
    assert str(log) in line
    assert log.read_text(encoding="utf-8").startswith("Traceback (most recent call last)")
    assert log.read_text(encoding="utf-8").endswith("RuntimeError: boom\n")
    # The traceback reaches the terminal only when asked for.
    assert ("Traceback (most recent call last)" in result.stderr) is debug


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap mounts the read-only home")
def test_a_read_only_home_is_one_line_and_doctor_reports_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    answer = write_replay(tmp_path / "a.jsonl", ["Paris.", "\\boxed{Paris}"])
    # The home is mounted read-only in a mount namespace of its own: even root cannot write there.
    readonly = ["bwrap", "--bind", "/", "/", "--ro-bind", str(home), str(home), "--dev", "/dev", "--proc", "/proc"]
    env = cli_env({"APPLIANCE_HOME": str(home), **NO_TOOLS})
    for args, code in (
        (["--task", "x", "--replay", str(answer), "--json"], 3),
        (["--task", "x", "--replay", str(answer), "--db", str(tmp_path / "h.db"), "--json"], 2),
    ):
        result = subprocess.run(
            [*readonly, sys.executable, "-m", "appliance", *args],
            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
        )  # fmt: skip
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.splitlines()[-1].startswith("appliance: error: ") and "writable" in result.stderr
        assert json.loads(result.stdout)["status"] == "error"
    doctor = subprocess.run(
        [*readonly, sys.executable, "-m", "appliance", "doctor", "--json"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert doctor.returncode == 3
    checks = {c["component"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["data directory"]["status"] == "fail"
    assert "not writable" in checks["data directory"]["detail"] and "APPLIANCE_HOME" in checks["data directory"]["fix"]


@pytest.mark.parametrize("flag", ["--json", "--json-events"])
def test_ctrl_c_before_the_run_still_prints_the_json_object(
    flag: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while settings load or a model starts (before the session's own handler): exit 130 with the object."""
    from appliance import cli

    def interrupted_early(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_headless", interrupted_early)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--task", "x", flag])
    assert exited.value.code == 130
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    record = json.loads(line)
    result = record["result"] if flag == "--json-events" else record
    assert result["status"] == "interrupted" and result["exit_code"] == 130, record
    assert err.strip() == "appliance: interrupted"  # click puts a newline after the ^C
