"""Which host directory may be a sandbox's workspace: one rule for every entry point.

A workspace the user names (`--workspace DIR` for a run, the TUI, `resume`,
`appliance sandbox exec` and `appliance mcp serve`) is mounted read-write at
/home/user, so the model can change everything in it. `workspace_refusal` is
the rule, a pure function of path strings; `check_workspace` applies it to a
real path before anything starts (exit 2 with the fix) and never creates,
chowns or chmods the directory.

Refused: the root, system directories and everything under them (/etc, /usr,
/var, /opt, /root, ...), the shared temporary directories themselves, /home
and every account's home (a subfolder of your own home is fine), anything in
another account's home, and anything that is, holds or lies inside the
appliance's own data, configuration or cache, or its code (the package, the
Python environment it runs in, the sandbox's Python): a sandbox that could
rewrite those would run its code on the host the next time the appliance
starts.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.tools.sandbox.host import sandbox_uid
from appliance.tools.sandbox.idmap import check_idmap_support

# Refused with everything beneath them: the system, the kernel's views, root's home.
SYSTEM_DIRS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found", "/opt", "/proc",
    "/root", "/run", "/sbin", "/snap", "/sys", "/usr", "/var",
)  # fmt: skip
# Refused themselves (they hold everyone's files) but fine below: /tmp/mine, /srv/data, /home/me/project.
SHARED_DIRS = ("/", "/home", "/media", "/mnt", "/srv", "/tmp")
# Temporary directories under a refused system directory that a workspace may still live in.
TEMPORARY_DIRS = ("/var/tmp",)
# Tests only: more directories refused like system ones (os.pathsep-separated), to stand in for /etc.
EXTRA_PROTECTED_ENV = "APPLIANCE_TEST_PROTECTED_DIRS"
FIX = "use a directory of its own for the sandbox's files (mkdir ~/agent-work, then --workspace ~/agent-work)"


@dataclass(frozen=True)
class Guarded:
    """The directories a workspace is checked against (absolute, links resolved)."""

    system: tuple[str, ...] = SYSTEM_DIRS
    homes: tuple[str, ...] = ()  # every account's home
    own_home: str = ""
    appliance: tuple[str, ...] = ()  # the appliance's data, configuration, cache and code


def _inside(path: str, root: str) -> bool:
    """path is root or lies beneath it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def workspace_refusal(path: str, guarded: Guarded) -> str | None:
    """Why `path` (absolute, links resolved) may not be a workspace, or None when it may."""
    path = os.path.normpath(path)
    if path == "/":
        return "is the root directory"
    if path in SHARED_DIRS or path in TEMPORARY_DIRS:
        return "is shared by every user of this machine"
    temporary = any(_inside(path, tmp) for tmp in TEMPORARY_DIRS)
    for root in guarded.system:
        if _inside(path, root) and not temporary:
            return f"is a system directory ({root})"
    for home in guarded.homes:
        if home == "/":
            continue
        if _inside(home, path):
            return f"is or holds a home directory ({home})"
        if _inside(path, home) and home != guarded.own_home:
            return f"is in another user's home ({home})"
    for root in guarded.appliance:
        if _inside(path, root) or _inside(root, path):
            return f"would expose the appliance's own data or code ({root})"
    return None


def _real(paths: list[str]) -> tuple[str, ...]:
    found: list[str] = []
    for path in paths:
        for variant in (os.path.normpath(path), os.path.realpath(path)):
            if variant not in found:
                found.append(variant)
    return tuple(found)


def guarded_dirs(settings: Settings) -> Guarded:
    """The guarded directories of this machine and this appliance."""
    extra = [p for p in os.environ.get(EXTRA_PROTECTED_ENV, "").split(os.pathsep) if p]
    homes = [entry.pw_dir for entry in pwd.getpwall() if entry.pw_dir and entry.pw_dir != "/"]
    own = str(Path.home())
    dirs = settings.dirs
    code = [str(Path(__file__).resolve().parents[2]), sys.prefix]  # the package, the environment it runs in
    if settings.sandbox.python:
        code.append(str(Path(settings.sandbox.python).expanduser().resolve().parent.parent))
    return Guarded(
        system=_real([*SYSTEM_DIRS, *extra]),
        homes=_real([*homes, own]),
        own_home=os.path.realpath(own),
        appliance=_real([str(dirs.data_dir), str(dirs.config_dir), str(dirs.cache_dir), *code]),
    )


def check_workspace(path: Path, settings: Settings) -> Path:
    """A workspace the user named, resolved; ConfigError (exit 2) when it is missing or refused.

    Nothing is created: a directory that does not exist is a mistake to report,
    not a path to make with its parents. As root, the file system must allow
    an id-mapped mount of it (see idmap.py), checked here, before any run.
    """
    real = Path(os.path.realpath(path.expanduser()))
    if not real.exists():
        raise ConfigError(
            f"the workspace {path} does not exist", f"create it first (mkdir -p {path}), or leave out --workspace"
        )
    if not real.is_dir():
        raise ConfigError(f"the workspace {path} is not a directory", "pass a directory to --workspace")
    reason = workspace_refusal(str(real), guarded_dirs(settings))
    if reason is not None:
        shown = f"{path} ({real})" if str(real) != str(path) else str(path)
        raise ConfigError(f"the workspace {shown} {reason}", FIX)
    uid = sandbox_uid(real)
    if uid is not None:
        check_idmap_support(real, uid)
    return real
