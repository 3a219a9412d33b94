"""The Python environments the installer owns: SearXNG's and the sandbox's.

Each lives in its own virtual environment under the data directory and is
stamped with what it was built from, so a second `appliance install` finds the
stamp and does nothing. pip runs as a subprocess; in offline mode (a bundle)
it sees only the given wheel directories and no configuration of the machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ComponentUnavailable, ConfigError
from appliance.tools.search.manage import REQUIREMENTS

# SearXNG has no numbered releases; the installer pins a commit of its main branch
# (the one the appliance's tests run against, vendored in shared/vendor/searxng-src).
SEARXNG_COMMIT = "9fea41204fdfa7a5cfa15b0ebd12904c520478ce"
SEARXNG_RELEASE_URL = f"https://github.com/searxng/searxng/archive/{SEARXNG_COMMIT}.tar.gz"
# What the model's code usually reaches for (the reference sandbox had them).
SANDBOX_PACKAGES = ("numpy", "pandas", "matplotlib", "openpyxl", "pypdf")
STAMP = ".appliance-stamp"

Log = Callable[[str], None]


@dataclass(frozen=True)
class PipSource:
    """Where pip may get packages: the configured indexes, or only these wheel directories."""

    wheel_dirs: tuple[Path, ...] = ()

    @property
    def offline(self) -> bool:
        return bool(self.wheel_dirs)

    def args(self) -> list[str]:
        if not self.offline:
            return []
        out = ["--no-index"]
        for directory in self.wheel_dirs:
            out += ["--find-links", str(directory)]
        return out

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        if self.offline:  # a bundle install uses the bundle and nothing the machine's pip is configured with
            for key in [k for k in env if k.startswith("PIP_")]:
                del env[key]
            env["PIP_CONFIG_FILE"] = os.devnull
            env["PIP_NO_INDEX"] = "1"
        return env


def run(cmd: Sequence[str], *, what: str, env: dict[str, str] | None = None, fix: str = "") -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise ComponentUnavailable(what, f"{what}: `{' '.join(cmd[:4])} ...` failed: {tail}", fix or None)


def make_venv(venv: Path, packages: Sequence[str], source: PipSource, *, what: str, log: Log) -> None:
    """Create `venv` (if needed) and pip install `packages` (requirement strings or -r FILE pairs)."""
    python = venv / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", str(venv)], what=what, fix="install the python3-venv package")
    fix = (
        "the bundle lacks a wheel: recreate it with `appliance bundle create`"
        if source.offline
        else "check the network or your pip configuration, then run `appliance install` again"
    )
    log(f"  pip install {' '.join(p for p in packages if not p.startswith('-'))[:100]} ...")
    run([str(python), "-m", "pip", "install", "-q", *source.args(), *packages], what=what, env=source.env(), fix=fix)


def digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def read_stamp(directory: Path) -> str:
    try:
        return (directory / STAMP).read_text().strip()
    except OSError:
        return ""


def write_stamp(directory: Path, value: str) -> None:
    (directory / STAMP).write_text(value + "\n")


# ------------------------------------------------------------------ SearXNG


def tree_digest(root: Path) -> str:
    """Content hash of a source tree (paths and bytes; caches and stamps left out)."""
    parts: list[bytes] = []
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.name == STAMP or not path.is_file():
            continue
        parts.append(str(path.relative_to(root)).encode())
        parts.append(path.read_bytes())
    return digest(parts)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy files with fresh permissions (a vendored read-only tree must stay deletable here)."""
    for path in sorted(src.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def _fetch_source(source: str, work: Path, log: Log) -> Path:
    """A SearXNG source tree from a directory, a .tar.gz, or an http(s) URL of one."""
    if source.startswith(("http://", "https://")):
        import httpx

        archive = work / "searxng.tar.gz"
        log(f"  downloading {source}")
        try:
            with httpx.stream("GET", source, follow_redirects=True, timeout=60) as response:
                response.raise_for_status()
                with archive.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
        except httpx.HTTPError as exc:
            raise ComponentUnavailable(
                "searxng",
                f"cannot download SearXNG from {source}: {exc}",
                "set [search] searxng_src (APPLIANCE_SEARXNG_SRC) to a local source tree or tarball",
            ) from exc
        source = str(archive)
    path = Path(source).expanduser()
    if path.is_dir():
        tree = path
    elif path.is_file() and tarfile.is_tarfile(path):
        out = work / "extracted"
        with tarfile.open(path) as archive_file:
            archive_file.extractall(out, filter="data")  # refuses absolute paths, .., devices and links out
        tops = [p for p in out.iterdir() if p.is_dir()]
        tree = tops[0] if len(tops) == 1 else out
    else:
        raise ConfigError(
            f"SearXNG source {source} is neither a directory nor a tarball",
            "set [search] searxng_src to a SearXNG checkout, a .tar.gz or its URL",
        )
    if not (tree / "searx" / "webapp.py").is_file():
        raise ConfigError(f"{source} holds no SearXNG (no searx/webapp.py)", "point [search] searxng_src at SearXNG")
    return tree


@dataclass(frozen=True)
class SearxngInstall:
    src: Path
    venv: Path
    changed: bool


def searxng_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "searxng" / "src", data_dir / "searxng" / "venv"


def install_searxng(source: str, data_dir: Path, pip: PipSource, log: Log) -> SearxngInstall:
    """Put SearXNG's source under the data dir and its requirements into its own venv (once)."""
    src_dir, venv = searxng_paths(data_dir)
    changed = False
    same_place = Path(source).expanduser().resolve() == src_dir.resolve() if not source.startswith("http") else False
    if not same_place:
        with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
            tree = _fetch_source(source, Path(tmp), log)
            wanted = tree_digest(tree)
            if read_stamp(src_dir) != wanted:
                log(f"  SearXNG source -> {src_dir}")
                staging = Path(tmp) / "staging"
                _copy_tree(tree, staging)
                write_stamp(staging, wanted)
                if src_dir.exists():
                    shutil.rmtree(src_dir)
                src_dir.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(src_dir)
                changed = True
    if not (src_dir / "searx" / "webapp.py").is_file():
        raise ComponentUnavailable("searxng", f"no SearXNG at {src_dir}", "run `appliance install`")
    requirements = [src_dir / name for name in REQUIREMENTS if (src_dir / name).is_file()]
    wanted_env = digest([r.read_bytes() for r in requirements] + [sys.version.encode()])
    if read_stamp(venv) != wanted_env or not (venv / "bin" / "python").exists():
        args: list[str] = []
        for requirement in requirements:
            args += ["-r", str(requirement)]
        make_venv(venv, args, pip, what="searxng", log=log)
        write_stamp(venv, wanted_env)
        changed = True
    return SearxngInstall(src_dir, venv, changed)


# ------------------------------------------------------------------ sandbox


def sandbox_env_dir(data_dir: Path) -> Path:
    return data_dir / "sandbox-env"


def install_sandbox_env(
    data_dir: Path, pip: PipSource, log: Log, packages: Sequence[str] = SANDBOX_PACKAGES
) -> tuple[Path, bool]:
    """The sandbox's Python with the data-science packages; returns (its python, whether anything changed)."""
    venv = sandbox_env_dir(data_dir)
    python = venv / "bin" / "python"
    wanted = digest([" ".join(packages).encode(), sys.version.encode()])
    if read_stamp(venv) == wanted and python.exists():
        return python, False
    make_venv(venv, list(packages), pip, what="sandbox python", log=log)
    write_stamp(venv, wanted)
    return python, True


def check_imports(python: Path, modules: Sequence[str]) -> str:
    """'' when `python` imports every module, else the error."""
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    try:
        proc = subprocess.run([str(python), "-c", code, *modules], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["failed"])[-1]
