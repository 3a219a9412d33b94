"""Starting, watching and killing sandboxed processes.

bwrap starts in a session of its own, so killing its process group reaches
it whatever the sandbox does; `--die-with-parent` then takes down the PID
namespace's init, and with it every process inside, including ones that
started their own session. Output is read as it comes (a flood never blocks
the sandbox or fills memory): the first `cap_bytes` of each stream are kept,
the rest is counted.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from appliance.tools.sandbox.bwrap import Host, Launch, Layout, Limits
from appliance.tools.sandbox.host import explain_failure, sandbox_uid
from appliance.tools.sandbox.idmap import attach_argv, idmapped_tree

# How long to keep reading after a kill, for output already in the pipes.
_DRAIN_AFTER_KILL = 1.0


def spawn(launch: Launch, **popen: Any) -> subprocess.Popen[bytes]:
    """Start bwrap in its own session; the launch's data descriptors are closed once it runs.

    A user's workspace in root mode is mounted id-mapped first, in a mount namespace of bwrap's own.
    """
    argv = launch.argv
    try:
        if launch.idmap is not None:
            workspace, uid = launch.idmap
            tree = idmapped_tree(workspace, uid)
            launch.fds.append(tree)
            argv = attach_argv(tree, workspace, argv)
        return subprocess.Popen(argv, start_new_session=True, pass_fds=tuple(launch.fds), **popen)
    finally:
        launch.close()


def kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGKILL bwrap's process group; die-with-parent and the PID namespace do the rest."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.kill()
    except OSError:
        pass


@dataclass
class Captured:
    """What a finished (or killed) sandboxed command produced."""

    stdout: bytes
    stderr: bytes
    stdout_total: int
    stderr_total: int
    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False
    duration_s: float = 0.0


class _Sink:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]


def run_captured(
    launch: Launch,
    *,
    timeout: float,
    cap_bytes: int,
    cancel: threading.Event | None = None,
) -> Captured:
    """Run to the end, or until `timeout` seconds or `cancel`; keep the head of each stream."""
    started = time.monotonic()
    process = spawn(launch, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sinks = {"stdout": _Sink(cap_bytes), "stderr": _Sink(cap_bytes)}
    selector = selectors.DefaultSelector()
    assert process.stdout is not None and process.stderr is not None
    for name, stream in (("stdout", process.stdout), ("stderr", process.stderr)):
        os.set_blocking(stream.fileno(), False)
        selector.register(stream, selectors.EVENT_READ, name)
    deadline = started + timeout
    timed_out = cancelled = False
    drain_until: float | None = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if drain_until is None:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                elif now >= deadline:
                    timed_out = True
                if timed_out or cancelled:
                    kill_group(process)
                    drain_until = now + _DRAIN_AFTER_KILL
            elif now >= drain_until:
                break
            limit = (drain_until if drain_until is not None else deadline) - now
            for key, _ in selector.select(timeout=max(0.0, min(0.1, limit))):
                ready: IO[bytes] = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = os.read(ready.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                if chunk:
                    sinks[key.data].feed(chunk)
                else:
                    selector.unregister(ready)
        if drain_until is None:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_group(process)
        else:
            kill_group(process)
        try:
            code: int | None = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        selector.close()
        for stream in (process.stdout, process.stderr):
            stream.close()
        if process.poll() is None:
            kill_group(process)
    return Captured(
        bytes(sinks["stdout"].kept),
        bytes(sinks["stderr"].kept),
        sinks["stdout"].total,
        sinks["stderr"].total,
        None if (timed_out or cancelled) else code,
        timed_out,
        cancelled,
        time.monotonic() - started,
    )


def probe(host: Host, limits: Limits, timeout: float = 60.0) -> None:
    """Start one sandbox running `true`; ComponentUnavailable with the fix when bwrap cannot."""
    with tempfile.TemporaryDirectory(prefix="appliance-probe-") as scratch:
        workspace, tmp = Path(scratch, "home"), Path(scratch, "tmp")
        workspace.mkdir()
        tmp.mkdir()
        uid = sandbox_uid(workspace)
        if uid is not None:
            for path in (workspace, tmp):
                os.chown(path, uid, uid)
        launch = host.build(Layout(workspace, tmp, uid), host.shell_command(limits, "true"))
        try:
            captured = run_captured(launch, timeout=timeout, cap_bytes=8192)
        except OSError as exc:
            raise explain_failure(str(exc)) from exc
    if captured.exit_code != 0:
        raise explain_failure(captured.stderr.decode("utf-8", "replace"))
