"""run_python_code keeps state like a notebook kernel, and says so when that state is lost."""

from __future__ import annotations

import ast
import dataclasses
import threading
import time
from pathlib import Path

from appliance.tools.sandbox.kernels import KERNEL_SOURCE
from appliance.tools.sandbox.server import MAX_KERNELS, SandboxServer
from tests.sandbox_support import Run, RunFactory, command_parts, make_run, run

__all__ = ["make_run", "run"]  # fixtures


def test_state_is_kept_between_calls(run: Run) -> None:
    sid = run.sandbox()
    first = run.py(sid, "import math\nradius = 2\ndef area(r):\n    return math.pi * r * r\nprint('defined')")
    assert first.text == "Execution(Results: [], Logs: Logs(stdout: ['defined\\n'], stderr: []), Error: None)"
    second = run.py(sid, "round(area(radius), 3)")
    assert second.text == "Execution(Results: [Result(12.566)], Logs: Logs(stdout: [], stderr: []), Error: None)"
    assert "Result(12.566)" in run.py(sid, "_").text  # the last value, as in IPython


def test_final_expression_stdout_and_stderr_are_reported(run: Run) -> None:
    sid = run.sandbox()
    out = run.py(sid, "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n{'a': [1, 2]}")
    assert out.text == (
        "Execution(Results: [Result({'a': [1, 2]})], "
        "Logs: Logs(stdout: ['to stdout\\n'], stderr: ['to stderr\\n']), Error: None)"
    )
    assert "Results: []" in run.py(sid, "x = None\nx").text
    assert "Result('text')" in run.py(sid, "'text'").text
    shell = run.py(sid, "import os, subprocess\nos.system('echo from-a-child')\nsubprocess.run(['echo', 'again'])\n")
    assert "from-a-child\\nagain\\n" in shell.text


def test_errors_carry_name_value_and_the_cells_traceback(run: Run) -> None:
    sid = run.sandbox()
    run.py(sid, "kept = 'yes'")
    out = run.py(sid, "def f():\n    return 1 / 0\nf()")
    assert "Error: ExecutionError(name='ZeroDivisionError', value='division by zero', traceback=" in out.text
    assert "<cell In[2]>" in out.text and "return 1 / 0" in out.text
    assert "kernel.py" not in out.text and "<string>" not in out.text
    syntax = run.py(sid, "def broken(:\n    pass")
    assert "ExecutionError(name='SyntaxError'" in syntax.text and "ast.py" not in syntax.text
    assert "Result('yes')" in run.py(sid, "kept").text  # an error does not lose the state


def test_timeout_loses_the_state_and_says_so_once(make_run: RunFactory) -> None:
    run = make_run(sandbox__command_timeout=2.0)
    sid = run.sandbox()
    run.py(sid, "value = 7\nopen('/home/user/kept.txt', 'w').write('file stays')")
    started = time.monotonic()
    out = run.py(sid, "while True:\n    pass")
    assert time.monotonic() - started < 6
    assert "ExecutionError(name='TimeoutError', value='Execution timed out after 2 seconds'" in out.text
    assert "Python state was lost" in out.text and "smaller steps" in out.text
    after = run.py(sid, "value")
    assert "NameError" in after.text and "state of this sandbox was lost" not in after.text
    assert "Result('file stays')" in run.py(sid, "open('kept.txt').read()").text


def test_kernel_crash_is_reported_and_the_next_call_starts_fresh(run: Run) -> None:
    sid = run.sandbox()
    run.py(sid, "gone = 1")
    out = run.py(sid, "import os\nos._exit(3)")
    assert "DeadKernelError" in out.text and "exited with code 3" in out.text
    assert "NameError" in run.py(sid, "gone").text


def test_restart_of_the_appliance_keeps_files_and_says_the_python_state_was_lost(run: Run) -> None:
    sid = run.sandbox()
    run.py(sid, "counter = 41\nopen('note.txt', 'w').write('still on disk')")
    run.server.close()  # the appliance stops; a resumed run gets a new server
    resumed = Run(SandboxServer(run.settings), run.settings, run.ctx)
    try:
        out = resumed.py(sid, "open('note.txt').read()")
        assert out.text.startswith("[Sandbox note] The Python state of this sandbox was lost")
        assert "Result('still on disk')" in out.text
        assert "NameError" in resumed.py(sid, "counter").text
        again = resumed.py(sid, "1 + 1")
        assert again.text.startswith("Execution(") and "lost" not in again.text
    finally:
        resumed.server.close()


def test_each_sandbox_has_its_own_state_and_home_but_tmp_is_shared_with_its_commands(run: Run) -> None:
    first, second = run.sandbox(), run.sandbox()
    assert first != second
    run.py(first, "who = 'first'\nopen('/tmp/from-python.txt', 'w').write('tmp')\nopen('mine.txt', 'w').write('1')")
    run.py(second, "who = 'second'")
    assert "Result('first')" in run.py(first, "who").text
    assert "Result('second')" in run.py(second, "who").text
    assert command_parts(run.sh(first, "cat /tmp/from-python.txt").text)["stdout"] == "tmp"
    assert command_parts(run.sh(second, "ls").text)["stdout"] == ""
    assert (run.workspace / "mine.txt").exists()
    assert (run.ctx.run_dir / "sandboxes" / second / "home").is_dir()


def test_only_a_few_kernels_stay_alive_and_an_evicted_one_says_its_state_was_lost(run: Run) -> None:
    ids = [run.sandbox() for _ in range(MAX_KERNELS + 1)]
    for sid in ids:
        run.py(sid, f"mark = {sid!r}")
    out = run.py(ids[0], "mark")
    assert f"only {MAX_KERNELS} Python processes are kept running" in out.text and "NameError" in out.text
    assert f"Result({ids[-1]!r})" in run.py(ids[-1], "mark").text


def test_missing_or_placeholder_ids_run_once_without_state(run: Run) -> None:
    for sandbox_id in ("", "sandbox", "default"):
        out = run.py(sandbox_id, "open('/home/user/stateless.txt', 'w').write('ok')\n6 * 7")
        assert "Result(42)" in out.text, out.text
    assert (run.workspace / "stateless.txt").read_text() == "ok"
    unknown = run.py("i-made-this-up", "1")
    assert unknown.is_error and unknown.text.startswith("[ERROR]: Failed to connect to sandbox i-made-this-up.")


def test_notebook_spellings_work_and_pip_says_it_is_offline(run: Run) -> None:
    sid = run.sandbox()
    shell = run.py(sid, "!echo from-bang\nx = 3\n!echo $HOME")
    assert "from-bang\\n/home/user\\n" in shell.text and "Error: None" in shell.text
    pip = run.py(sid, "%pip install some-package-that-is-not-here")
    assert "pip cannot download packages" in pip.text
    awaited = run.py(sid, "import asyncio\nawait asyncio.sleep(0)\n'awaited'")
    assert "Result('awaited')" in awaited.text


def test_the_kernel_survives_user_code_that_takes_its_streams(run: Run) -> None:
    sid = run.sandbox()
    run.py(sid, "import os, sys\nsys.stdout = None\nos.close(1)\nos.dup2(os.open('/dev/null', os.O_WRONLY), 2)")
    out = run.py(sid, "print('back')\n'fine'")
    assert "Result('fine')" in out.text and "['back\\n']" in out.text


def test_background_processes_end_with_their_cell(run: Run) -> None:
    sid = run.sandbox()
    out = run.py(sid, "import subprocess\np = subprocess.Popen(['sleep', '300'])\np.pid")
    assert "Result(" in out.text
    listing = run.py(sid, "import os\nsorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == [1, os.getpid()]")
    assert "Result(True)" in listing.text, listing.text


def test_a_cancelled_call_stops_at_once_and_the_next_one_hears_the_state_is_gone(run: Run) -> None:
    sid = run.sandbox()
    run.py(sid, "before = 1")
    cancel = threading.Event()
    ctx = dataclasses.replace(run.ctx, cancel=cancel)
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    out = run.server.call("run_python_code", {"code_block": "import time\ntime.sleep(60)", "sandbox_id": sid}, ctx)
    assert out.is_error and "cancelled" in out.text and time.monotonic() - started < 10
    after = run.py(sid, "before")
    assert "the previous call was cancelled" in after.text and "NameError" in after.text
    stopped = threading.Event()
    threading.Timer(0.5, stopped.set).start()
    command = run.server.call(
        "run_command", {"command": "sleep 60", "sandbox_id": sid}, dataclasses.replace(run.ctx, cancel=stopped)
    )
    assert command.is_error and "cancelled" in command.text


def test_a_huge_result_is_cut_and_the_state_survives(run: Run) -> None:
    sid = run.sandbox()
    out = run.py(sid, "big = list(range(3_000_000))\nbig")
    assert len(out.text) < 20_500 and "[Result truncated" in out.text and "Result([0, 1, 2" in out.text
    assert "Result(3000000)" in run.py(sid, "len(big)").text
    error = run.py(sid, "raise ValueError('v' * 1_000_000)")
    assert len(error.text) < 20_500 and "ValueError" in error.text


def test_the_kernel_source_is_python_3_8_syntax() -> None:
    # It runs on the sandbox's interpreter, which the installer may pick older than the appliance's.
    ast.parse(KERNEL_SOURCE, feature_version=(3, 8))


def test_a_python_installed_under_tmp_is_visible_inside(make_run: RunFactory, tmp_path: Path) -> None:
    """A checkout's venv under /tmp (a CI clone) must not be hidden by the sandbox's own /tmp."""
    import subprocess
    import sys

    venv = tmp_path / "venv-under-tmp"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    run = make_run(sandbox__python=str(venv / "bin" / "python"))
    sid = run.sandbox()
    out = run.py(sid, "import sys; sys.prefix")
    assert f"Result('{venv}')" in out.text, out.text
    assert "Result(2)" in run.py(sid, "1 + 1").text
