"""What the sandbox costs: one sandboxed `true` and one run_python_code call against plain subprocesses.

    python bench/bench_sandbox.py [-n 40]

Every variant runs in the same process, interleaved round by round, so the
ratios compare like with like on a busy machine. Medians (and p90) in
milliseconds; "added" is the sandboxed median minus the plain one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.config import load_settings
from appliance.tools.base import CallContext
from appliance.tools.sandbox.bwrap import Limits
from appliance.tools.sandbox.host import sandbox_uid
from appliance.tools.sandbox.kernels import Kernel
from appliance.tools.sandbox.process import run_captured, spawn
from appliance.tools.sandbox.server import SandboxServer


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="rounds (default 40)")
    rounds = parser.parse_args().n

    scratch = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    os.environ["APPLIANCE_HOME"] = str(scratch / "home")
    settings = load_settings()
    server = SandboxServer(settings)
    host = server.host()
    limits = Limits.from_settings(settings.sandbox)
    workspace, tmp = scratch / "ws", scratch / "tmp"
    layout = server.layout(workspace, tmp, None, owned=True)
    # A workspace the user named: as root it is mounted id-mapped (a helper and a mount namespace per launch).
    (scratch / "user-ws").mkdir()
    user_layout = server.layout(scratch / "user-ws", scratch / "user-tmp", None, owned=False)
    run_dir = settings.dirs.run_dir("bench")
    ctx = CallContext("bench", run_dir, run_dir / "workspace", run_dir / "output", timeout=600)
    sandbox_id = str(server.call("create_sandbox", {}, ctx).meta["sandbox_id"])
    kernel = Kernel(host, layout, limits, 80_000)
    kernel.start()
    python = host.python.executable

    def plain_true() -> None:
        subprocess.run(["true"], capture_output=True, check=True)

    def sandbox_bare_true() -> None:
        process = spawn(host.build(layout, ["/usr/bin/true"]))
        assert process.wait() == 0

    def sandbox_true() -> None:  # what run_command does: bwrap, setpriv in root mode, bash + limits
        captured = run_captured(host.build(layout, host.shell_command(limits, "true")), timeout=60, cap_bytes=4096)
        assert captured.exit_code == 0

    def sandbox_true_user_workspace() -> None:
        command = host.shell_command(limits, "true")
        captured = run_captured(host.build(user_layout, command), timeout=60, cap_bytes=4096)
        assert captured.exit_code == 0

    def tool_run_command() -> None:
        assert "exit_code=0" in server.call("run_command", {"command": "true", "sandbox_id": sandbox_id}, ctx).text

    def plain_python() -> None:
        subprocess.run([python, "-c", "1 + 1"], capture_output=True, check=True)

    def kernel_cell() -> None:
        assert kernel.execute("1 + 1", timeout=60).result == "2"

    def tool_run_python_code() -> None:
        out = server.call("run_python_code", {"code_block": "1 + 1", "sandbox_id": sandbox_id}, ctx)
        assert "Result(2)" in out.text

    def cold_kernel() -> None:
        fresh = Kernel(host, layout, limits, 80_000)
        assert fresh.execute("1 + 1", timeout=60).result == "2"
        fresh.kill()

    variants = {
        "plain subprocess `true`": plain_true,
        "bwrap `true` (no shell)": sandbox_bare_true,
        "sandboxed `true` (as run_command)": sandbox_true,
        "same, the user's workspace": sandbox_true_user_workspace,
        "run_command tool call `true`": tool_run_command,
        "plain subprocess python -c": plain_python,
        "run_python_code, warm kernel": kernel_cell,
        "run_python_code tool call": tool_run_python_code,
        "run_python_code, cold kernel": cold_kernel,
    }
    for function in variants.values():  # warm caches (page cache, the tool's kernel)
        function()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, function in variants.items():
            samples[name].append(timed(function))
    kernel.kill()
    server.close()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    mode = "root: setpriv to a sandbox uid" if sandbox_uid(workspace) else "user namespace"
    print(f"sandbox benchmark, {rounds} rounds, median (p90) in ms; mode: {mode}")
    for name, values in samples.items():
        p90 = sorted(values)[int(0.9 * (len(values) - 1))]
        print(f"  {name:38s} {medians[name]:8.2f} ({p90:.2f})")
    base, py = medians["plain subprocess `true`"], medians["plain subprocess python -c"]
    print("ratios against a plain subprocess:")
    names = ("bwrap `true` (no shell)", "sandboxed `true` (as run_command)", "same, the user's workspace")
    for name in (*names, "run_command tool call `true`"):
        print(f"  {name:38s} x{medians[name] / base:6.1f}  added {medians[name] - base:6.2f} ms")
    for name in ("run_python_code, warm kernel", "run_python_code tool call", "run_python_code, cold kernel"):
        print(f"  {name:38s} x{medians[name] / py:6.2f}  added {medians[name] - py:6.2f} ms (vs python -c)")
    own, users = medians["sandboxed `true` (as run_command)"], medians["same, the user's workspace"]
    print(f"the user's workspace against the run's own: x{users / own:.2f}, added {users - own:.2f} ms")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")


if __name__ == "__main__":
    main()
