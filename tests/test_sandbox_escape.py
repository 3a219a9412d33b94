"""The attacker's suite: every way out of the sandbox a model (or a page steering it) might try.

Each attempt runs in real bwrap through the real tool server, must fail in the
expected way, and must leave the host as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.tools.sandbox.host import is_real_root
from tests.sandbox_support import (
    HostServer,
    Run,
    RunFactory,
    command_parts,
    host_http,
    leftover_processes,
    make_run,
    run,
    sandbox_host_uid,
    tree_listing,
)

__all__ = ["host_http", "make_run", "run"]  # fixtures


# ------------------------------------------------------------------ network


def test_socket_to_a_host_server_on_loopback_never_arrives(run: Run, host_http: HostServer) -> None:
    sid = run.sandbox()
    code = (
        "import socket\n"
        f"s = socket.socket(); s.settimeout(3)\nerr = s.connect_ex(('127.0.0.1', {host_http.port}))\n"
        "import errno; errno.errorcode[err]"
    )
    out = run.py(sid, code)
    assert "Result('ECONNREFUSED')" in out.text, out.text
    shell = command_parts(run.sh(sid, f"exec 3<>/dev/tcp/127.0.0.1/{host_http.port} && echo CONNECTED").text)
    assert shell["exit_code"] != 0 and "CONNECTED" not in shell["stdout"]
    assert host_http.hits == []


def test_http_to_loopback_and_outside_fails_and_says_the_sandbox_is_offline(run: Run, host_http: HostServer) -> None:
    host_http.files["/secret"] = b"host-only"
    sid = run.sandbox()
    out = run.py(sid, f"import urllib.request\nurllib.request.urlopen('{host_http.url('/secret')}', timeout=3).read()")
    assert "ExecutionError(name='URLError'" in out.text and "host-only" not in out.text
    outside = run.py(sid, "import socket\nsocket.create_connection(('1.1.1.1', 443), timeout=3)")
    assert "Network is unreachable" in outside.text
    for text in (outside.text,):
        assert "no internet access" in text
        assert "google_search" in text and "scrape_and_extract_info" in text
        assert "download_file_from_internet_to_sandbox" in text
    assert host_http.hits == []


def test_dns_does_not_resolve(run: Run) -> None:
    sid = run.sandbox()
    out = run.py(sid, "import socket\nsocket.getaddrinfo('example.com', 80)")
    assert "gaierror" in out.text and "no internet access" in out.text
    shell = command_parts(run.sh(sid, "getent hosts example.com; echo rc=$?").text)
    assert "rc=2" in shell["stdout"] or "rc=1" in shell["stdout"]


def test_only_a_loopback_interface_exists(run: Run) -> None:
    sid = run.sandbox()
    shell = command_parts(run.sh(sid, "tail -n +3 /proc/net/dev | cut -d: -f1").text)
    assert shell["stdout"].split() == ["lo"]


def test_pip_install_explains_that_packages_cannot_be_downloaded(run: Run) -> None:
    sid = run.sandbox()
    out = run.sh(sid, "python -m pip install --no-cache-dir some-package-that-is-not-here")
    assert command_parts(out.text)["exit_code"] != 0
    assert "pip cannot download packages" in out.text


# ------------------------------------------------------------------ reading the host


def test_host_home_and_root_are_invisible(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path.home()  # the real one, before HOME points at a made-up user's below
    user_home = tmp_path / "alice"
    (user_home / ".ssh").mkdir(parents=True)
    (user_home / ".ssh" / "id_ed25519").write_text("home-secret-0451")
    monkeypatch.setenv("HOME", str(user_home))
    sid = run.sandbox()
    leak = run.sh(sid, f"cat {user_home}/.ssh/id_ed25519 ~/.ssh/id_ed25519; ls -A ~")
    assert "home-secret-0451" not in leak.text and command_parts(leak.text)["stdout"] == ""
    host = run.server.host()
    # Only the path down to the sandbox's Python may exist (read-only) under a home directory.
    needed = {Path(b).relative_to(home).parts[0] for b in host.python.binds if Path(b).is_relative_to(home)}
    secrets = [p.name for p in sorted(home.iterdir()) if p.name not in needed][:40]
    probe = (
        "import os, json\n" + f"json.dumps([n for n in {secrets!r} if os.path.lexists(os.path.join({str(home)!r}, n))])"
    )
    out = run.py(sid, probe)
    assert "Result('[]')" in out.text, out.text
    listing = command_parts(run.sh(sid, "ls -A /root; ls -A /home").text)["stdout"].split()
    assert set(listing) <= {*needed, "user"}, listing


def test_etc_shadow_and_host_accounts_are_not_there(run: Run) -> None:
    assert Path("/etc/shadow").exists()
    sid = run.sandbox()
    shell = command_parts(run.sh(sid, "cat /etc/shadow; echo; cat /etc/passwd; ls /etc").text)
    assert "No such file" in shell["stderr"]
    assert "shadow" not in shell["stdout"].split()
    host_users = {line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines() if line}
    sandbox_users = {line.split(":")[0] for line in shell["stdout"].splitlines() if line.count(":") >= 6}
    assert sandbox_users <= {"root", "user", "nobody"} and sandbox_users != host_users


def test_history_database_and_models_in_appliance_home_are_unreachable(run: Run, appliance_home: Path) -> None:
    with sqlite3.connect(appliance_home / "history.db") as db:
        db.execute("create table t (secret text)")
        db.execute("insert into t values ('history-secret-0451')")
    (appliance_home / "models").mkdir()
    (appliance_home / "models" / "weights.gguf").write_bytes(b"GGUF model-secret-0451")
    (appliance_home / "config.toml").write_text('[model]\napi_key = "key-secret-0451"\n')
    sid = run.sandbox()
    paths = [appliance_home / "history.db", appliance_home / "models", appliance_home / "config.toml"]
    code = "import os\n" + f"[p for p in {[str(p) for p in paths]!r} if os.path.exists(p)]"
    assert "Result([])" in run.py(sid, code).text
    relative = run.sh(sid, "cat ../../history.db ../../../history.db ../../models/weights.gguf; ls -a /home/user/..")
    parts = command_parts(relative.text)
    assert "secret-0451" not in relative.text
    assert parts["stdout"].split() == [".", "..", "user"]
    found = command_parts(run.sh(sid, "grep -rl secret-0451 / --exclude-dir=proc --exclude-dir=usr 2>/dev/null").text)
    assert found["stdout"] == ""


# ------------------------------------------------------------------ writing outside


def test_nothing_outside_the_workspace_and_tmp_is_writable(run: Run) -> None:
    sid = run.sandbox()
    host = run.server.host()
    before = {bind: tree_listing(Path(bind)) for bind in host.python.binds}
    marker = f"escape-marker-{os.getpid()}"
    targets = ["/", "/usr", "/etc", "/root", "/home", "/opt", "/dev", "/proc", *host.python.binds]
    script = "; ".join(f"touch {t}/{marker} 2>/dev/null && echo WROTE:{t}" for t in targets)
    script += (
        f"; echo x > /proc/sys/kernel/hostname 2>/dev/null && echo WROTE:hostname; touch /tmp/{marker} && echo TMP"
    )
    shell = command_parts(run.sh(sid, script).text)
    assert "WROTE" not in shell["stdout"], shell
    assert "TMP" in shell["stdout"]
    assert not Path("/tmp", marker).exists(), "the sandbox's /tmp must not be the host's"
    for bind, listing in before.items():
        assert tree_listing(Path(bind)) == listing
    assert os.uname().nodename != "x"


def test_setuid_binaries_do_not_elevate(run: Run) -> None:
    sid = run.sandbox()
    setuid_copy = run.workspace / "id-suid"
    shutil.copy2("/usr/bin/id", setuid_copy)
    if is_real_root():
        os.chown(setuid_copy, 0, 0)
    setuid_copy.chmod(0o4755)
    shell = command_parts(
        run.sh(
            sid,
            "grep -E 'NoNewPrivs|CapEff' /proc/self/status; ./id-suid -u; id -u; "
            "su -c id root </dev/null; echo su=$?; "
            "python -c 'import os; os.setuid(0)' 2>&1 | tail -1",
        ).text
    )
    lines = shell["stdout"].splitlines()
    assert "NoNewPrivs:\t1" in lines and "CapEff:\t0000000000000000" in lines
    own_uid = lines[2]
    assert own_uid != "0" and lines[3] == own_uid, lines
    assert "su=0" not in shell["stdout"]
    assert "PermissionError" in shell["stdout"]


# ------------------------------------------------------------------ processes


def test_host_processes_are_invisible_and_cannot_be_signalled(run: Run) -> None:
    victim = subprocess.Popen(["sleep", "300"])
    try:
        sid = run.sandbox()
        shell = command_parts(
            run.sh(sid, f"ls /proc | grep -c '^[0-9]'; kill -9 {victim.pid}; echo kill=$?; ps ax -o pid=,comm=").text
        )
        count = int(shell["stdout"].split()[0])
        assert count < 10, shell
        assert "kill=0" not in shell["stdout"]
        assert "sleep" not in shell["stdout"]
        time.sleep(0.2)
        assert victim.poll() is None, "the host process was killed from inside the sandbox"
    finally:
        victim.kill()
        victim.wait()


def test_fork_bomb_hits_the_process_limit_and_leaves_nothing_behind(make_run: RunFactory) -> None:
    run = make_run(sandbox__max_processes=48, sandbox__command_timeout=4.0)
    sid = run.sandbox()
    marker = f"forkbomb-{os.getpid()}"
    started = time.monotonic()
    out = run.sh(sid, f"bomb() {{ bomb | bomb & }}; bomb; exec -a {marker} sleep 30")
    parts = command_parts(out.text)
    assert time.monotonic() - started < 15
    assert "fork: retry" in parts["stderr"] or "Resource temporarily unavailable" in parts["stderr"], parts
    time.sleep(0.5)
    assert leftover_processes(marker, sandbox_host_uid(run)) == []
    calm = command_parts(run.sh(sid, "echo alive").text)
    assert calm["stdout"] == "alive\n"


def test_python_fork_bomb_is_stopped_and_the_kernel_survives(make_run: RunFactory) -> None:
    run = make_run(sandbox__max_processes=32, sandbox__command_timeout=15.0)
    sid = run.sandbox()
    run.py(sid, "survivor = 'still here'")
    out = run.py(sid, "import os\nwhile True:\n    os.fork()")
    assert "BlockingIOError" in out.text and "Resource temporarily unavailable" in out.text, out.text
    assert "Result('still here')" in run.py(sid, "survivor").text
    time.sleep(0.5)
    uid = sandbox_host_uid(run)
    if uid is not None:  # only the kernel is left: no forked copy, no zombie holding a process slot
        assert len(leftover_processes("never-in-a-cmdline", uid)) == 1


def test_memory_bomb_fails_inside_the_limit(make_run: RunFactory) -> None:
    run = make_run(sandbox__memory_mb=512)
    sid = run.sandbox()
    run.py(sid, "kept = 41")
    out = run.py(sid, "hog = bytearray(2 * 1024**3)")
    assert "ExecutionError(name='MemoryError'" in out.text
    assert "Result(42)" in run.py(sid, "kept + 1").text
    shell = command_parts(run.sh(sid, "python -c 'bytearray(2 * 1024**3)'").text)
    assert shell["exit_code"] != 0 and "MemoryError" in shell["stderr"]


def test_infinite_loop_is_killed_at_the_wall_clock_with_its_children(make_run: RunFactory) -> None:
    run = make_run(sandbox__command_timeout=2.0)
    sid = run.sandbox()
    marker = f"loop-{os.getpid()}"
    started = time.monotonic()
    out = run.sh(
        sid, f"(exec -a {marker} sleep 300) & setsid bash -c 'exec -a {marker} sleep 300' & while :; do :; done"
    )
    assert time.monotonic() - started < 6
    parts = command_parts(out.text)
    assert parts["exit_code"] == 124
    assert "stopped after 2 seconds" in out.text and "smaller steps" in out.text
    time.sleep(0.3)
    assert leftover_processes(marker, sandbox_host_uid(run)) == []


def test_cpu_limit_stops_a_busy_process_before_the_wall_clock(make_run: RunFactory) -> None:
    run = make_run(sandbox__cpu_seconds=1, sandbox__command_timeout=30.0)
    sid = run.sandbox()
    started = time.monotonic()
    parts = command_parts(run.sh(sid, "while :; do :; done").text)
    assert time.monotonic() - started < 15
    assert parts["exit_code"] in (128 + 24, 128 + 9), parts  # SIGXCPU, then SIGKILL at the hard limit


def test_output_flood_is_capped(make_run: RunFactory) -> None:
    run = make_run(sandbox__command_timeout=2.0)
    sid = run.sandbox()
    out = run.sh(sid, "yes 'flood'")
    assert len(out.text) < 100_000 + 1_000
    assert "[Result truncated" in out.text and command_parts(out.text)["exit_code"] == 124
    big = run.py(sid, "print('y' * 5_000_000)")
    assert len(big.text) < 20_000 + 500 and "[Result truncated" in big.text
    looping = run.py(sid, "while True:\n    print('z' * 100)")
    assert len(looping.text) < 20_000 + 1_500 and "TimeoutError" in looping.text


def test_huge_file_stops_at_the_file_size_limit(make_run: RunFactory) -> None:
    run = make_run(sandbox__max_file_mb=5)
    sid = run.sandbox()
    parts = command_parts(run.sh(sid, "head -c 20M /dev/zero > big.bin").text)
    assert parts["exit_code"] != 0 and "File size limit exceeded" in parts["stderr"], parts
    assert (run.workspace / "big.bin").stat().st_size <= 5 * 1024 * 1024
    out = run.py(sid, "open('big2.bin', 'wb').write(b'0' * (20 * 1024 * 1024))")
    assert "File too large" in out.text
    assert (run.workspace / "big2.bin").stat().st_size <= 5 * 1024 * 1024


# ------------------------------------------------------------------ paths, links and '..'


def test_sandbox_symlinks_never_lead_host_writes_or_reads_out(
    run: Run, tmp_path: Path, host_http: HostServer, make_run: RunFactory
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("host original")
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    attached = tmp_path / "report.csv"
    attached.write_text("a,b\n")
    run = run.with_attachments(attached)
    sid = run.sandbox()
    run.sh(sid, f"ln -s {victim} report.csv; ln -s {victim_dir} linked; ln -s {victim} leak; mkfifo pipe")

    for destination in ("/home/user", "/home/user/linked", "/home/user/linked/deeper"):
        out = run.call("upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path=str(attached),
                       sandbox_file_path=destination)  # fmt: skip
        assert out.is_error and "symbolic link" in out.text, out.text

    allowed = make_run(scrape__allow_hosts=[f"127.0.0.1:{host_http.port}"]).with_attachments(attached)
    host_http.files["/data.txt"] = b"downloaded"
    for destination in ("/home/user/leak", "/home/user/linked/", "/home/user/linked/x.txt"):
        out = allowed.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=host_http.url("/data.txt"),
                           sandbox_file_path=destination)  # fmt: skip
        assert out.is_error and "symbolic link" in out.text, out.text

    for path in ("/home/user/leak", "leak", "/home/user/linked/anything"):
        out = run.call("download_file_from_sandbox_to_local", sandbox_id=sid, sandbox_file_path=path)
        assert out.is_error and "symbolic link" in out.text, out.text
    fifo = run.call("download_file_from_sandbox_to_local", sandbox_id=sid, sandbox_file_path="pipe")
    assert fifo.is_error and "not a regular file" in fifo.text

    assert victim.read_text() == "host original"
    assert list(victim_dir.iterdir()) == []
    assert not run.ctx.output_dir.exists() or list(run.ctx.output_dir.iterdir()) == []


def test_dot_dot_in_every_path_argument_is_refused(run: Run, tmp_path: Path, host_http: HostServer) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not attached")
    folder = tmp_path / "attached"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine")
    (folder / "escape-link").symlink_to(secret)
    run = run.with_attachments(folder)
    sid = run.sandbox()
    for local in (f"{folder}/../secret.txt", f"{folder}/escape-link", str(secret), "/etc/passwd", "../secret.txt"):
        out = run.call("upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path=local)
        assert out.is_error and "not one of the files attached" in out.text, (local, out.text)
    for destination in ("/home/user/../../etc", "../..", "/tmp", "/home/user/a/../../../root"):
        out = run.call("upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path=f"{folder}/ok.txt",
                       sandbox_file_path=destination)  # fmt: skip
        assert out.is_error and "outside /home/user" in out.text, (destination, out.text)
        internet = run.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=host_http.url("/x"),
                            sandbox_file_path=destination)  # fmt: skip
        assert internet.is_error and "outside /home/user" in internet.text
    for path in ("/home/user/../../etc/passwd", "../../etc/hostname", "/etc/passwd"):
        out = run.call("download_file_from_sandbox_to_local", sandbox_id=sid, sandbox_file_path=path)
        assert out.is_error and "outside /home/user" in out.text, out.text
    run.sh(sid, "echo data > inside.txt")
    for name in ("../escaped.txt", "/tmp/escaped.txt", "..", "a/b.txt"):
        out = run.call("download_file_from_sandbox_to_local", sandbox_id=sid, sandbox_file_path="inside.txt",
                       local_filename=name)  # fmt: skip
        assert out.is_error and "plain file name" in out.text
    assert not (run.ctx.run_dir / "escaped.txt").exists() and not Path("/tmp/escaped.txt").exists()
    assert host_http.hits == []


def test_workspaces_that_would_expose_the_host_are_refused(
    make_run: RunFactory, appliance_home: Path, tmp_path: Path
) -> None:
    # The server checks a named workspace again (runs resumed from a record, mcp serve): the
    # appliance's data, its runs, and a link to them. System paths: tests/test_workspace_rules.py.
    link = tmp_path / "innocent"
    link.symlink_to(appliance_home)
    (appliance_home / "runs").mkdir(exist_ok=True)
    for workspace in (appliance_home, appliance_home / "runs", link):
        run = make_run()
        run.ctx.workspace = workspace
        out = run.call("create_sandbox")
        assert out.is_error and "the appliance's own data" in out.text, out.text


def test_environment_carries_no_host_secrets(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    monkeypatch.setenv("APPLIANCE_MODEL_API_KEY", "appliance-secret")
    sid = run.sandbox()
    env = json.loads(
        command_parts(run.sh(sid, "python -c 'import os, json; print(json.dumps(dict(os.environ)))'").text)["stdout"]
    )
    assert "secret" not in json.dumps(env)
    assert env["HOME"] == "/home/user" and not any(key.startswith("APPLIANCE") for key in env)
    assert sys.executable not in env.get("_", "")


def test_every_limit_is_in_force_for_commands_and_the_kernel(make_run: RunFactory) -> None:
    run = make_run(
        sandbox__cpu_seconds=77, sandbox__memory_mb=700, sandbox__max_processes=55, sandbox__max_file_mb=33,
        sandbox__open_files=99,
    )  # fmt: skip
    sid = run.sandbox()
    shell = command_parts(run.sh(sid, "ulimit -H -t -v -u -f -n -c").text)["stdout"].split("\n")
    values = [line.rsplit(" ", 1)[-1] for line in shell if line]
    assert values == ["77", str(700 * 1024), "55", str(33 * 1024), "99", "0"], shell
    code = (
        "import resource as r\n"
        "[r.getrlimit(getattr(r, n)) for n in "
        "('RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_CORE')]"
    )
    expected = [(77, 77), (700 * 2**20,) * 2, (55, 55), (33 * 2**20,) * 2, (99, 99), (0, 0)]
    assert f"Result({expected!r})" in run.py(sid, code).text
