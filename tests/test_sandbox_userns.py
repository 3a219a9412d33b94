"""The user-namespace mode, which every normal (non-root) user of the appliance gets.

When the tests run as root the rest of the suite exercises root mode (setpriv
to a sandbox uid), so here bwrap is started as an unprivileged uid to check
the other command line for real: mapped to uid 1000, no capabilities, no
further user namespaces, no network, and a process limit that holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import SandboxSettings
from appliance.tools.sandbox.bwrap import Host, Layout, Limits
from appliance.tools.sandbox.host import discover_python, find_bwrap, is_real_root
from appliance.tools.sandbox.process import kill_group, spawn

UNPRIVILEGED = 65534
Fixture = tuple[Host, Layout, int | None]


@pytest.fixture
def userns_layout() -> Iterator[Fixture]:
    as_uid = UNPRIVILEGED if is_real_root() else None
    scratch = Path(tempfile.mkdtemp(prefix="appliance-userns-", dir="/tmp"))
    scratch.chmod(0o755)
    workspace, tmp = scratch / "home", scratch / "tmp"
    for path in (workspace, tmp):
        path.mkdir()
        if as_uid is not None:
            os.chown(path, as_uid, as_uid)
    python = discover_python("/usr/bin/python3", [])
    host = Host(find_bwrap(SandboxSettings()), "/bin/bash", None, python)
    yield host, Layout(workspace, tmp, None), as_uid
    shutil.rmtree(scratch, ignore_errors=True)


def _run(fixture: Fixture, script: str, limits: Limits, timeout: float = 20) -> tuple[int, str, str]:
    host, layout, as_uid = fixture
    launch = host.build(layout, host.shell_command(limits, script))
    extra = {"user": as_uid, "group": as_uid, "extra_groups": []} if as_uid is not None else {}
    process = spawn(launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **extra)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        out, err = process.communicate()
        return 124, out, err
    return process.returncode, out, err


def test_userns_mode_maps_to_uid_1000_without_capabilities(userns_layout: Fixture) -> None:
    code, out, err = _run(
        userns_layout,
        "id -u; id -un; cat /proc/self/uid_map; grep -E 'CapEff|NoNewPrivs' /proc/self/status; "
        "tail -n +3 /proc/net/dev | cut -d: -f1; unshare -U true 2>/dev/null && echo NESTED-USERNS; "
        "touch /usr/x 2>/dev/null && echo WROTE; touch /home/user/ok && echo HOME-OK; python3 -c 'print(6*7)'",
        Limits(),
    )
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines()]
    assert lines[:2] == ["1000", "user"]
    assert lines[2].split()[::2] == ["1000", "1"]  # one uid, relative to bwrap's own outer namespace
    outside = userns_layout[2] if userns_layout[2] is not None else os.getuid()
    assert (userns_layout[1].workspace / "ok").stat().st_uid == outside  # on the host: the unprivileged uid
    assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out
    assert "lo" in lines and "NESTED-USERNS" not in out and "WROTE" not in out
    assert "HOME-OK" in lines and "42" in lines


def test_userns_mode_fork_bomb_hits_the_process_limit(userns_layout: Fixture) -> None:
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 3; echo survived"
    code, _out, err = _run(userns_layout, bomb, Limits(max_processes=32))
    assert "fork: retry" in err or "Resource temporarily unavailable" in err, err[-500:]
    assert code in (0, 124)
