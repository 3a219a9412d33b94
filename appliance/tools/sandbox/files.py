"""Moving files across the sandbox's boundary without being tricked by what the sandbox wrote.

The workspace belongs to the sandbox: anything in it may be a symbolic link to
a host file (a link to /etc/shadow means the host's /etc/shadow to a process
on the host), a FIFO that blocks a reader, or a directory where a file was
expected, and it may change while the host works. So the host never resolves
a workspace path by name: it walks it one component at a time from a
descriptor of the workspace with O_NOFOLLOW, creates what is missing itself,
and checks that what it opened is a regular file. Uploads come only from the
paths the user attached to the run; downloads go only into the run's output
directory.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from appliance.tools.sandbox.bwrap import SANDBOX_HOME

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_UPLOAD_FILES = 10_000


class PathRefused(Exception):
    """A path the tools will not touch; the message is for the model."""


def sandbox_parts(path: str) -> tuple[str, ...]:
    """/home/user/a/b (or a/b, or ~/a/b) -> ("a", "b"); anything outside /home/user is refused."""
    if "\x00" in path:
        raise PathRefused(f"the path {path!r} contains a NUL character")
    text = path.strip() or SANDBOX_HOME
    if text == "~" or text.startswith("~/"):
        text = SANDBOX_HOME + text[1:]
    if not text.startswith("/"):
        text = f"{SANDBOX_HOME}/{text}"
    normal = posixpath.normpath(text)
    if normal != SANDBOX_HOME and not normal.startswith(SANDBOX_HOME + "/"):
        raise PathRefused(
            f"{path} is outside {SANDBOX_HOME}: the file tools only reach {SANDBOX_HOME} (/tmp and the rest "
            f"of the sandbox are private to its processes); use a path under {SANDBOX_HOME}"
        )
    return tuple(part for part in normal[len(SANDBOX_HOME) :].split("/") if part)


def sandbox_path(parts: Sequence[str]) -> str:
    return posixpath.join(SANDBOX_HOME, *parts)


def _is_link(parent_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _refusal(parts: Sequence[str], exc: OSError, parent_fd: int | None = None) -> PathRefused:
    where = sandbox_path(parts)
    if parent_fd is not None and parts and _is_link(parent_fd, parts[-1]):
        return PathRefused(f"{where} is a symbolic link; the file tools do not follow links")
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return PathRefused(f"{where} is a symbolic link; the file tools do not follow links")
    if exc.errno == errno.ENOTDIR:
        return PathRefused(f"{where} is not a directory")
    if exc.errno == errno.ENOENT:
        return PathRefused(f"{where} does not exist")
    if exc.errno == errno.EISDIR:
        return PathRefused(f"{where} is a directory, not a file")
    if exc.errno == errno.ENXIO:
        return PathRefused(f"{where} is not a regular file")
    return PathRefused(f"{where}: {exc.strerror}")


@contextmanager
def open_dir(root: Path, parts: Sequence[str], *, create: bool = False, uid: int | None = None) -> Iterator[int]:
    """A descriptor of root/parts, walked without following links (created on the way if asked)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for depth, part in enumerate(parts):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise _refusal(parts[: depth + 1], FileNotFoundError(errno.ENOENT, "missing")) from None
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if uid is not None:
                        os.chown(part, uid, uid, dir_fd=fd, follow_symlinks=False)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _refusal(parts[: depth + 1], exc, fd) from None
            except OSError as exc:
                raise _refusal(parts[: depth + 1], exc, fd) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def is_dir(root: Path, parts: Sequence[str]) -> bool:
    try:
        with open_dir(root, parts):
            return True
    except PathRefused:
        return False


def write_file(root: Path, parts: Sequence[str], source: BinaryIO, *, uid: int | None = None) -> int:
    """Copy `source` to root/parts (replacing a regular file, never following a link); bytes written."""
    if not parts:
        raise PathRefused(f"{SANDBOX_HOME} is a directory, not a file")
    with open_dir(root, parts[:-1], create=True, uid=uid) as parent:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(parts[-1], flags, 0o644, dir_fd=parent)
        except OSError as exc:
            raise _refusal(parts, exc, parent) from None
        with os.fdopen(fd, "wb") as target:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PathRefused(f"{sandbox_path(parts)} exists and is not a regular file")
            os.set_blocking(fd, True)
            os.ftruncate(fd, 0)
            if uid is not None:
                os.fchown(fd, uid, uid)
            written = 0
            while chunk := source.read(1 << 20):
                target.write(chunk)
                written += len(chunk)
            return written


@contextmanager
def read_file(root: Path, parts: Sequence[str]) -> Iterator[BinaryIO]:
    """root/parts opened for reading, only if it is a regular file reached without links."""
    if not parts:
        raise PathRefused(f"{SANDBOX_HOME} is a directory, not a file")
    with open_dir(root, parts[:-1]) as parent:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        except OSError as exc:
            raise _refusal(parts, exc, parent) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise PathRefused(f"{sandbox_path(parts)} is {kind}, not a file")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as handle:
        yield handle


# ------------------------------------------------------------------ the host side


def attached_source(local: str, attachments: Sequence[Path]) -> Path:
    """The host path `local` names, if it is an attachment or inside an attached directory (links resolved)."""
    if "\x00" in local:
        raise PathRefused("the local path contains a NUL character")
    if not attachments:
        raise PathRefused(
            "no local files were attached to this task, so there is nothing to upload "
            "(the user attaches files with --attach)"
        )
    candidate = Path(local).expanduser()
    if not candidate.is_absolute():
        by_name = [a for a in attachments if a.name == local]
        inside = [a / local for a in attachments if a.is_dir() and (a / local).exists()]
        candidate = (by_name or inside or [Path.cwd() / candidate])[0]
    real = Path(os.path.realpath(candidate))
    for attached in attachments:
        root = Path(os.path.realpath(attached))
        if real == root or real.is_relative_to(root):
            if not real.exists():
                raise PathRefused(f"Local file does not exist: {local}")
            return real
    names = ", ".join(str(a) for a in attachments)
    raise PathRefused(
        f"{local} is not one of the files attached to this task (after resolving links and '..'); "
        f"only these can be uploaded: {names}"
    )


def walk_upload(source: Path) -> Iterator[tuple[tuple[str, ...], Path]]:
    """Regular files under an attached directory, relative parts first; links are skipped."""
    count = 0
    for directory, dirnames, filenames in os.walk(source, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not Path(directory, d).is_symlink())
        relative = Path(directory).relative_to(source).parts
        for name in sorted(filenames):
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file():
                continue
            count += 1
            if count > MAX_UPLOAD_FILES:
                raise PathRefused(f"{source} holds more than {MAX_UPLOAD_FILES:,} files; upload a subdirectory")
            yield (*relative, name), path


def output_name(requested: str | None, default: str) -> str:
    """A plain file name for the run's output directory (no directories, no '..')."""
    name = (requested or "").strip() or default
    if "\x00" in name or "/" in name or "\\" in name or name in (".", "..") or name.startswith(".."):
        raise PathRefused(f"local_filename must be a plain file name, not {requested!r}")
    return name


def create_output(directory: Path, name: str) -> tuple[Path, BinaryIO]:
    """A new file in the output directory; an existing name gets a -2, -3 ... suffix."""
    directory.mkdir(parents=True, exist_ok=True)
    stem, dot, suffix = name.partition(".") if not name.startswith(".") else (name, "", "")
    for attempt in range(1, 1000):
        candidate = name if attempt == 1 else f"{stem}-{attempt}{dot}{suffix}"
        path = directory / candidate
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            continue
        return path, os.fdopen(fd, "wb")
    raise PathRefused(f"too many files named {name} in {directory}")
