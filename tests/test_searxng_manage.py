"""`appliance searxng install|start|status|stop` with the vendored SearXNG source."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.tools.search import manage
from tests.conftest import run_cli
from tests.searxng_fixture import SEARXNG_SRC, SEARXNG_VENV, SearxngInstance, free_port, make_docs_db, searxng  # noqa: F401


@pytest.fixture
def managed_env(searxng: SearxngInstance, tmp_path: Path) -> Iterator[dict[str, str]]:  # noqa: F811
    """Settings for a managed instance; the session fixture has built the shared venv it reuses."""
    env = {
        "APPLIANCE_HOME": str(tmp_path / "home"),
        "APPLIANCE_SEARXNG_URL": f"http://127.0.0.1:{free_port()}",
        "APPLIANCE_SEARXNG_SRC": str(SEARXNG_SRC),
        "APPLIANCE_SEARXNG_VENV": str(SEARXNG_VENV),
        "APPLIANCE_SEARXNG_ENGINES": '["localdocs"]',
        "APPLIANCE_SEARXNG_DOCS_DB": str(make_docs_db(tmp_path / "docs.db")),
    }
    yield env
    run_cli(["searxng", "stop"], env=env)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_start_status_search_stop(managed_env: dict[str, str], tmp_path: Path) -> None:
    url = managed_env["APPLIANCE_SEARXNG_URL"]
    before = run_cli(["searxng", "status"], env=managed_env)
    assert (
        before.returncode == 3 and "connection refused" in before.stdout and "appliance searxng start" in before.stdout
    )

    started = run_cli(["searxng", "start"], env=managed_env, timeout=120)
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"\(pid (\d+)\)", started.stdout).group(1))  # type: ignore[union-attr]
    assert alive(pid)

    settings_file = tmp_path / "home" / "searxng" / "settings.yml"
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600  # it holds the secret key
    config = json.loads(settings_file.read_text())
    assert config["server"]["bind_address"] == "127.0.0.1"
    assert re.fullmatch(r"[0-9a-f]{64}", config["server"]["secret_key"])
    assert "json" in config["search"]["formats"] and config["server"]["limiter"] is False
    assert config["use_default_settings"] == {"engines": {"keep_only": ["localdocs"]}}

    status = run_cli(["searxng", "status", "--json"], env=managed_env)
    assert status.returncode == 0
    assert json.loads(status.stdout) | {"detail": ""} == {
        "url": url,
        "pid": pid,
        "reachable": True,
        "json": True,
        "healthy": True,
        "detail": "",
    }
    found = run_cli(["search", "tea", "--json"], env=managed_env)
    assert len(json.loads(found.stdout)["organic"]) == 3

    twice = run_cli(["searxng", "start"], env=managed_env)
    assert twice.returncode == 2 and "already running" in twice.stderr

    stopped = run_cli(["searxng", "stop"], env=managed_env)
    assert stopped.returncode == 0 and f"stopped SearXNG (pid {pid})" in stopped.stdout
    assert not alive(pid)
    assert run_cli(["searxng", "status"], env=managed_env).returncode == 3
    assert "was not running" in run_cli(["searxng", "stop"], env=managed_env).stdout

    restarted = run_cli(["searxng", "start"], env=managed_env, timeout=120)
    assert restarted.returncode == 0
    assert json.loads(settings_file.read_text())["server"]["secret_key"] != config["server"]["secret_key"]


def test_stop_leaves_a_foreign_pid_alone(managed_env: dict[str, str], tmp_path: Path) -> None:
    pidfile = tmp_path / "home" / "searxng" / "searxng.pid"
    pidfile.parent.mkdir(parents=True)
    pidfile.write_text(str(os.getpid()))  # the test runner itself: not a SearXNG
    done = run_cli(["searxng", "stop"], env=managed_env)
    assert done.returncode == 0 and "was not running" in done.stdout
    assert alive(os.getpid())


def test_start_errors_name_the_fix(tmp_path: Path) -> None:
    home = {"APPLIANCE_HOME": str(tmp_path / "home"), "APPLIANCE_SEARXNG_URL": "http://127.0.0.1:9"}
    no_source = run_cli(["searxng", "start"], env=home)
    assert no_source.returncode == 3 and "set [search] searxng_src" in no_source.stderr
    remote = run_cli(["searxng", "start"], env={**home, "APPLIANCE_SEARXNG_URL": "https://search.example.org"})
    assert remote.returncode == 2 and "runs a SearXNG on this machine" in remote.stderr
    no_venv = run_cli(
        ["searxng", "start"],
        env={**home, "APPLIANCE_SEARXNG_SRC": str(SEARXNG_SRC), "APPLIANCE_SEARXNG_VENV": str(tmp_path / "none")},
    )
    assert no_venv.returncode == 3 and "appliance searxng install" in no_venv.stderr


def test_settings_keep_default_engines_unless_told(tmp_path: Path) -> None:
    settings = load_settings(environ={"APPLIANCE_HOME": str(tmp_path)})
    config = manage.searxng_config(settings, 8888, "k")
    assert config["use_default_settings"] is True and "engines" not in config
    assert set(config["plugins"]) == {  # type: ignore[arg-type]
        f"searx.plugins.{name}.SXNGPlugin" for name in ("calculator", "hash_plugin", "self_info", "unit_converter")
    }


@pytest.mark.slow
def test_install_builds_a_working_environment(searxng: SearxngInstance, tmp_path: Path) -> None:  # noqa: F811
    env = {
        "APPLIANCE_HOME": str(tmp_path / "home"),
        "APPLIANCE_SEARXNG_URL": f"http://127.0.0.1:{free_port()}",
        "APPLIANCE_SEARXNG_SRC": str(SEARXNG_SRC),
        "APPLIANCE_SEARXNG_ENGINES": '["localdocs"]',
        "APPLIANCE_SEARXNG_DOCS_DB": str(searxng.db),
    }
    installed = run_cli(["searxng", "install"], env=env, timeout=600)
    assert installed.returncode == 0, installed.stderr
    venv = tmp_path / "home" / "searxng" / "venv"
    assert (venv / ".appliance-requirements.sha256").is_file()
    try:
        assert run_cli(["searxng", "start"], env=env, timeout=120).returncode == 0
        assert json.loads(run_cli(["searxng", "status", "--json"], env=env).stdout)["healthy"] is True
    finally:
        run_cli(["searxng", "stop"], env=env)
