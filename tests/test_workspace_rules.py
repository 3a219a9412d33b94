"""Which directory may be a workspace: the pure rule, and every entry point refusing at once.

No test here names a real system directory to a command: the rule is tested on
path strings, and the commands get a link into a fake root that
APPLIANCE_TEST_PROTECTED_DIRS makes protected. Each command must refuse before
anything starts: no run directory, no history, no sandbox (so even a
regression could not write to the path).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.tools.sandbox.workspace import SYSTEM_DIRS, Guarded, guarded_dirs, workspace_refusal
from tests.conftest import run_cli, write_replay

GUARDED = Guarded(
    homes=("/home/alice", "/home/bob", "/var/www", "/nonexistent"),
    own_home="/home/alice",
    appliance=("/data/appliance", "/home/alice/.config/appliance"),
)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/", "root directory"),
        *[(root, "system directory") for root in SYSTEM_DIRS],
        ("/etc/ssl", "system directory (/etc)"),
        ("/usr/local/src/project", "system directory (/usr)"),
        ("/var/lib/postgresql", "system directory (/var)"),
        ("/opt/app/data", "system directory (/opt)"),
        ("/root/project", "system directory (/root)"),
        ("/home", "shared by every user"),
        ("/tmp", "shared by every user"),
        ("/var/tmp", "shared by every user"),
        ("/srv", "shared by every user"),
        ("/mnt", "shared by every user"),
        ("/home/alice", "home directory (/home/alice)"),
        ("/home/bob", "home directory (/home/bob)"),
        ("/home/bob/project", "another user's home (/home/bob)"),
        ("/data/appliance", "the appliance's own data or code (/data/appliance)"),
        ("/data/appliance/runs/20260101-000000-abcdef/workspace", "the appliance's own data"),
        ("/data", "the appliance's own data or code (/data/appliance)"),
        ("/home/alice/.config", "the appliance's own data"),
        ("/etc/../etc/ssl", "system directory (/etc)"),
    ],
)
def test_refused_workspaces(path: str, why: str) -> None:
    reason = workspace_refusal(path, GUARDED)
    assert reason is not None and why in reason, (path, reason)


@pytest.mark.parametrize(
    "path", ["/home/alice/project", "/home/alice/a/b", "/tmp/run-1", "/var/tmp/work", "/srv/data", "/mnt/disk/x"]
)
def test_allowed_workspaces(path: str) -> None:
    assert workspace_refusal(path, GUARDED) is None


def test_the_machine_guards_its_system_directories_homes_and_the_appliance(appliance_home: Path) -> None:
    import sys

    import appliance

    guarded = guarded_dirs(load_settings())
    assert {"/etc", "/usr", "/var", "/opt", "/root"} <= set(guarded.system)
    assert str(appliance_home) in guarded.appliance and str(Path.home()) in guarded.homes
    # Its code too: a sandbox able to rewrite the package or its environment would run code on the host.
    package = str(Path(appliance.__file__).resolve().parent)
    assert package in guarded.appliance and os.path.realpath(sys.prefix) in guarded.appliance
    assert workspace_refusal(package, guarded) is not None
    assert workspace_refusal(str(Path(package).parent), guarded) is not None  # a checkout holding it
    # Only strings: nothing is opened or created.
    for path in ("/etc", "/usr/share", "/var/lib", "/opt", "/boot", str(Path.home()), str(appliance_home / "x")):
        assert workspace_refusal(path, guarded) is not None, path


# ------------------------------------------------------------------ every entry point, at once


@pytest.fixture
def fake_root(tmp_path: Path, appliance_home: Path) -> dict[str, object]:
    """tmp/fakeroot/etc, protected like /etc for the CLI, and an innocent-looking link into it."""
    etc = tmp_path / "fakeroot" / "etc"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "conf.d" / "keep.conf").write_text("untouched\n")
    (etc / "conf.d" / "keep.conf").chmod(0o640)
    link = tmp_path / "project"
    link.symlink_to(etc / "conf.d")
    return {"etc": etc, "link": link, "env": {"APPLIANCE_TEST_PROTECTED_DIRS": str(etc)}}


def _listing(root: Path) -> list[tuple[str, int, int, int]]:
    out = []
    for directory, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            info = Path(directory, name).lstat()
            out.append((str(Path(directory, name)), info.st_uid, info.st_gid, info.st_mode))
    return sorted(out)


def _assert_refused_before_anything(done: object, appliance_home: Path, why: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)  # type: ignore[attr-defined]
    err_lines = [line for line in done.stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(err_lines) == 1 and why in err_lines[0] and "Fix: " in err_lines[0], err_lines
    assert not (appliance_home / "runs").exists() and not (appliance_home / "history.db").exists()


def test_every_entry_point_refuses_a_protected_workspace_before_it_starts(
    fake_root: dict[str, object], appliance_home: Path, tmp_path: Path
) -> None:
    link, env, etc = fake_root["link"], fake_root["env"], fake_root["etc"]
    assert isinstance(link, Path) and isinstance(env, dict) and isinstance(etc, Path)
    before = _listing(etc.parent)
    script = write_replay(
        tmp_path / "script.jsonl",
        ['<use_mcp_tool>\n<server_name>tool-python</server_name>\n<tool_name>create_sandbox</tool_name>\n'
         '<arguments>\n{}\n</arguments>\n</use_mcp_tool>', "\\boxed{done}"],
    )  # fmt: skip
    why = f"is a system directory ({etc})"
    runs = {
        "headless": ["--task", "touch everything", "--replay", str(script), "--workspace", str(link)],
        "tui": ["--workspace", str(link)],
        "sandbox exec": ["sandbox", "exec", "--workspace", str(link), "--", "touch", "/home/user/x"],
        "mcp serve": ["mcp", "serve", "--tools", "tool-python", "--workspace", str(link)],
    }
    for name, args in runs.items():
        done = run_cli(args, env=env, input="", timeout=60)
        assert name and _assert_refused_before_anything(done, appliance_home, why) is None
    as_json = run_cli([*runs["headless"], "--json"], env=env, timeout=60)
    assert as_json.returncode == 2 and why in json.loads(as_json.stdout)["error"]
    assert _listing(etc.parent) == before


def test_a_missing_workspace_is_an_error_and_is_not_created(appliance_home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "not-yet" / "deeper"
    for args in (
        ["--task", "x", "--backend", "replay", "--replay", os.devnull, "--workspace", str(missing)],
        ["sandbox", "exec", "--workspace", str(missing), "--", "true"],
        ["mcp", "serve", "--workspace", str(missing)],
    ):
        done = run_cli(args, input="", timeout=60)
        _assert_refused_before_anything(done, appliance_home, f"the workspace {missing} does not exist")
        assert not (tmp_path / "not-yet").exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    done = run_cli(["sandbox", "exec", "--workspace", str(a_file), "--", "true"])
    assert done.returncode == 2 and "is not a directory" in done.stderr


def test_a_home_is_refused_and_a_folder_in_it_is_not(appliance_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "fakehome"
    (home / "project").mkdir(parents=True)
    env = {"HOME": str(home)}
    refused = run_cli(["sandbox", "exec", "--workspace", str(home), "--", "true"], env=env)
    _assert_refused_before_anything(refused, appliance_home, "home directory")
    allowed = run_cli(["sandbox", "exec", "--workspace", str(home / "project"), "--", "touch", "made"], env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert (home / "project" / "made").is_file()


# ------------------------------------------------------------------ other paths from data


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "..", ".", "", "x\\y", "nul\x00"])
def test_a_run_id_from_a_database_names_one_directory_level(appliance_home: Path, run_id: str) -> None:
    from appliance.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot name a run directory"):
        load_settings().dirs.run_dir(run_id)
    assert load_settings().dirs.run_dir("20260101-000000-abcdef") == appliance_home / "runs" / "20260101-000000-abcdef"


def test_confined_keeps_data_paths_inside_their_folder(tmp_path: Path) -> None:
    from appliance.paths import confined

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "ok.csv").write_text("x")
    (tmp_path / "secret").write_text("s")
    (tmp_path / "d" / "out").symlink_to(tmp_path / "secret")
    base = tmp_path / "d"
    assert confined(base, "ok.csv") == base.resolve() / "ok.csv"
    assert confined(base, "sub/../ok.csv") == base.resolve() / "ok.csv"
    for name in (str(tmp_path / "secret"), "../secret", "out", "sub/../../secret", ".", "", "a\x00b"):
        assert confined(base, name) is None, name


def test_a_resumed_run_never_makes_its_vanished_workspace_again(appliance_home: Path, tmp_path: Path) -> None:
    import shutil

    from appliance.session import Backends, resume_session
    from appliance.store import open_history
    from tests.store_support import run_in_process, settings_for, simulate_dead_owner

    script = write_replay(tmp_path / "script.jsonl", ["Thinking it over.", "\\boxed{Paris}"])
    settings = settings_for(script, **{"tools.enabled": []})
    ws, run_id = tmp_path / "mine" / "ws", "20260101-000000-aaaaaa"
    history = open_history(appliance_home / "history.db")
    try:
        run_in_process(history, settings, "What is the capital of France?", run_id, workspace=ws, stop_after=2)
        simulate_dead_owner(history, run_id)
        assert history.get_run(run_id).workspace == str(ws.resolve())
        shutil.rmtree(tmp_path / "mine")
        with Backends() as backends, resume_session(history, run_id, {}, backends=backends) as resumed:
            assert any(f"the workspace {ws.resolve()} is gone" in note for note in resumed.notes), resumed.notes
            assert resumed.agent.ctx.workspace == settings.dirs.run_dir(run_id) / "workspace"
    finally:
        history.close()
    assert not (tmp_path / "mine").exists()
