"""This machine: is bwrap there, may it create namespaces, which Python and uid a sandbox gets.

Cheap checks (`preflight`) read files only, so a tool server can run them when
it is built; `resolve_host` finds everything a launch needs; bwrap's own
failures are turned into one-line errors with the fix (`explain_failure`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from appliance.config import SandboxSettings
from appliance.errors import ComponentUnavailable, ConfigError
from appliance.tools.sandbox.bwrap import SANDBOX_UID_BASE, SANDBOX_UID_SPAN, SYSTEM_DIRS, Host, PythonInstall

INSTALL_FIX = (
    "install bubblewrap: apt-get install bubblewrap (Debian/Ubuntu), dnf install bubblewrap (Fedora), "
    "pacman -S bubblewrap (Arch), or set [sandbox] bwrap to its path"
)


# ------------------------------------------------------------------ the host


def _read_proc(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def is_real_root() -> bool:
    """uid 0 of the initial user namespace (not root inside a rootless container)."""
    if os.geteuid() != 0:
        return False
    uid_map = (_read_proc("/proc/self/uid_map") or "").split()
    return uid_map[:3] == ["0", "0", "4294967295"]


def userns_fix() -> str:
    """The exact command that enables unprivileged user namespaces on this kernel."""
    if _read_proc("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return (
            "enable unprivileged user namespaces: sudo sysctl -w kernel.unprivileged_userns_clone=1 "
            "(and add kernel.unprivileged_userns_clone=1 to /etc/sysctl.d/99-userns.conf to keep it)"
        )
    if _read_proc("/proc/sys/user/max_user_namespaces") == "0":
        return (
            "enable user namespaces: sudo sysctl -w user.max_user_namespaces=15000 "
            "(and add user.max_user_namespaces=15000 to /etc/sysctl.d/99-userns.conf to keep it)"
        )
    if _read_proc("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            "allow bwrap to create user namespaces: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, "
            "or install an AppArmor profile for bwrap with the `userns,` rule (see docs/sandbox.md)"
        )
    return (
        "enable unprivileged user namespaces for bwrap (see docs/sandbox.md, troubleshooting); in a container, "
        "start it with --security-opt seccomp=unconfined --security-opt apparmor=unconfined"
    )


def static_userns_problem() -> str | None:
    """A user-namespace setting that makes bwrap fail for this user, found without starting a process."""
    if is_real_root():
        return None  # root creates the namespaces itself
    if _read_proc("/sys/module/user_namespace/parameters/enable") == "N":
        return "the kernel has user namespaces disabled (user_namespace.enable=N)"
    if _read_proc("/proc/sys/user/max_user_namespaces") == "0":
        return "user namespaces are disabled (user.max_user_namespaces = 0)"
    if os.geteuid() != 0 and _read_proc("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)"
    return None


def find_bwrap(sandbox: SandboxSettings) -> str:
    """The bwrap binary, or ComponentUnavailable with the install command."""
    configured = sandbox.bwrap or "bwrap"
    found = shutil.which(configured)
    if found is None:
        where = f"at {configured}" if os.sep in configured else "on PATH"
        raise ComponentUnavailable("sandbox", f"bubblewrap (bwrap) is not installed {where}", INSTALL_FIX)
    return found


def preflight(sandbox: SandboxSettings) -> str:
    """Cheap checks (no process started): bwrap is there and user namespaces are not switched off."""
    bwrap = find_bwrap(sandbox)
    problem = static_userns_problem()
    if problem:
        raise ComponentUnavailable("sandbox", f"the sandbox cannot start: {problem}", userns_fix())
    return bwrap


def sandbox_uid(workspace: Path) -> int | None:
    """The host uid a sandbox's processes run as when the appliance is real root; None otherwise."""
    if not is_real_root():
        return None
    return SANDBOX_UID_BASE + zlib.crc32(str(workspace).encode()) % SANDBOX_UID_SPAN


_PYTHON_PROBE = (
    "import json, sys; print(json.dumps([sys.version.split()[0], sys.prefix, sys.base_prefix, "
    "sys.exec_prefix, sys.base_exec_prefix]))"
)


def _covered(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def system_roots() -> list[str]:
    """Real paths of the system directories every sandbox gets."""
    return sorted({os.path.realpath(d) for d in SYSTEM_DIRS if Path(d).is_dir()})


def check_bind_source(path: str, protected: Sequence[Path], what: str) -> None:
    """Refuse to expose a directory that is, or contains, the root, a home or the appliance's data."""
    real = os.path.realpath(path)
    if real == "/":
        raise ConfigError(f"{what} is the root directory", "choose a dedicated directory")
    for guarded in protected:
        guarded_real = os.path.realpath(guarded)
        if guarded_real == real or guarded_real.startswith(real.rstrip("/") + "/"):
            raise ConfigError(
                f"{what} {path} would expose {guarded} to the sandbox",
                "use a dedicated directory that holds no home, configuration or appliance data",
            )


@functools.lru_cache(maxsize=8)
def _probe_python(executable: str, mtime: float) -> tuple[str, str, str, str, str]:
    try:
        done = subprocess.run(
            [executable, "-I", "-c", _PYTHON_PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            check=False,
        )
        values = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise ComponentUnavailable(
            "sandbox",
            f"the sandbox's Python {executable} does not run ({exc})",
            "set [sandbox] python to a working interpreter (the one `appliance install` created) or leave it empty",
        ) from exc
    if not isinstance(values, list) or len(values) != 5:
        raise ComponentUnavailable("sandbox", f"the sandbox's Python {executable} answered {done.stdout[:200]!r}")
    return (str(values[0]), str(values[1]), str(values[2]), str(values[3]), str(values[4]))


def discover_python(executable: str, protected: Sequence[Path]) -> PythonInstall:
    path = Path(executable).expanduser()
    if not path.is_absolute():
        found = shutil.which(executable)
        path = Path(found) if found else path
    if not os.access(path, os.X_OK) or path.is_dir():
        raise ComponentUnavailable(
            "sandbox",
            f"the sandbox's Python {executable} does not exist or is not executable",
            "set [sandbox] python to an interpreter (the one `appliance install` created) or leave it empty",
        )
    version, *prefixes = _probe_python(str(path), path.stat().st_mtime)
    real_exe = os.path.realpath(path)
    candidates = [*prefixes, str(Path(real_exe).parent.parent), str(path.parent)]
    roots = system_roots()
    binds: list[str] = []
    for candidate in sorted({os.path.normpath(c) for c in candidates if c}, key=len):
        real = os.path.realpath(candidate)
        if not Path(real).is_dir() or _covered(real, roots) or _covered(candidate, binds):
            continue
        check_bind_source(candidate, protected, "the sandbox's Python installation")
        binds.append(candidate)
    return PythonInstall(str(path), version, tuple(binds))


def resolve_host(sandbox: SandboxSettings, protected: Sequence[Path], python_default: str) -> Host:
    """Find bwrap, bash, setpriv (root) and the sandbox's Python; ComponentUnavailable with a fix if missing."""
    bwrap = preflight(sandbox)
    roots = system_roots()
    bash = "/bin/bash" if Path("/bin/bash").exists() else shutil.which("bash")
    if bash is None or not _covered(os.path.realpath(bash), roots):
        raise ComponentUnavailable("sandbox", "bash is not installed in /usr or /bin", "apt-get install bash")
    setpriv = None
    if is_real_root():
        setpriv = shutil.which("setpriv")
        if setpriv is None or not _covered(os.path.realpath(setpriv), roots):
            raise ComponentUnavailable(
                "sandbox",
                "setpriv (util-linux) is needed to run sandboxes as an unprivileged uid when running as root",
                "apt-get install util-linux (Debian/Ubuntu) or dnf install util-linux-core (Fedora)",
            )
    python = discover_python(sandbox.python or python_default, protected)
    return Host(bwrap, bash, setpriv, python)


def explain_failure(stderr: str) -> ComponentUnavailable:
    """bwrap could not build a sandbox: the reason in its words, and the fix for this machine."""
    said = " ".join(stderr.strip().splitlines()[-3:]) or "no message"
    message = f"bwrap cannot create the sandbox ({said})"
    userns_signs = ("No permissions to creating new namespace", "setting up uid map", "user namespace")
    if not is_real_root() and (any(sign in stderr for sign in userns_signs) or "namespace" in stderr):
        return ComponentUnavailable("sandbox", message, userns_fix())
    if is_real_root() and ("Operation not permitted" in stderr or "namespace" in stderr):
        return ComponentUnavailable(
            "sandbox",
            message,
            "run the appliance as a normal user, or give its container what bwrap needs: "
            "--cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined",
        )
    return ComponentUnavailable("sandbox", message, "see docs/sandbox.md (troubleshooting)")
