"""`appliance install`, `doctor` and `profiles` end to end: a fake hub, the vendored SearXNG, real venvs."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.install.hardware import Gpu, Hardware
from tests.conftest import run_cli
from tests.fakehub import HubFile, HubState, serve_hub
from tests.fakemachine import GIB
from tests.installfixtures import FILE, REPO, SEARXNG_SRC, build_wheelhouse, snapshot, write_tiny_profile


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture
def hub(tiny_gguf: Path) -> Iterator[tuple[str, HubState]]:
    state = HubState([HubFile(REPO, FILE, tiny_gguf.read_bytes())])
    with serve_hub(state) as url:
        yield url, state


def env_for(hub_url: str) -> dict[str, str]:
    return {"HF_ENDPOINT": hub_url, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def test_dry_run_shows_the_plan_and_writes_nothing(appliance_home: Path, hub: tuple[str, HubState]) -> None:
    write_tiny_profile(appliance_home)
    before = snapshot(appliance_home)
    proc = run_cli(["install", "--profile", "tiny", "--dry-run", "--searxng-src", str(SEARXNG_SRC)],
                   env=env_for(hub[0]))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Profile: tiny (named)" in out
    assert f"model {REPO}/{FILE}" in out
    assert "sha256" in out and "file metadata API" in out
    assert "Disk: needs" in out and ": ok" in out
    assert "Memory: weights" in out and "fits" in out
    assert "dry run: nothing was changed" in out
    assert snapshot(appliance_home) == before
    assert not hub[1].gets()  # no weight bytes were fetched


def test_dry_run_without_the_hub_still_plans_from_the_profile(appliance_home: Path, tmp_path: Path) -> None:
    machine = Hardware("Linux", "x86_64", "cpu", 8, 4, ("avx2",), 16 * GIB, 12 * GIB, 200 * GIB, "/")
    (tmp_path / "m.json").write_text(machine.to_json())
    proc = run_cli(["install", "--dry-run", "--hardware", str(tmp_path / "m.json")],
                   env={"HF_ENDPOINT": "http://127.0.0.1:9"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Profile: cpu-8b (auto" in proc.stdout
    assert "cannot reach the hub" in proc.stdout
    # The whole 256K window asked of each cache type; f16 would cut it most, q8_0 is chosen.
    assert "context by KV cache type: f16 57,344, q8_0 107,520, q4_0 204,800 (of 262,144 requested)" in proc.stdout
    assert "chosen: q8_0 (107,520 tokens)" in proc.stdout
    assert "why: f16 would cut the window to 57,344; q4_0 would give 204,800 at a cost in quality" in proc.stdout


def test_a_profile_that_does_not_fit_is_refused_with_the_fix(appliance_home: Path, tmp_path: Path) -> None:
    small = Hardware("Linux", "x86_64", "cpu", 4, 2, (), 8 * GIB, 6 * GIB, 200 * GIB, "/")
    (tmp_path / "m.json").write_text(small.to_json())
    proc = run_cli(["install", "--profile", "gpu-72b", "--hardware", str(tmp_path / "m.json"), "--no-searxng",
                    "--no-sandbox"], env={"HF_ENDPOINT": "http://127.0.0.1:9"})  # fmt: skip
    assert proc.returncode in (2, 3)
    assert "Fix:" in proc.stderr
    assert not (appliance_home / "config.toml").exists()


def test_profiles_lists_every_profile_and_marks_the_choice(appliance_home: Path, tmp_path: Path) -> None:
    box = Hardware("Linux", "x86_64", "cpu", 16, 8, ("avx2",), 64 * GIB, 60 * GIB, 900 * GIB, "/",
                   (Gpu("nvidia", "RTX 4090", 24 * GIB),))  # fmt: skip
    (tmp_path / "m.json").write_text(box.to_json())
    proc = run_cli(["profiles", "--hardware", str(tmp_path / "m.json")])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    chosen = [line for line in lines if line.startswith("*")]
    assert len(chosen) == 1 and "gpu-30b-a3b" in chosen[0]
    for name in ("cpu-8b", "cpu-30b-a3b", "gpu-8b", "gpu-72b", "remote"):
        assert any(name in line for line in lines), name


def test_doctor_on_a_fresh_machine_fails_with_fixes(appliance_home: Path) -> None:
    proc = run_cli(["doctor"], env={"APPLIANCE_SEARXNG_URL": "http://127.0.0.1:9"})
    assert proc.returncode == 3
    out = proc.stdout
    assert "[FAIL] model:" in out and "appliance install" in out
    assert "[FAIL] SearXNG:" in out
    # An empty [sandbox] python is the appliance's own interpreter: at most a warning, never a failure.
    assert "[sandbox] python is empty" in out and "[FAIL] sandbox Python" not in out
    assert "[ok  ] data directory" in out
    assert "[ok  ] sandbox (bwrap)" in out
    assert "[ok  ] llama-cpp-python" in out
    assert "Plan: profile " in out
    assert "context by KV cache type: f16 " in out and "q8_0" in out and "q4_0" in out


def _start_searxng(venv: Path, src: Path, port: int, tmp: Path) -> dict[str, str]:
    reqs = b"".join((src / n).read_bytes() for n in ("requirements.txt", "requirements-server.txt"))
    # start.sh reinstalls unless its marker says the venv has these requirements; ours has them.
    (venv / ".searxng-requirements.sha256").write_text(hashlib.sha256(reqs).hexdigest() + "\n")
    db = tmp / "docs.db"
    subprocess.run(["python3", str(SEARXNG_SRC.parents[1] / "searxng/make_demo_db.py"), str(db)], check=True)
    env = {**os.environ, "SEARXNG_DB": str(db), "SEARXNG_PORT": str(port), "SEARXNG_VENV": str(venv),
           "SEARXNG_SRC": str(src), "SEARXNG_PIDFILE": str(tmp / "sx.pid")}  # fmt: skip
    subprocess.run(["bash", str(SEARXNG_SRC.parents[1] / "searxng/start.sh")], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    return env


@pytest.mark.slow
def test_install_then_doctor_then_install_again_changes_nothing(
    appliance_home: Path, hub: tuple[str, HubState], wheelhouse: Path, tmp_path: Path, tiny_gguf: Path
) -> None:
    write_tiny_profile(appliance_home)
    hub_url, state = hub
    args = ["install", "--profile", "tiny", "--searxng-src", str(SEARXNG_SRC), "--wheels", str(wheelhouse), "-q"]
    first = run_cli(args, env=env_for(hub_url), timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "changed: model" in first.stdout and "installed" in first.stdout

    model = appliance_home / "models" / FILE
    assert model.read_bytes() == tiny_gguf.read_bytes()
    config = tomllib.loads((appliance_home / "config.toml").read_text())
    assert config["profile"] == "tiny"
    sandbox_python = Path(config["sandbox"]["python"])
    assert sandbox_python.is_relative_to(appliance_home)
    probe = "import numpy, pandas, matplotlib, openpyxl, pypdf; print(pandas.DataFrame({'a': [1, 2]}).a.sum())"
    assert subprocess.run([sandbox_python, "-c", probe], capture_output=True, text=True).stdout.strip() == "3"
    venv, src = Path(config["search"]["searxng_venv"]), Path(config["search"]["searxng_src"])
    assert (src / "searx" / "webapp.py").is_file() and src.is_relative_to(appliance_home)

    # The installed SearXNG runs (with the shared start script) and doctor sees every component healthy.
    with socket.socket() as probe:  # a free port, so parallel test runs do not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sx_env = _start_searxng(venv, src, port, tmp_path)
    try:
        doctor = run_cli(["doctor", "--json"], env={"APPLIANCE_SEARXNG_URL": f"http://127.0.0.1:{port}"})
        report = json.loads(doctor.stdout)
        status = {c["component"]: c["status"] for c in report["checks"]}
        assert status == {"model": "ok", "llama-cpp-python": "ok", "memory": "ok", "sandbox (bwrap)": "ok",
                          "SearXNG": "ok", "disk": "ok", "sandbox Python": "ok",
                          "data directory": "ok"}, report  # fmt: skip
        assert doctor.returncode == 0
    finally:
        subprocess.run(["bash", str(SEARXNG_SRC.parents[1] / "searxng/stop.sh")], env=sx_env, capture_output=True)
    (venv / ".searxng-requirements.sha256").unlink()

    before = snapshot(appliance_home)
    requests = len(state.requests)
    second = run_cli(args, env=env_for(hub_url), timeout=900)
    assert second.returncode == 0, second.stderr
    assert "nothing to do: already installed" in second.stdout
    assert snapshot(appliance_home) == before
    assert len(state.requests) == requests  # a verified model needs no hub at all


def big_machine(tmp_path: Path) -> Path:
    machine = Hardware("Linux", "x86_64", "cpu", 16, 8, ("avx2",), 64 * GIB, 60 * GIB, 500 * GIB, "/")
    path = tmp_path / "big.json"
    path.write_text(machine.to_json())
    return path


def test_a_profile_whose_weights_are_not_on_the_hub_fails_with_the_way_out(
    appliance_home: Path, hub: tuple[str, HubState], tmp_path: Path
) -> None:
    base = ["install", "--hardware", str(big_machine(tmp_path)), "--no-searxng", "--no-sandbox", "--profile"]
    missing_repo = run_cli([*base, "cpu-30b-v1.5"], env=env_for(hub[0]))
    assert missing_repo.returncode == 3
    assert "has no repository bartowski/miromind-ai_MiroThinker-v1.5-30B-GGUF" in missing_repo.stderr
    assert "--repo OWNER/NAME --file NAME.gguf" in missing_repo.stderr
    # A repository that exists but lacks the file: the files it has are listed.
    missing_file = run_cli([*base, "cpu-30b-1.7-mini", "--repo", REPO, "--file", "nope.gguf"], env=env_for(hub[0]))
    assert missing_file.returncode == 3
    assert f"{REPO} has no file nope.gguf; its GGUF files: {FILE}" in missing_file.stderr
    half = run_cli([*base, "cpu-30b-1.7-mini", "--repo", REPO], env=env_for(hub[0]))
    assert half.returncode == 2 and "--repo and --file go together" in half.stderr
    assert not (appliance_home / "config.toml").exists() and not hub[1].gets()


def test_an_explicit_repository_and_file_are_installed_and_kept(
    appliance_home: Path, hub: tuple[str, HubState], tmp_path: Path
) -> None:
    args = ["install", "--hardware", str(big_machine(tmp_path)), "--no-searxng", "--no-sandbox",
            "--profile", "cpu-30b-1.7-mini", "--repo", REPO, "--file", FILE]  # fmt: skip
    proc = run_cli(args, env=env_for(hub[0]))
    assert proc.returncode == 0, proc.stderr
    assert f"model {REPO}/{FILE}" in proc.stdout
    config = tomllib.loads((appliance_home / "config.toml").read_text())
    assert config["profile"] == "cpu-30b-1.7-mini"
    assert (config["model"]["repo"], config["model"]["file"]) == (REPO, FILE)
    assert (appliance_home / "models" / FILE).is_file()
    # The profile's version still decides the run: 1.7 runs 200 turns without failure summaries.
    from appliance.config import load_settings

    settings = load_settings(environ={"APPLIANCE_HOME": str(appliance_home)})
    assert settings.model_path() == appliance_home / "models" / FILE
    assert (settings.agent.max_turns, settings.agent.retry_with_summary) == (200, False)
    again = run_cli(args, env=env_for(hub[0]))
    assert again.returncode == 0 and "nothing to do: already installed" in again.stdout


def _picked(args: list[str], env: dict[str, str] | None = None) -> str:
    """The profile a command says it uses: doctor's plan, install's plan, the line profiles marks with *."""
    proc = run_cli(args, env={"HF_ENDPOINT": "http://127.0.0.1:9", "APPLIANCE_SEARXNG_URL": "", **(env or {})})
    assert proc.returncode in (0, 3), proc.stderr
    for line in proc.stdout.splitlines():
        for marker in ("Plan: profile ", "Profile: ", "* "):
            if line.startswith(marker):
                return line.removeprefix(marker).split()[0].rstrip(":")
    raise AssertionError(proc.stdout)


@pytest.mark.parametrize("how", ["nothing configured", "config file", "environment", "flag"])
def test_doctor_install_and_profiles_agree_on_the_profile(appliance_home: Path, how: str) -> None:
    env, flag = {}, []
    if how == "config file":
        (appliance_home / "config.toml").write_text('profile = "gpu-8b"\n', encoding="utf-8")
    elif how == "environment":
        env = {"APPLIANCE_PROFILE": "cpu-30b-a3b"}
    elif how == "flag":
        flag = ["--profile", "remote"]
    picks = {
        "doctor": _picked([*flag, "doctor"], env),
        "install": _picked([*flag, "install", "--dry-run", "--no-searxng", "--no-sandbox"], env),
        "profiles": _picked([*flag, "profiles"], env),
    }
    assert len(set(picks.values())) == 1, picks
    expected = {"config file": "gpu-8b", "environment": "cpu-30b-a3b", "flag": "remote"}.get(how)
    if expected:
        assert picks["doctor"] == expected
