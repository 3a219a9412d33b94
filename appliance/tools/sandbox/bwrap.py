"""The bubblewrap command line: what a sandboxed process can see, and the limits it runs under.

Every process the model starts (a shell command, the Python kernel) runs in a
fresh bwrap instance:
- namespaces: new PID, IPC, UTS, network (a loopback only: no route out),
  mount and cgroup namespaces;
- filesystem: an empty tmpfs root with read-only binds of the system
  directories programs need (/usr, the /bin and /lib links, a short list of
  /etc files), the sandbox's Python installation read-only at its own path, a
  new /proc and a minimal /dev; the workspace read-write at /home/user and the
  sandbox's own /tmp (a host directory, shared by the kernel and the commands
  of one sandbox, as in E2B). Nothing else of the host: no home directories,
  no /root, no appliance data (history, models, config), no /etc/shadow;
- privileges: all capabilities dropped, no_new_privs (bwrap always sets it, so
  setuid binaries do not elevate), a new session (no terminal injection), and
  the sandbox dies with the appliance (`--die-with-parent`);
- limits: CPU seconds, address space, processes, file size and open files,
  set with setrlimit inside the sandbox (so they bound every process there).

Process limits and root. RLIMIT_NPROC counts the processes of a real uid and
the kernel does not enforce it for uid 0, so a fork bomb run by root would
only stop at the host's PID limit. As a normal user, bwrap maps the user to
uid 1000 in a new user namespace (with further user namespaces disabled) and
the limit holds. As real root, a sandbox instead runs as its own unprivileged
host uid (SANDBOX_UID_BASE + a hash of its workspace): bwrap sets up the
namespaces as root without a user namespace, keeps only CAP_SETUID/CAP_SETGID
for `setpriv`, which switches to that uid (dropping every capability) before
the command runs. Directories the appliance made for the sandbox (the run's
own workspace, /tmp) are owned by that uid; a workspace the user named is
never chowned: it is seen through an id-mapped mount (idmap.py).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import SandboxSettings

SANDBOX_HOME = "/home/user"
SANDBOX_USER = "user"
SANDBOX_HOSTNAME = "sandbox"
# Root mode: sandboxes run as host uids in [BASE, BASE + SPAN), unused on normal systems.
SANDBOX_UID_BASE = 2_000_000_000
SANDBOX_UID_SPAN = 100_000_000
# User-namespace mode: the uid/gid the sandboxed processes see (E2B's "user").
USERNS_UID = 1000
# A directory inside the sandbox with `python`/`python3` links to the sandbox's interpreter.
SANDBOX_BIN = "/opt/sandbox/bin"
# /dev/shm is memory: small, for semaphores and the like (multiprocessing needs it).
SHM_BYTES = 128 * 1024 * 1024

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of /etc programs need: the dynamic linker's cache, time zone, MIME and service
# tables are copied into the sandbox (`--file`, cheaper than a bind mount: ~0.3 ms each
# per launch); alternatives and fonts are directories and are bound. Users, groups and
# hosts are written fresh (see identity_files).
ETC_FILES = ("ld.so.cache", "localtime", "mime.types", "nsswitch.conf", "protocols", "services")
ETC_DIRS = ("alternatives", "fonts")


# ------------------------------------------------------------------ limits


@dataclass(frozen=True)
class Limits:
    """Per-process resource limits; a value <= 0 means "no limit of ours" (the host's applies)."""

    cpu_seconds: int = 600
    memory_mb: int = 4096
    max_processes: int = 256
    max_file_mb: int = 1024
    open_files: int = 1024

    @classmethod
    def from_settings(cls, sandbox: SandboxSettings) -> Limits:
        return cls(
            sandbox.cpu_seconds, sandbox.memory_mb, sandbox.max_processes, sandbox.max_file_mb, sandbox.open_files
        )

    def rlimits(self) -> dict[str, int]:
        """RLIMIT name -> value (bytes, seconds or a count), clamped to this process's hard limits.

        The sandbox inherits the host's limits through bwrap, and an unprivileged
        process cannot raise a hard limit: asking for more would fail, so ask for
        at most what is allowed.
        """
        wanted = {
            "RLIMIT_CPU": self.cpu_seconds,
            "RLIMIT_AS": self.memory_mb * 1024 * 1024,
            "RLIMIT_NPROC": self.max_processes,
            "RLIMIT_FSIZE": self.max_file_mb * 1024 * 1024,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_CORE": 0,
        }
        out: dict[str, int] = {}
        for name, value in wanted.items():
            if value <= 0 and name != "RLIMIT_CORE":
                continue
            hard = resource.getrlimit(getattr(resource, name))[1]
            out[name] = value if hard == resource.RLIM_INFINITY else min(value, hard)
        return out

    def ulimit_command(self) -> str:
        """The same limits as a bash `ulimit` line (bash counts -v and -f in KiB)."""
        flags = {"RLIMIT_CPU": "-t", "RLIMIT_AS": "-v", "RLIMIT_NPROC": "-u", "RLIMIT_FSIZE": "-f"}
        flags |= {"RLIMIT_NOFILE": "-n", "RLIMIT_CORE": "-c"}
        parts = []
        for name, value in self.rlimits().items():
            scaled = value // 1024 if name in ("RLIMIT_AS", "RLIMIT_FSIZE") else value
            parts.append(f"{flags[name]} {scaled}")
        return "ulimit -HS " + " ".join(parts) if parts else "true"


# ------------------------------------------------------------------ the sandbox's Python


@dataclass(frozen=True)
class PythonInstall:
    """An interpreter for the sandbox and the host directories it needs, bound read-only at their own paths."""

    executable: str
    version: str
    binds: tuple[str, ...]


# ------------------------------------------------------------------ the command line


@dataclass(frozen=True)
class Layout:
    """One sandbox's host directories and, in root mode, the host uid it runs as.

    `idmapped`: the workspace is the user's (root mode), mounted id-mapped instead of owned by `uid`.
    """

    workspace: Path
    tmp: Path
    uid: int | None = None
    idmapped: bool = False

    @property
    def file_owner(self) -> int | None:
        """Who the host makes the owner of files it writes into the workspace (None: the appliance's user)."""
        return None if self.idmapped else self.uid


@dataclass
class Launch:
    """A bwrap command line and the file descriptors it reads (closed once the process started)."""

    argv: list[str]
    fds: list[int] = field(default_factory=list)
    # Root mode with the user's workspace: (workspace, uid) to mount id-mapped before bwrap runs.
    idmap: tuple[Path, int] | None = None

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


def _memfd(name: str, content: str) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, content.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def identity_files(uid: int) -> dict[str, str]:
    """/etc/passwd, /etc/group and /etc/hosts of the sandbox: one user, no host accounts."""
    return {
        "/etc/passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{SANDBOX_USER}:x:{uid}:{uid}::{SANDBOX_HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "/etc/group": f"root:x:0:\n{SANDBOX_USER}:x:{uid}:\nnogroup:x:65534:\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost {SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost\n",
        "/etc/hostname": f"{SANDBOX_HOSTNAME}\n",
    }


def sandbox_env(python: PythonInstall) -> dict[str, str]:
    """The whole environment of a sandboxed process: nothing is inherited from the host."""
    return {
        "PATH": f"{SANDBOX_BIN}:{Path(python.executable).parent}:{SYSTEM_PATH}",
        "HOME": SANDBOX_HOME,
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "SHELL": "/bin/bash",
        "HOSTNAME": SANDBOX_HOSTNAME,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "TERM": "dumb",
        "MPLBACKEND": "Agg",
        # Offline: fail at once instead of retrying a network that is not there.
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True)
class Host:
    """Facts about this machine that every launch needs, found once."""

    bwrap: str
    bash: str
    setpriv: str | None  # set in root mode
    python: PythonInstall

    def build(self, layout: Layout, command: Sequence[str]) -> Launch:
        """The bwrap command line that runs `command` (wrapped to set its limits and directory) in `layout`.

        bwrap starts it in /: in root mode the setup runs without CAP_DAC_OVERRIDE,
        so entering a workspace the sandbox's uid made private must wait for that uid.
        """
        argv = [self.bwrap]
        if layout.uid is None:
            argv += ["--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(USERNS_UID)]
            argv += ["--gid", str(USERNS_UID)]
            inside_uid = USERNS_UID
        else:
            # Root: namespaces without a user namespace; setpriv below switches to the sandbox's uid.
            argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
            argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
            inside_uid = layout.uid
        argv += ["--die-with-parent", "--new-session", "--hostname", SANDBOX_HOSTNAME]
        if layout.uid is None:
            argv += ["--cap-drop", "ALL"]

        made: set[str] = set()

        def make_dirs(target: str) -> None:
            for directory in _ancestors(target):
                if directory not in made:
                    made.add(directory)
                    argv.extend(["--perms", "0755", "--dir", directory])

        for directory in SYSTEM_DIRS:
            if Path(directory).is_symlink():
                argv += ["--symlink", str(Path(directory).readlink()), directory]
            elif Path(directory).is_dir():
                argv += ["--ro-bind", directory, directory]
        make_dirs("/etc/x")
        launch = Launch(argv)
        if layout.idmapped and layout.uid is not None:
            launch.idmap = (layout.workspace, layout.uid)
        for entry in ETC_DIRS:
            argv += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
        for entry in ETC_FILES:
            try:
                fd = os.open(f"/etc/{entry}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            launch.fds.append(fd)
            argv += ["--perms", "0644", "--file", str(fd), f"/etc/{entry}"]
        # Home and /tmp first: a Python installed under /tmp or a home (a CI
        # checkout's venv) is bound afterwards, on top, instead of being hidden.
        make_dirs(SANDBOX_HOME)
        argv += ["--bind", str(layout.workspace), SANDBOX_HOME, "--bind", str(layout.tmp), "/tmp"]
        for bind in self.python.binds:
            make_dirs(bind)
            argv += ["--ro-bind", bind, bind]
        make_dirs(SANDBOX_BIN + "/x")
        for name in ("python", "python3"):
            argv += ["--symlink", self.python.executable, f"{SANDBOX_BIN}/{name}"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm"]
        for target, content in identity_files(inside_uid).items():
            fd = _memfd(Path(target).name, content)
            launch.fds.append(fd)
            argv += ["--perms", "0644", "--file", str(fd), target]
        argv += ["--chdir", "/", "--clearenv"]
        for key, value in sandbox_env(self.python).items():
            argv += ["--setenv", key, value]
        argv.append("--")
        if layout.uid is not None:
            assert self.setpriv is not None
            argv += [self.setpriv, f"--reuid={layout.uid}", f"--regid={layout.uid}", "--clear-groups"]
            argv += ["--inh-caps=-all", "--"]
        argv += list(command)
        return launch

    def shell_command(self, limits: Limits, command: str) -> list[str]:
        """COMMAND run by bash in /home/user under the limits.

        `eval` in the same shell rather than a second `bash -c` saves one exec (~2 ms a call).
        """
        script = f"cd {SANDBOX_HOME} || exit 125; {limits.ulimit_command()} || exit 125; "
        script += '__cmd=$1; set --; eval "$__cmd"'
        return [self.bash, "-c", script, "bash", command]

    def argv_command(self, limits: Limits, argv: Sequence[str]) -> list[str]:
        """ARGV in /home/user under the limits."""
        script = f'cd {SANDBOX_HOME} || exit 125; {limits.ulimit_command()} || exit 125; exec "$@"'
        return [self.bash, "-c", script, "bash", *argv]
