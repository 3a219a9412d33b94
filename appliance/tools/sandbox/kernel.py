"""The Python kernel that runs inside the sandbox, like the notebook kernel behind E2B's run_code.

This file is not imported by the appliance: its source is handed to the
sandbox's interpreter (`python -c SOURCE CONFIG`), which may be another
version than the appliance's own. So: standard library only, Python 3.8
syntax, no imports from `appliance`.

Protocol: one JSON object per line. The host writes {"code": ...}; the kernel
answers {"stdout", "stderr", "stdout_bytes", "stderr_bytes", "result",
"error", "count"} on the descriptor that was its stdout at start (the user's
code gets fresh pipes on 0, 1 and 2, so nothing it prints can corrupt a
reply). Output is read by threads that keep the first `cap` bytes of each
stream and count the rest. Each code block runs in one shared namespace; the
value of a final expression is returned as its repr, like a notebook cell.
Processes a cell starts end with the cell (as a command's end with it).
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import linecache
import os
import resource
import signal
import sys
import threading
import time
import traceback
import types
from typing import Any


def apply_limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        which = getattr(resource, name, None)
        if which is not None:
            resource.setrlimit(which, (value, value))


class Capture:
    """Drains one pipe; keeps the first `cap` bytes since the last reset; finds the end-of-cell marker."""

    def __init__(self, target_fd: int, cap: int) -> None:
        read_fd, write_fd = os.pipe()
        self.read_fd = read_fd
        self.write_fd = write_fd  # our own copy: user code may close or replace `target_fd`
        self.target_fd = target_fd
        self.cap = cap
        self.lock = threading.Lock()
        self.kept = bytearray()
        self.total = 0
        self.marker = b""
        self.carry = b""
        self.seen = threading.Event()
        os.dup2(write_fd, target_fd)
        threading.Thread(target=self._drain, daemon=True).start()

    def _store(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    def _drain(self) -> None:
        while True:
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                return
            with self.lock:
                if not self.marker:
                    self._store(chunk)
                    continue
                data = self.carry + chunk
                found = data.find(self.marker)
                if found >= 0:
                    self._store(data[:found])
                    self.marker = b""
                    self.carry = b""
                    self.seen.set()
                    continue
                keep = len(self.marker) - 1
                self._store(data[: max(0, len(data) - keep)])
                self.carry = data[max(0, len(data) - keep) :]

    def reset(self) -> None:
        os.dup2(self.write_fd, self.target_fd)  # undo a redirection left by the previous cell
        with self.lock:
            self.kept = bytearray()
            self.total = 0

    def collect(self) -> tuple[bytes, int]:
        """Everything written before now (the marker proves the pipe was drained up to here)."""
        marker = b"\x00<end-of-cell:" + os.urandom(12).hex().encode() + b">\x00"
        with self.lock:
            self.marker = marker
            self.carry = b""
            self.seen.clear()
        try:
            os.write(self.write_fd, marker)
            self.seen.wait(10)
        except OSError:
            pass
        with self.lock:
            self.marker = b""
            return bytes(self.kept), self.total


def shell(command: str) -> None:
    """`!command` in a cell: run it with bash; its output joins the cell's."""
    import subprocess

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    subprocess.run(command, shell=True, executable="/bin/bash", check=False)


def transform_magics(source: str) -> str:
    """The IPython spellings a notebook-trained model uses: `!cmd`, `%pip`, `%%bash`, `%cd`, `%matplotlib`."""
    lines = source.split("\n")
    first = lines[0].strip() if lines else ""
    if first in ("%%bash", "%%sh", "%%script bash", "%%shell"):
        return "__appliance_shell__(" + repr("\n".join(lines[1:])) + ")"
    out = []
    for line in lines:
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith("!"):
            out.append(indent + "__appliance_shell__(" + repr(stripped[1:]) + ")")
        elif stripped.startswith(("%pip ", "%conda ")):
            out.append(indent + "__appliance_shell__(" + repr("python -m pip " + stripped.split(None, 1)[1]) + ")")
        elif stripped.startswith("%cd "):
            out.append(indent + "__import__('os').chdir(" + repr(stripped[4:].strip()) + ")")
        elif stripped.startswith(("%matplotlib", "%config", "%load_ext", "%reload_ext", "%autoreload")):
            out.append(indent + "pass")
        else:
            out.append(line)
    return "\n".join(out)


def end_leftover_processes(grace: float = 2.0) -> None:
    """Processes a cell started end with it, as a command's do when its sandbox closes.

    Without this a fork bomb's children would go on forking after the cell
    returned, and exited children would stay zombies holding process slots.
    kill(-1) reaches every process of this sandbox but the kernel and init.
    """
    deadline = time.monotonic() + grace
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            break  # ESRCH: nothing else is running
        _reap()
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)
    _reap()


def _reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Kernel:
    def __init__(self, cap: int) -> None:
        self.cap = cap  # characters of a result, an error value, a traceback (its end)
        self.count = 0
        self.pid = os.getpid()
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.namespace["__appliance_shell__"] = shell
        self.stdout = Capture(1, cap)
        self.stderr = Capture(2, cap)
        self.loop: Any = None

    def _streams(self) -> None:
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
        )

    def _run(self, code: types.CodeType) -> Any:
        value = eval(code, self.namespace)
        if code.co_flags & 0x80 and value is not None:  # CO_COROUTINE: the cell used top-level await
            import asyncio

            if self.loop is None:
                self.loop = asyncio.new_event_loop()
            value = self.loop.run_until_complete(value)
        return value

    def _error(self, exc: BaseException) -> dict[str, str]:
        # Show the frames from the cell down, not the kernel's (or ast's, for a syntax error).
        tb = exc.__traceback__
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell"):
            tb = tb.tb_next
        if tb is None:
            lines = traceback.format_exception_only(type(exc), exc)
        else:
            lines = traceback.format_exception(type(exc), exc, tb)
        trace = "".join(lines).rstrip("\n")
        return {"name": type(exc).__name__, "value": str(exc)[: self.cap], "traceback": trace[-self.cap :]}

    def execute(self, source: str) -> dict[str, Any]:
        self.count += 1
        filename = "<cell In[" + str(self.count) + "]>"
        self.stdout.reset()
        self.stderr.reset()
        self._streams()
        result = None
        result_chars = 0
        error = None
        try:
            try:
                tree = ast.parse(source, filename, "exec")
            except SyntaxError:
                transformed = transform_magics(source)
                if transformed == source:
                    raise
                try:
                    tree = ast.parse(transformed, filename, "exec")
                except SyntaxError:
                    tree = ast.parse(source, filename, "exec")  # report the error in the model's own text
                source = transformed
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            flags = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            self._run(compile(tree, filename, "exec", flags=flags, dont_inherit=True))
            if last is not None:
                expression = ast.Expression(last.value)  # type: ignore[attr-defined]
                value = self._run(compile(expression, filename, "eval", flags=flags, dont_inherit=True))
                if value is not None:
                    self.namespace["_"] = value
                    result = repr(value)
                    result_chars = len(result)
                    result = result[: self.cap]
        except BaseException as exc:  # the cell's error, whatever it is, is the answer
            error = self._error(exc)
        if os.getpid() != self.pid:
            os._exit(0)  # a child the cell forked got back here: only the kernel itself answers
        end_leftover_processes()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        out, out_total = self.stdout.collect()
        err, err_total = self.stderr.collect()
        return {
            "stdout": out.decode("utf-8", "replace"),
            "stderr": err.decode("utf-8", "replace"),
            "stdout_bytes": out_total,
            "stderr_bytes": err_total,
            "result": result,
            "result_chars": result_chars,
            "error": error,
            "count": self.count,
        }


def main() -> None:
    config = json.loads(sys.argv[1])
    apply_limits(config["limits"])
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    kernel = Kernel(int(config["cap"]))
    os.chdir(config.get("cwd", "/home/user"))
    if "" not in sys.path:
        sys.path.insert(0, "")  # like a notebook: modules in the working directory import
    replies.write(json.dumps({"ready": True, "python": sys.version.split()[0]}).encode() + b"\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        reply = kernel.execute(request["code"])
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


if __name__ == "__main__":
    main()
