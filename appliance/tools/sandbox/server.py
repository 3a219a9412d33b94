"""The `tool-python` server: E2B's six tools on local bubblewrap sandboxes.

Texts follow the reference server (MiroThinker's python_mcp_server.py): the
same "[ERROR]: ..." messages, invalid ids refused, run_python_code falling
back to a one-off run when the id is missing or a placeholder. What differs
is said in the result itself: the sandbox is offline, its Python state can be
lost (timeout, crash, restart) while its files stay.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.llm.base import Backend
from appliance.protocol.tooldefs import ToolSpec
from appliance.tools.base import CallContext, ToolOutput, ToolServer
from appliance.tools.sandbox import formats
from appliance.tools.sandbox.bwrap import Host, Layout, Limits
from appliance.tools.sandbox.host import check_bind_source, preflight, resolve_host, sandbox_uid
from appliance.tools.sandbox.kernels import CellResult, Kernel, KernelUnavailable
from appliance.tools.sandbox.process import probe, run_captured
from appliance.tools.sandbox.registry import Registry, SandboxRecord, new_sandbox_id
from appliance.tools.sandbox.transfer import Transfers
from appliance.tools.sandbox.workspace import check_workspace
from appliance.tools.specs import PYTHON_SERVER, PYTHON_TOOLS

# Ids the model invents instead of creating a sandbox (from the reference server).
INVALID_SANDBOX_IDS = frozenset(
    {
        "default", "sandbox1", "sandbox", "some_id", "new_sandbox", "python", "create_sandbox", "sandbox123",
        "temp", "sandbox-0", "sandbox-1", "sandbox_0", "sandbox_1", "new", "0", "auto", "default_sandbox",
        "none", "sandbox_12345", "dummy", "sandbox_01",
    }
)  # fmt: skip
MAX_KERNELS = 4  # live Python processes per server; the least recently used one is stopped beyond
MAX_SANDBOXES_PER_RUN = 32


def invalid_id_error(sandbox_id: str) -> ToolOutput:
    return ToolOutput(
        f"[ERROR]: '{sandbox_id}' is not a valid sandbox_id. Please create a real sandbox first using the "
        "create_sandbox tool.",
        is_error=True,
    )


def connect_error(sandbox_id: str) -> ToolOutput:
    return ToolOutput(
        f"[ERROR]: Failed to connect to sandbox {sandbox_id}. Make sure the sandbox is created and the sandbox_id "
        "is correct.",
        is_error=True,
    )


def protected_paths(settings: Settings, run_dir: Path | None = None) -> list[Path]:
    """Directories no sandbox may see: homes, the appliance's data and configuration, the run's own files."""
    dirs = settings.dirs
    paths = [Path.home(), dirs.data_dir, dirs.config_dir, dirs.cache_dir, dirs.runs_dir]
    return [*paths, run_dir] if run_dir is not None else paths


class SandboxServer(ToolServer):
    name = PYTHON_SERVER

    def __init__(self, settings: Settings, *, new_id: Callable[[], str] | None = None) -> None:
        self.settings = settings
        self.limits = Limits.from_settings(settings.sandbox)
        self.new_id = new_id
        self._host: Host | None = None
        self._host_lock = threading.Lock()
        self._lock = threading.Lock()  # registries and the kernel table
        self._kernels: OrderedDict[tuple[str, str], Kernel] = OrderedDict()
        self._lost: dict[tuple[str, str], str] = {}
        self._layouts: dict[tuple[str, str], Layout] = {}
        self.transfers = Transfers(settings, self)

    def tools(self) -> Sequence[ToolSpec]:
        return PYTHON_TOOLS

    # ------------------------------------------------------------ shared machinery

    def host(self) -> Host:
        """bwrap, bash, the sandbox's Python, checked by starting one sandbox (once per server)."""
        with self._host_lock:
            if self._host is None:
                host = resolve_host(self.settings.sandbox, protected_paths(self.settings), sys.executable)
                probe(host, self.limits)
                self._host = host
            return self._host

    def layout(self, workspace: Path, tmp: Path, run_dir: Path | None, *, owned: bool | None = None) -> Layout:
        """The host directories of a sandbox, checked, and in root mode given to its uid or id-mapped.

        `owned`: the appliance made the workspace (the run's own, a sandbox's home, a
        scratch directory); by default, a workspace under the runs directory. Those are
        created and, as root, owned by the sandbox's uid. A workspace the user named is
        checked by the rule every entry point uses and never created, chowned or
        chmodded: as root the sandbox sees it through an id-mapped mount. The checks
        run once per directory pair and server; later calls only make sure the
        directories still exist (`appliance sandbox clean` may have removed them).
        """
        key = (str(workspace), str(tmp))
        known = self._layouts.get(key)
        if known is not None and workspace.is_dir() and tmp.is_dir():
            return known
        if owned is None:
            runs = os.path.realpath(self.settings.dirs.runs_dir)
            owned = os.path.realpath(workspace).startswith(runs + os.sep)
        if owned:
            check_bind_source(str(workspace), protected_paths(self.settings, run_dir), "the workspace")
            workspace.mkdir(parents=True, exist_ok=True)
        else:
            workspace = check_workspace(workspace, self.settings)
        tmp.mkdir(parents=True, exist_ok=True)
        uid = sandbox_uid(workspace)
        if uid is not None:
            for top in (workspace, tmp) if owned else (tmp,):
                if top.stat().st_uid != uid:
                    _chown_tree(top, uid)
        layout = Layout(workspace, tmp, uid, idmapped=uid is not None and not owned)
        self._layouts[key] = layout
        return layout

    def record_layout(self, record: SandboxRecord, ctx: CallContext) -> Layout:
        return self.layout(Path(record.workspace), Path(record.tmp), ctx.run_dir)

    def find(self, sandbox_id: str, ctx: CallContext) -> SandboxRecord | ToolOutput:
        """The sandbox a tool names, or the reference's error text."""
        if sandbox_id in INVALID_SANDBOX_IDS:
            return invalid_id_error(sandbox_id)
        record = Registry(ctx.run_dir).get(sandbox_id)
        return record if record is not None else connect_error(sandbox_id)

    def time_limit(self, ctx: CallContext) -> float:
        limit = self.settings.sandbox.command_timeout
        if ctx.timeout > 2:  # stop (and explain) before the tool box gives up on the call
            limit = min(limit, ctx.timeout - 1)
        return max(1.0, limit)

    # ------------------------------------------------------------ tools

    def call(self, tool: str, arguments: dict[str, Any], ctx: CallContext) -> ToolOutput:
        args = {k: v for k, v in arguments.items() if v is not None}
        sandbox_id = str(args.get("sandbox_id", "")).strip()
        try:
            if tool == "create_sandbox":
                return self.create_sandbox(ctx)
            if tool == "run_command":
                return self.run_command(str(args["command"]), sandbox_id, ctx)
            if tool == "run_python_code":
                return self.run_python_code(str(args["code_block"]), sandbox_id, ctx)
            if tool == "upload_file_from_local_to_sandbox":
                return self.transfers.upload(
                    sandbox_id, str(args["local_file_path"]), str(args.get("sandbox_file_path", "/home/user")), ctx
                )
            if tool == "download_file_from_internet_to_sandbox":
                return self.transfers.from_internet(
                    sandbox_id, str(args["url"]), str(args.get("sandbox_file_path", "/home/user")), ctx
                )
            if tool == "download_file_from_sandbox_to_local":
                local = args.get("local_filename")
                return self.transfers.to_local(sandbox_id, str(args["sandbox_file_path"]), local, ctx)
        except ApplianceError as exc:
            return ToolOutput(f"[ERROR]: The sandbox is unavailable: {exc.one_line()}", is_error=True)
        except OSError as exc:  # bwrap vanished, the disk is full, ...: the model reads it, the run goes on
            return ToolOutput(f"[ERROR]: The sandbox failed: {exc}", is_error=True)
        return ToolOutput(f"[ERROR]: Unknown tool: {tool}", is_error=True)

    def create_sandbox(self, ctx: CallContext) -> ToolOutput:
        registry = Registry(ctx.run_dir)
        with self._lock:
            known = registry.load()
            if len(known) >= MAX_SANDBOXES_PER_RUN:
                return ToolOutput(
                    f"[ERROR]: Failed to create sandbox: this task already has {len(known)} sandboxes. "
                    f"Reuse one of them: {', '.join(known)}",
                    is_error=True,
                )
            try:
                self.host()
                record = registry.plan(self.new_id() if self.new_id else new_sandbox_id(), ctx.workspace)
                self.record_layout(record, ctx)
            except ApplianceError as exc:
                return ToolOutput(f"[ERROR]: Failed to create sandbox: {exc.one_line()}", is_error=True)
            registry.update(record)
        return ToolOutput(
            f"Sandbox created with sandbox_id: {record.sandbox_id}", meta={"sandbox_id": record.sandbox_id}
        )

    def run_command(self, command: str, sandbox_id: str, ctx: CallContext) -> ToolOutput:
        found = self.find(sandbox_id, ctx)
        if isinstance(found, ToolOutput):
            return found
        host = self.host()
        layout = self.record_layout(found, ctx)
        limit = self.time_limit(ctx)
        cap = self.settings.sandbox.command_output_chars
        launch = host.build(layout, host.shell_command(self.limits, command))
        captured = run_captured(launch, timeout=limit, cap_bytes=4 * cap, cancel=ctx.cancel)
        if captured.cancelled:
            return ToolOutput("[ERROR]: The command was cancelled.", is_error=True)
        stdout = _piece(captured.stdout, captured.stdout_total)
        stderr = _piece(captured.stderr, captured.stderr_total)
        if captured.exit_code == 1 and stderr.text.startswith("bwrap: ") and not stdout.text:
            return ToolOutput(f"[ERROR]: The sandbox could not start: {stderr.text.strip()}", is_error=True)
        error: str | None
        if captured.timed_out:
            exit_code, error = 124, f"Command timed out after {limit:g} seconds and was killed"
        else:
            exit_code = captured.exit_code if captured.exit_code is not None else -1
            error = None if exit_code == 0 else f"exit status {exit_code}"
        text = formats.command_result(stdout, stderr, exit_code, error, cap)
        notes = [formats.offline_note([stdout.text, stderr.text], self.settings.tools.enabled)]
        if captured.timed_out:
            notes.append(formats.timeout_note(limit, python=False))
        meta = {"sandbox_id": sandbox_id, "exit_code": exit_code, "timed_out": captured.timed_out}
        return ToolOutput(formats.with_notes(text, notes), meta=meta)

    def run_python_code(self, code: str, sandbox_id: str, ctx: CallContext) -> ToolOutput:
        if not sandbox_id or sandbox_id in INVALID_SANDBOX_IDS:
            return self._run_stateless(code, ctx)
        found = self.find(sandbox_id, ctx)
        if isinstance(found, ToolOutput):
            return found
        record = found
        key = (str(ctx.run_dir), record.sandbox_id)
        kernel = self._kernel(key, record, ctx)
        lost_note = None
        with kernel.lock:
            if not kernel.alive:
                if record.python_used:
                    reason = self._lost.pop(key, "the appliance restarted or its Python process ended")
                    lost_note = formats.state_lost_note(reason)
                try:
                    kernel.start()
                except KernelUnavailable as exc:
                    return ToolOutput(f"[ERROR]: The sandbox's Python could not start: {exc}", is_error=True)
            cell = kernel.execute(code, timeout=self.time_limit(ctx), cancel=ctx.cancel)
        if cell.status == "cancelled":  # nobody read a result: the next call says the state is gone
            self._lost[key] = "the previous call was cancelled"
        used = cell.status == "ok" or (cell.status == "cancelled" and record.python_used)
        if used != record.python_used:
            record.python_used = used
            with self._lock:
                Registry(ctx.run_dir).update(record)
        output = self._cell_output(cell, self.time_limit(ctx))
        if lost_note:
            output = ToolOutput(f"{lost_note}\n\n{output.text}", output.is_error, output.meta)
        return output

    # ------------------------------------------------------------ python helpers

    def _kernel(self, key: tuple[str, str], record: SandboxRecord, ctx: CallContext) -> Kernel:
        with self._lock:
            kernel = self._kernels.get(key)
            if kernel is not None:
                self._kernels.move_to_end(key)
                return kernel
            host = self.host()
            cap = 4 * self.settings.sandbox.python_output_chars
            kernel = Kernel(host, self.record_layout(record, ctx), self.limits, cap)
            self._kernels[key] = kernel
            for old_key in list(self._kernels)[:-MAX_KERNELS]:
                old = self._kernels[old_key]
                if old.lock.acquire(blocking=False):
                    try:
                        if old.alive:
                            self._lost[old_key] = f"only {MAX_KERNELS} Python processes are kept running at a time"
                        old.kill()
                    finally:
                        old.lock.release()
                    del self._kernels[old_key]
            return kernel

    def _run_stateless(self, code: str, ctx: CallContext) -> ToolOutput:
        """The reference's fallback for a missing or placeholder id: a one-off Python process."""
        host = self.host()
        with tempfile.TemporaryDirectory(prefix="appliance-tmp-") as scratch:
            layout = self.layout(ctx.workspace, Path(scratch), ctx.run_dir)
            kernel = Kernel(host, layout, self.limits, 4 * self.settings.sandbox.python_output_chars)
            try:
                kernel.start()
                cell = kernel.execute(code, timeout=self.time_limit(ctx), cancel=ctx.cancel)
            except KernelUnavailable as exc:
                return ToolOutput(f"[ERROR]: Failed to run code in stateless mode. Details: {exc}", is_error=True)
            finally:
                kernel.kill()
        return self._cell_output(cell, self.time_limit(ctx))

    def _cell_output(self, cell: CellResult, limit: float) -> ToolOutput:
        cap = self.settings.sandbox.python_output_chars
        if cell.status == "cancelled":
            return ToolOutput("[ERROR]: The code was cancelled.", is_error=True)
        notes: list[str | None] = []
        error: tuple[str, str, formats.Piece] | None = None  # name, value, traceback
        if cell.status == "timeout":
            error = ("TimeoutError", f"Execution timed out after {limit:g} seconds", formats.Piece("", 0))
            notes.append(formats.timeout_note(limit, python=True))
        elif cell.status == "died":
            value = (
                f"The Python process ended while running this code ({cell.detail}). The Python state was lost; "
                "files in /home/user remain."
            )
            error = ("DeadKernelError", value, formats.Piece("", 0))
        elif cell.error:
            trace = cell.error.get("traceback", "")
            error = (cell.error.get("name", ""), cell.error.get("value", ""), formats.Piece(trace, len(trace), True))
        stdout = _piece_text(cell.stdout, cell.stdout_bytes)
        stderr = _piece_text(cell.stderr, cell.stderr_bytes)
        result = None
        if cell.result is not None:
            shown = formats.readable(cell.result, cell.result_chars)
            result = formats.Piece(shown, max(len(shown), cell.result_chars), quoted=False)
        text = formats.execution(result, stdout, stderr, error, cap)
        seen = [stdout.text, stderr.text, *(error[1:2] if error else ()), error[2].text if error else ""]
        notes.insert(0, formats.offline_note(seen, self.settings.tools.enabled))
        meta = {"status": cell.status, "duration_s": round(cell.duration_s, 3)}
        return ToolOutput(formats.with_notes(text, notes), meta=meta)

    def close(self) -> None:
        with self._lock:
            kernels = list(self._kernels.values())
            self._kernels.clear()
        for kernel in kernels:
            kernel.kill()
        self.transfers.close()


def _piece(data: bytes, total: int) -> formats.Piece:
    return _piece_text(data.decode("utf-8", "replace"), total, kept=len(data))


def _piece_text(text: str, total_bytes: int, kept: int | None = None) -> formats.Piece:
    shown = formats.readable(text, total_bytes)
    kept_bytes = len(text.encode("utf-8", "replace")) if kept is None else kept
    return formats.Piece(shown, total_bytes if total_bytes > kept_bytes else len(shown))


def _chown_tree(top: Path, uid: int) -> None:
    """Give a directory the appliance made to the sandbox's uid (root mode), without following links."""
    os.chown(top, uid, uid, follow_symlinks=False)
    for directory, dirnames, filenames in os.walk(top, followlinks=False):
        for name in (*dirnames, *filenames):
            try:
                os.chown(Path(directory, name), uid, uid, follow_symlinks=False)
            except OSError:
                pass


def create_server(settings: Settings, get_backend: Callable[[], Backend]) -> SandboxServer:
    """Cheap: checks that bwrap is installed and user namespaces are not off; starts nothing."""
    preflight(settings.sandbox)
    return SandboxServer(settings)
