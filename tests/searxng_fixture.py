"""A real SearXNG for tests: the vendored source started by ../shared/searxng/start.sh.

It runs offline with SearXNG's own sqlite engine ("localdocs") over a database
the fixture writes: the shared demo rows plus rows for paging and a banned URL.
The venv lives in ~/.cache/searxng-venv (SEARXNG_VENV) and is reused between
runs; the first run builds it (about 10-20 s). Import the fixtures into a test
module with `from tests.searxng_fixture import searxng, searxng_factory`.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SHARED_DIR

SEARXNG_SCRIPTS = SHARED_DIR / "searxng"
SEARXNG_SRC = SHARED_DIR / "vendor" / "searxng-src"
SEARXNG_VENV = Path(
    os.environ.get("SEARXNG_VENV") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "searxng-venv"
)

# 25 rows that all match "release notes": three SearXNG pages of 10, 10 and 5.
PAGING_ROWS = [
    (
        f"Zephyr release notes {n}",
        f"https://localdocs.example/zephyr/releases/{n}",
        f"What changed in Zephyr {n}: faster builds, fixed caching bugs and clearer errors.",
    )
    for n in range(1, 26)
]
BANNED_ROW = (
    "Tea tasting dataset",
    "https://huggingface.co/datasets/example/tea-tasting",
    "A dataset of tea tasting notes, which the reference never shows the model.",
)
UNICODE_ROW = (
    "Thé vert japonais",
    "https://localdocs.example/th%C3%A9/vert%20japonais?x=%2F",
    "Le thé vert sencha se prépare à 70 degrés.",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_kit() -> None:
    if not (SEARXNG_SCRIPTS / "start.sh").is_file() or not SEARXNG_SRC.is_dir():
        pytest.fail(f"no SearXNG test kit at {SHARED_DIR} (set APPLIANCE_SHARED_DIR to the shared directory)")


def make_docs_db(path: Path, *, with_table: bool = True) -> Path:
    """The shared demo database plus the rows these tests need; without_table breaks the engine."""
    require_kit()
    if not with_table:
        sqlite3.connect(path).close()
        return path
    subprocess.run(
        [sys.executable, str(SEARXNG_SCRIPTS / "make_demo_db.py"), str(path)], check=True, capture_output=True
    )
    connection = sqlite3.connect(path)
    with connection:
        connection.executemany(
            "INSERT INTO docs (title, url, content) VALUES (?, ?, ?)", [*PAGING_ROWS, BANNED_ROW, UNICODE_ROW]
        )
    connection.close()
    return path


@dataclass
class SearxngInstance:
    url: str
    port: int
    db: Path
    pidfile: Path

    def stop(self) -> None:
        env = {**os.environ, "SEARXNG_PORT": str(self.port), "SEARXNG_PIDFILE": str(self.pidfile)}
        subprocess.run(["bash", str(SEARXNG_SCRIPTS / "stop.sh")], env=env, capture_output=True, timeout=30)


def start_searxng(db: Path, workdir: Path) -> SearxngInstance:
    require_kit()
    port = free_port()
    pidfile = workdir / f"searxng-{port}.pid"
    env = {
        **os.environ,
        "SEARXNG_DB": str(db),
        "SEARXNG_PORT": str(port),
        "SEARXNG_PIDFILE": str(pidfile),
        "SEARXNG_VENV": str(SEARXNG_VENV),
        "SEARXNG_SRC": str(SEARXNG_SRC),
    }
    done = subprocess.run(
        ["bash", str(SEARXNG_SCRIPTS / "start.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        pytest.fail(f"SearXNG did not start (exit {done.returncode}):\n{done.stderr[-3000:]}")
    url = done.stdout.strip().splitlines()[-1]
    return SearxngInstance(url, port, db, pidfile)


@pytest.fixture(scope="session")
def searxng(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearxngInstance]:
    """One SearXNG for the whole session, over the demo database."""
    workdir = tmp_path_factory.mktemp("searxng")
    instance = start_searxng(make_docs_db(workdir / "docs.db"), workdir)
    yield instance
    instance.stop()


@pytest.fixture
def searxng_factory(tmp_path: Path) -> Iterator[Callable[..., SearxngInstance]]:
    """Start private instances (to stop mid-test, or over a broken database); all stopped afterwards."""
    started: list[SearxngInstance] = []

    def start(*, with_table: bool = True) -> SearxngInstance:
        db = make_docs_db(tmp_path / f"docs-{len(started)}.db", with_table=with_table)
        instance = start_searxng(db, tmp_path)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()
