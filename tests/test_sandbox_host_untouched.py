"""A workspace the user names is used, never taken over: real bwrap, as root and as an unprivileged user.

The workspace is a directory of a throwaway tree in /tmp holding files and
directories of several owners and modes, and a host file outside it that the
sandbox links to. Afterwards every owner, mode and content outside what the
sandbox wrote is as before, and what it wrote belongs to the user who ran the
appliance (root here, or the unprivileged uid).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.tools.sandbox.host import is_real_root
from tests.conftest import REPO_ROOT, cli_env
from tests.sandbox_support import RunFactory, command_parts, make_run

__all__ = ["make_run"]  # fixtures

UNPRIVILEGED = 65534
OTHER, ANOTHER = 1234, 4321
Snapshot = dict[str, tuple[int, int, int, str]]


def snapshot(root: Path) -> Snapshot:
    """Every path under root: owner, group, mode and (files) a digest or (links) the target; links not followed."""
    out: Snapshot = {}
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(directory, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                what = f"-> {path.readlink()}"
            elif stat.S_ISREG(info.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            out[str(path.relative_to(root))] = (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), what)
    top = root.lstat()
    out["."] = (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode), "dir")
    return out


def _make(path: Path, owner: int, mode: int, content: str | None = None) -> None:
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    if is_real_root():  # as a normal user every file is the user's own; the modes still differ
        os.chown(path, owner, owner)
    path.chmod(mode)


@pytest.fixture
def tree() -> Iterator[Path]:
    """/tmp/appliance-host-XXXX/{ws/..., outside/target.txt}; root-owned where not said otherwise."""
    scratch = Path(tempfile.mkdtemp(prefix="appliance-host-", dir="/tmp"))
    scratch.chmod(0o755)
    ws, outside = scratch / "ws", scratch / "outside"
    _make(ws, 0, 0o755)
    _make(ws / "root.txt", 0, 0o644, "root's\n")
    _make(ws / "readonly.txt", 0, 0o444, "read only\n")
    _make(ws / "tool.sh", 0, 0o750, "#!/bin/sh\n")
    _make(ws / "theirs.txt", OTHER, 0o600, "someone else's\n")
    _make(ws / "shared.txt", ANOTHER, 0o664, "group writable\n")
    _make(ws / "private", ANOTHER, 0o700)
    _make(ws / "private" / "inner.txt", ANOTHER, 0o600, "inner\n")
    _make(ws / "sub", 0, 0o750)
    _make(outside, 0, 0o755)
    _make(outside / "target.txt", OTHER, 0o600, "host secret\n")
    yield scratch
    shutil.rmtree(scratch, ignore_errors=True)


SANDBOX_SCRIPT = (
    "echo new > made.txt; mkdir -p sub/madedir; echo x > sub/madedir/f; echo appended >> root.txt; "
    "ln -s {target} link; ln -s ../outside/target.txt rel-link; "
    "echo overwrite > theirs.txt; chmod 777 theirs.txt shared.txt private; touch private/x; "
    "chown 0 made.txt; true"
)
MADE = {"made.txt", "sub/madedir", "sub/madedir/f", "link", "rel-link"}


def _check(before: Snapshot, after: Snapshot, scratch: Path, owner: int, changed: set[str]) -> None:
    for path, (uid, gid, mode, what) in before.items():
        assert path in after, f"{path} disappeared"
        now = after[path]
        assert now[:3] == (uid, gid, mode), f"{path}: owner/mode {now[:3]} was {(uid, gid, mode)}"
        if path not in changed:
            assert now[3] == what, f"{path} changed"
    for path in set(after) - set(before):
        assert path.removeprefix("ws/") in MADE, f"unexpected {path}"
        assert after[path][:2] == (owner, owner), f"{path} is owned by {after[path][:2]}, not {owner}"
    assert (scratch / "outside" / "target.txt").read_text() == "host secret\n"


@pytest.mark.skipif(not is_real_root(), reason="root mode needs the tests to run as root")
def test_as_root_the_workspace_keeps_every_owner_and_mode(tree: Path, appliance_home: Path) -> None:
    before = snapshot(tree)
    mounts = Path("/proc/self/mountinfo").read_text()
    script = SANDBOX_SCRIPT.format(target=tree / "outside" / "target.txt")
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "sandbox", "exec", "--workspace", str(tree / "ws"), "--", "sh", "-c",
         script + "; id -u; stat -c '%u %U' root.txt theirs.txt"],
        capture_output=True, text=True, timeout=120, env=cli_env(), cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    uid, root_seen, theirs_seen = done.stdout.split("\n")[:3]
    assert int(uid) >= 2_000_000_000  # the sandbox still runs as its own unprivileged uid...
    assert root_seen == f"{uid} user" and theirs_seen.startswith("65534 ")  # ...seeing root's files as its own
    after = snapshot(tree)
    _check(before, after, tree, 0, changed={"ws/root.txt"})
    assert (tree / "ws" / "root.txt").read_text() == "root's\nappended\n"
    assert (tree / "ws" / "theirs.txt").read_text() == "someone else's\n"
    assert Path("/proc/self/mountinfo").read_text() == mounts  # the id-mapped mount lived in the sandbox's namespace


@pytest.mark.skipif(not is_real_root(), reason="root mode needs the tests to run as root")
def test_as_root_a_workspace_that_cannot_be_id_mapped_is_refused_with_the_fix(tmp_path: Path) -> None:
    from appliance.errors import ConfigError
    from appliance.tools.sandbox.idmap import check_idmap_support

    with pytest.raises(ConfigError) as refused:
        check_idmap_support(tmp_path / "vanished", 2_000_000_123)
    assert "cannot be given to the sandbox without changing its owners" in refused.value.one_line()
    assert "run the appliance as a normal user" in refused.value.one_line()


@pytest.mark.skipif(not is_real_root(), reason="root mode needs the tests to run as root")
def test_as_root_the_file_tools_and_kernel_write_as_the_user(tree: Path, make_run: RunFactory) -> None:
    attached = tree / "outside" / "upload.txt"
    attached.write_text("attached\n")
    before = snapshot(tree)
    run = make_run().with_attachments(attached)
    run.ctx.workspace = tree / "ws"
    sid = run.sandbox()
    # A link where the upload will land, to a host file: neither the upload nor an ownership fix-up follows it.
    assert command_parts(run.sh(sid, f"ln -s {tree}/outside/target.txt upload.txt").text)["exit_code"] == 0
    refused = run.call("upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path=str(attached))
    assert refused.text.startswith("[ERROR]") and "symbolic link" in refused.text
    assert command_parts(run.sh(sid, "rm upload.txt; mkdir -p up").text)["exit_code"] == 0
    uploaded = run.call(
        "upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path=str(attached), sandbox_file_path="up/x"
    )
    assert "uploaded" in uploaded.text, uploaded.text
    out = run.py(sid, "open('/home/user/from_kernel.txt', 'w').write('k'); import os; os.getuid()")
    assert "Error: None" in out.text, out.text
    after = snapshot(tree)
    new = set(after) - set(before)
    assert new == {"ws/up", "ws/up/x", "ws/up/x/upload.txt", "ws/from_kernel.txt"}, new
    for path in new:
        assert after[path][:2] == (0, 0), path
    assert all(after[p] == before[p] for p in before)


def test_as_an_unprivileged_user_what_the_sandbox_writes_is_theirs(tree: Path) -> None:
    """Run the appliance itself as an unprivileged uid (setpriv) when the tests run as root."""
    as_uid = UNPRIVILEGED if is_real_root() else os.getuid()
    home = tree / "home"
    home.mkdir()
    ws = tree / "ws"
    if is_real_root():
        for path in (home, ws):
            os.chown(path, as_uid, as_uid)
    before = snapshot(tree)
    prefix = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups", "--"] if is_real_root() else []
    # The system Python in the sandbox: the tests' own may live where this uid cannot look (/root).
    env = cli_env(
        {"APPLIANCE_HOME": str(home / "appliance"), "HOME": str(home), "APPLIANCE_SANDBOX_PYTHON": "/usr/bin/python3"}
    )
    script = SANDBOX_SCRIPT.format(target=tree / "outside" / "target.txt")
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "appliance", "sandbox", "exec", "--workspace", str(ws), "--", "sh", "-c",
         script + "; id -u"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "1000"  # bwrap's user namespace: uid 1000 inside, the invoking uid outside
    after = snapshot(tree)
    after = {path: value for path, value in after.items() if not path.startswith("home/")}
    _check(before, after, tree, as_uid, changed=set())
    assert (ws / "root.txt").read_text() == "root's\n"  # root's file stays root's: not writable by the user
