"""Root mode: the user's workspace reaches the sandbox through an id-mapped mount, never a chown.

As root each sandbox runs as an unprivileged host uid U (see bwrap.py). A
directory the appliance made for the run is simply owned by U. A directory the
user named stays exactly as it is: the sandbox sees it through an id-mapped
mount (Linux 5.12+, on ext4, xfs, btrfs, overlayfs, tmpfs 6.3+) that shows
files owned by root as owned by U, and stores what U creates as owned by root,
the user who ran the appliance. Files of other owners show as `nobody` and
stay theirs.

The mount is made detached (`open_tree` + `mount_setattr`, in this process)
and attached over the workspace's path by a tiny helper that first enters a
private mount namespace of its own, then executes bwrap there: the host's
mount table never changes, and the mount ends with the sandbox.
"""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

from appliance.errors import ConfigError

# Linux syscall numbers (one numbering on every architecture for these new calls) and flags.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 0x1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_EMPTY_PATH = 0x1000
_AT_FDCWD = -100
_MOUNT_ATTR_IDMAP = 0x00100000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_REC_PRIVATE = 0x4000 | 0x40000

# Run by the appliance's own Python (-I -S: nothing from the environment or site-packages), as
# HELPER FD WORKSPACE BWRAP-ARGV...: a private mount namespace, the detached mount attached over
# the workspace, then bwrap. A failure reads like bwrap's own ("bwrap: ..."), as the callers expect.
ATTACH_HELPER = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd, target, argv = int(sys.argv[1]), os.fsencode(sys.argv[2]), sys.argv[3:]
def step(result, what):
    if result != 0:
        sys.stderr.write("bwrap: cannot " + what + ": " + os.strerror(ctypes.get_errno()) + "\\n")
        sys.exit(1)
step(libc.unshare({_CLONE_NEWNS}), "create a mount namespace")
step(libc.mount(None, b"/", None, {_MS_REC_PRIVATE}, None), "make the mounts private")
step(libc.syscall({_SYS_MOVE_MOUNT}, fd, b"", {_AT_FDCWD}, target, {_MOVE_MOUNT_F_EMPTY_PATH}), "mount the workspace")
os.close(fd)
os.execv(argv[0], argv)
"""

_libc = ctypes.CDLL(None, use_errno=True)
_userns: dict[int, int] = {}
_userns_lock = threading.Lock()


def _mapping_namespace(uid: int) -> int:
    """A descriptor of a user namespace mapping 0 (inside) to `uid` (outside), made once per uid."""
    with _userns_lock:
        if uid in _userns:
            return _userns[uid]
        script = "import ctypes, sys; print(ctypes.CDLL(None).unshare(%d), flush=True); sys.stdin.read()"
        holder = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", script % _CLONE_NEWUSER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert holder.stdout is not None and holder.stdin is not None
            if holder.stdout.readline().strip() != b"0":
                raise OSError("cannot create a user namespace")
            Path(f"/proc/{holder.pid}/uid_map").write_text(f"0 {uid} 1\n")
            Path(f"/proc/{holder.pid}/gid_map").write_text(f"0 {uid} 1\n")
            fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            if holder.stdin is not None:
                holder.stdin.close()
            holder.wait()
        _userns[uid] = fd
        return fd


def idmapped_tree(workspace: Path, uid: int) -> int:
    """A detached mount of `workspace` where root's files appear as `uid`'s; OSError when unsupported."""
    userns = _mapping_namespace(uid)
    flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_SYMLINK_NOFOLLOW
    fd = int(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(workspace), flags))
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    attr = ctypes.create_string_buffer(struct.pack("QQQQ", _MOUNT_ATTR_IDMAP, 0, 0, userns), 32)
    if _libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, attr, 32) != 0:
        errno = ctypes.get_errno()
        os.close(fd)
        raise OSError(errno, os.strerror(errno))
    return fd


def attach_argv(fd: int, workspace: Path, argv: list[str]) -> list[str]:
    """The command that attaches the detached mount `fd` over `workspace`, then runs `argv` (bwrap)."""
    return [sys.executable, "-I", "-S", "-c", ATTACH_HELPER, str(fd), str(workspace), *argv]


def check_idmap_support(workspace: Path, uid: int) -> None:
    """ConfigError with the fix when this kernel or file system cannot id-map `workspace`."""
    try:
        os.close(idmapped_tree(workspace, uid))
    except OSError as exc:
        raise ConfigError(
            f"as root, the workspace {workspace} cannot be given to the sandbox without changing its owners "
            f"(no id-mapped mounts here: {exc.strerror or exc})",
            "run the appliance as a normal user, or leave out --workspace and pass the files with --attach",
        ) from exc
