"""The host's side of the in-sandbox Python kernel: start it, send a cell, wait with a deadline, kill it."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.tools.sandbox import kernel as kernel_module
from appliance.tools.sandbox.bwrap import SANDBOX_HOME, Host, Layout, Limits
from appliance.tools.sandbox.process import kill_group, spawn

KERNEL_SOURCE = Path(kernel_module.__file__).read_text(encoding="utf-8")
# A reply is a few caps of text; anything much longer is not the kernel talking.
_MAX_REPLY_BYTES = 16 * 1024 * 1024
_START_TIMEOUT = 60.0


@dataclass
class CellResult:
    """One cell's outcome. `status`: ok (ran; `error` may hold its exception), timeout, died, cancelled."""

    status: str
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    result: str | None = None
    result_chars: int = 0
    error: dict[str, str] | None = None
    detail: str = ""
    duration_s: float = 0.0


class KernelUnavailable(Exception):
    """The kernel did not start; the message says why (bwrap's or Python's own words)."""


def describe_exit(code: int | None, limits: Limits) -> str:
    """Why a sandboxed process ended, in words (bwrap reports a signal as 128 + its number)."""
    if code is None:
        return "the process did not exit"
    number = -code if code < 0 else code - 128 if code > 128 else 0
    if number == signal.SIGXCPU:
        return f"it used up its CPU time limit of {limits.cpu_seconds} s"
    if number == signal.SIGKILL:
        return "it was killed (SIGKILL), for example by the CPU time limit or the out-of-memory killer"
    if number == signal.SIGSEGV:
        return "it crashed (segmentation fault)"
    if number == signal.SIGXFSZ:
        return "it wrote a file over the size limit"
    if number:
        try:
            return f"it was killed by signal {signal.Signals(number).name}"
        except ValueError:
            return f"it was killed by signal {number}"
    return f"it exited with code {code}"


class Kernel:
    """One long-lived Python process in one sandbox; `execute` is serialised by a lock."""

    def __init__(self, host: Host, layout: Layout, limits: Limits, cap_bytes: int) -> None:
        self.host = host
        self.layout = layout
        self.limits = limits
        self.cap_bytes = cap_bytes
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._stderr_file: Any = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        config = {"limits": self.limits.rlimits(), "cap": self.cap_bytes, "cwd": SANDBOX_HOME}
        command = [self.host.python.executable, "-E", "-s", "-c", KERNEL_SOURCE, json.dumps(config)]
        launch = self.host.build(self.layout, command)
        self._stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the kernel
        self._buffer = b""
        self.process = spawn(launch, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr_file)
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        hello = self._read_line(time.monotonic() + _START_TIMEOUT, None)
        if not isinstance(hello, dict) or not hello.get("ready"):
            reason = self._startup_error()
            self.kill()
            raise KernelUnavailable(reason)

    def _startup_error(self) -> str:
        code = self.process.poll() if self.process else None
        text = ""
        if self._stderr_file is not None:
            self._stderr_file.seek(0)
            text = self._stderr_file.read()[-2000:].decode("utf-8", "replace").strip()
        return text or f"the Python kernel did not start ({describe_exit(code, self.limits)})"

    def _read_line(self, deadline: float, cancel: threading.Event | None) -> Any:
        """The next JSON line from the kernel; "timeout", "cancelled" or None (EOF, garbage) otherwise."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                if cancel is not None and cancel.is_set():
                    return "cancelled"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                if not selector.select(timeout=min(0.1, remaining)):
                    continue
                try:
                    chunk = os.read(fd, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    return None
                self._buffer += chunk
                if len(self._buffer) > _MAX_REPLY_BYTES:
                    return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            return None

    def execute(self, code: str, *, timeout: float, cancel: threading.Event | None = None) -> CellResult:
        started = time.monotonic()
        if not self.alive:
            self.start()
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"code": code}).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            pass  # it died; the read below says so
        reply = self._read_line(started + timeout, cancel)
        elapsed = time.monotonic() - started
        if reply in ("timeout", "cancelled"):
            self.kill()
            return CellResult(str(reply), duration_s=elapsed)
        if not isinstance(reply, dict):
            try:
                code_ = self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code_ = None
            self.kill()
            return CellResult("died", detail=describe_exit(code_, self.limits), duration_s=elapsed)
        return CellResult(
            "ok",
            stdout=str(reply.get("stdout", "")),
            stderr=str(reply.get("stderr", "")),
            stdout_bytes=int(reply.get("stdout_bytes", 0)),
            stderr_bytes=int(reply.get("stderr_bytes", 0)),
            result=reply.get("result"),
            result_chars=int(reply.get("result_chars", 0)),
            error=reply.get("error"),
            duration_s=elapsed,
        )

    def kill(self) -> None:
        if self.process is not None:
            kill_group(self.process)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        self.process = None
