"""Fixtures shared by every test module: an isolated home, the tiny GGUF, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _shared_dir() -> Path:
    """The project's shared kit (vendored SearXNG, design docs): beside the checkout, as in CI."""
    if os.environ.get("APPLIANCE_SHARED_DIR"):
        return Path(os.environ["APPLIANCE_SHARED_DIR"]).resolve()
    for candidate in (REPO_ROOT.parent / "shared", REPO_ROOT.parent.parent / "shared", Path("/work/shared")):
        if (candidate / "searxng" / "start.sh").is_file():
            return candidate.resolve()
    return (REPO_ROOT.parent / "shared").resolve()


SHARED_DIR = _shared_dir()


@pytest.fixture
def appliance_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private APPLIANCE_HOME: config, history, models and runs land here."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    for name in list(os.environ):
        if name.startswith("APPLIANCE_") and name not in ("APPLIANCE_HOME", "APPLIANCE_SHARED_DIR"):
            monkeypatch.delenv(name)
    return home


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight llama GGUF with a ChatML template, written once per session."""
    from tests.tinygguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf")


def write_replay(path: Path, turns: Sequence[str]) -> Path:
    path.write_text("".join(json.dumps({"content": t}) + "\n" for t in turns), encoding="utf-8")
    return path


def tool_call(server: str, tool: str, arguments: dict[str, object], thinking: str = "") -> str:
    """An assistant turn in MiroThinker's format."""
    think = f"<think>\n{thinking or 'I will use a tool.'}\n</think>\n\n"
    return (
        f"{think}<use_mcp_tool>\n<server_name>{server}</server_name>\n<tool_name>{tool}</tool_name>\n"
        f"<arguments>\n{json.dumps(arguments, ensure_ascii=False)}\n</arguments>\n</use_mcp_tool>"
    )


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_") or k == "APPLIANCE_HOME"}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m appliance ARGS` from this checkout in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        cwd=REPO_ROOT,
        input=input,
    )


@pytest.fixture
def cli(appliance_home: Path) -> Iterator[object]:
    yield run_cli
