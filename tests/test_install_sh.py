"""installer/install.sh: shellcheck, and its dry run on a table of machines built from fake commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "installer" / "install.sh"
REAL_TOOLS = ("bash", "dirname", "tr", "sed", "cut", "id", "cat", "env", "sha256sum", "mkdir", "ln")


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is installed by installer/test.sh"
    proc = subprocess.run([shellcheck, str(SCRIPT), str(REPO_ROOT / "installer" / "test.sh")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout


def fake_machine(tmp: Path, *, os_name: str = "Linux", arch: str = "x86_64", have: tuple[str, ...] = (),
                 python: str | None = None) -> Path:  # fmt: skip
    """A PATH with only the real tools the script needs, `uname` saying os/arch, and `have` as no-op commands."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in REAL_TOOLS:
        real = shutil.which(tool)
        assert real, tool
        (bin_dir / tool).symlink_to(real)
    (bin_dir / "uname").write_text(f'#!/bin/bash\ncase "$1" in -s) echo {os_name};; -m) echo {arch};; esac\n')
    for name in have:
        (bin_dir / name).write_text('#!/bin/bash\necho "$0 $*" >> "$FAKE_LOG"\nexit 0\n')
    if python:
        (bin_dir / "python3").write_text(python)
    for path in bin_dir.iterdir():
        if not path.is_symlink():
            path.chmod(0o755)
    return bin_dir


def dry_run(tmp: Path, bin_dir: Path, *args: str, extra_env: dict[str, str] | None = None,
            python: str | None = sys.executable) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {"PATH": str(bin_dir), "HOME": str(tmp / "home"), "FAKE_LOG": str(tmp / "calls.log")}
    if python:
        env["APPLIANCE_INSTALL_PYTHON"] = python
    env.update(extra_env or {})
    return subprocess.run([str(bin_dir / "bash"), str(SCRIPT), "--dry-run", "--no-run", *args],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip


# (label, os, arch, commands present, extra env, lines expected in the output)
MACHINES = [
    ("debian, bare, no GPU", "Linux", "x86_64", ("apt-get",), {},
     ["apt-get install -y -qq bubblewrap build-essential cmake", "CMAKE_ARGS=-DGGML_NATIVE=OFF",
      "apt-get update -qq"]),
    ("fedora with an NVIDIA GPU", "Linux", "x86_64", ("dnf", "nvidia-smi"), {},
     ["dnf install -y bubblewrap gcc-c++ make cmake", "CMAKE_ARGS=-DGGML_CUDA=on", "\\[gpu\\]"]),
    ("arch, everything present, tuned", "Linux", "x86_64", ("pacman", "bwrap", "cmake", "g++"),
     {"APPLIANCE_TUNE_NATIVE": "1"}, ["CMAKE_ARGS=-DGGML_NATIVE=ON", "accelerator: cpu"]),
    ("apple silicon", "Darwin", "arm64", ("brew", "c++"), {},
     ["brew install cmake", "CMAKE_ARGS=-DGGML_METAL=on", "needs Linux"]),
    ("own CMAKE_ARGS win", "Linux", "aarch64", ("apt-get", "bwrap", "cmake", "g++"),
     {"CMAKE_ARGS": "-DGGML_VULKAN=on"}, ["CMAKE_ARGS=-DGGML_VULKAN=on"]),
]  # fmt: skip


@pytest.mark.parametrize(("label", "os_name", "arch", "have", "env", "expected"), MACHINES,
                         ids=[m[0] for m in MACHINES])  # fmt: skip
def test_dry_run_picks_packages_and_build_flags(
    tmp_path: Path, label: str, os_name: str, arch: str, have: tuple[str, ...], env: dict[str, str],
    expected: list[str],
) -> None:  # fmt: skip
    bin_dir = fake_machine(tmp_path, os_name=os_name, arch=arch, have=have)
    proc = dry_run(tmp_path, bin_dir, "--profile", "cpu-8b", extra_env=env)
    assert proc.returncode == 0, proc.stderr
    for line in expected:
        assert line in proc.stderr, (line, proc.stderr)
    assert "appliance install --profile cpu-8b" in proc.stderr
    assert "dry run: nothing was changed" in proc.stderr
    if "bwrap" in have:
        assert "bubblewrap" not in proc.stderr
    # A dry run only looks: no package manager, compiler or GPU tool was asked to do anything.
    calls = (tmp_path / "calls.log").read_text() if (tmp_path / "calls.log").exists() else ""
    assert "install" not in calls
    assert not (tmp_path / "home").exists()


def test_python_older_than_311_stops_with_the_fix(tmp_path: Path) -> None:
    old = (
        '#!/bin/bash\n[[ "$1" == -V ]] && { echo \'Python 3.9.2\'; exit 0; }\n[[ "$*" == *venv* ]] && exit 0\nexit 1\n'
    )
    bin_dir = fake_machine(tmp_path, have=("apt-get", "bwrap", "cmake", "g++"), python=old)
    proc = dry_run(tmp_path, bin_dir, python=None)
    assert proc.returncode == 1
    assert "Python 3.9.2 is older than 3.11" in proc.stderr
    assert "fix: install Python 3.11+" in proc.stderr


def test_no_package_manager_for_missing_packages_is_an_error(tmp_path: Path) -> None:
    bin_dir = fake_machine(tmp_path, have=("cmake", "g++"))
    proc = dry_run(tmp_path, bin_dir)
    assert proc.returncode == 1
    assert "missing bubblewrap and no known package manager" in proc.stderr
    assert "fix: install bubblewrap" in proc.stderr


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    bin_dir = fake_machine(tmp_path, have=("apt-get",))
    assert dry_run(tmp_path, bin_dir, "--frobnicate").returncode == 2
    assert dry_run(tmp_path, bin_dir, "--gpu", "tpu").returncode == 2


def test_a_directory_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    bin_dir = fake_machine(tmp_path, have=("apt-get", "bwrap"))
    (tmp_path / "nob").mkdir()
    proc = dry_run(tmp_path, bin_dir, "--bundle", str(tmp_path / "nob"))
    assert proc.returncode == 1
    assert "is not an appliance bundle" in proc.stderr


def test_bundle_dry_run_checks_sums_first_and_uses_no_index(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    bin_dir = fake_machine(tmp_path, have=("apt-get", "bwrap"))
    proc = dry_run(tmp_path, bin_dir, "--bundle", str(bundle), "--bundle-digest", "ab" * 32)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert err.index("SHA256SUMS") < err.index("--no-index")
    assert f"--find-links {bundle}/wheels appliance" in err
    assert f"appliance bundle install {bundle} --digest {'ab' * 32}" in err
    assert "would run: apt-get" not in err  # no compiler or cmake needed: the bundle's wheels are built


def test_the_real_script_runs_in_this_checkout_as_a_dry_run(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "APPLIANCE_INSTALL_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--no-run"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"pip install -q {REPO_ROOT}" in proc.stderr
