"""Run a private SearXNG on 127.0.0.1: `appliance searxng install|start|stop|status`.

The SearXNG source comes from the installer (or a bundle), named by
[search] searxng_src; its requirements live in their own virtualenv
([search] searxng_venv). Each start writes a settings file with a fresh secret
key, JSON output enabled, the rate limiter off (a private instance), and only
plugins that make no network requests at start-up. The server runs in its own
session; the pid file is the only way `stop` finds it, and it checks the
process is a SearXNG before signalling it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from appliance.config import Settings
from appliance.errors import ComponentUnavailable, ConfigError

LOCAL_HOSTS = ("127.0.0.1", "localhost")
# Plugins that work offline (tracker_url_remover downloads its rules at start-up).
OFFLINE_PLUGINS = ("calculator", "hash_plugin", "self_info", "unit_converter")
_SERVER_MARKERS = ("granian", "searx.webapp")


@dataclass(frozen=True)
class SearxngPaths:
    root: Path
    src: Path | None
    venv: Path

    @property
    def settings_file(self) -> Path:
        return self.root / "settings.yml"

    @property
    def pidfile(self) -> Path:
        return self.root / "searxng.pid"

    @property
    def log(self) -> Path:
        return self.root / "searxng.log"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def marker(self) -> Path:
        return self.venv / ".appliance-requirements.sha256"


@dataclass
class SearxngStatus:
    url: str
    pid: int | None
    reachable: bool
    json_ok: bool
    detail: str

    @property
    def healthy(self) -> bool:
        return self.reachable and self.json_ok

    def as_dict(self) -> dict[str, object]:
        return {
            "url": self.url,
            "pid": self.pid,
            "reachable": self.reachable,
            "json": self.json_ok,
            "healthy": self.healthy,
            "detail": self.detail,
        }


def paths_for(settings: Settings) -> SearxngPaths:
    root = settings.dirs.data_dir / "searxng"
    src = Path(settings.search.searxng_src).expanduser().resolve() if settings.search.searxng_src else None
    venv = Path(settings.search.searxng_venv).expanduser() if settings.search.searxng_venv else root / "venv"
    return SearxngPaths(root, src, venv)


def local_port(url: str) -> int:
    """The port of a SearXNG this machine may run; ConfigError for a remote URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS:
        raise ConfigError(
            f"`appliance searxng` runs a SearXNG on this machine, but [search] searxng_url is {url}",
            "set [search] searxng_url to http://127.0.0.1:PORT, or manage that SearXNG yourself",
        )
    return parts.port or 80


def require_source(paths: SearxngPaths) -> Path:
    if paths.src is None:
        raise ComponentUnavailable(
            "searxng",
            "no SearXNG source is configured",
            "set [search] searxng_src to a SearXNG source tree (the installer provides one)",
        )
    if not (paths.src / "searx" / "webapp.py").is_file():
        raise ComponentUnavailable(
            "searxng", f"{paths.src} is not a SearXNG source tree (no searx/webapp.py)", "fix [search] searxng_src"
        )
    return paths.src


# SearXNG's requirement files, in its source tree (`appliance install` reads the same ones).
REQUIREMENTS = ("requirements.txt", "requirements-server.txt")


def requirements_digest(src: Path) -> str:
    digest = hashlib.sha256()
    for name in REQUIREMENTS:
        path = src / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def install(settings: Settings, *, python: str = sys.executable) -> Path:
    """Create the SearXNG virtualenv and install its requirements (pip: needs PyPI or a wheel mirror)."""
    paths = paths_for(settings)
    src = require_source(paths)
    if not paths.python.is_file():
        created = subprocess.run([python, "-m", "venv", str(paths.venv)], capture_output=True, text=True)
        if created.returncode != 0:
            raise ComponentUnavailable(
                "searxng", f"cannot create {paths.venv}: {created.stderr.strip()}", "install python3-venv"
            )
    requirements = [str(src / n) for n in REQUIREMENTS if (src / n).is_file()]
    args = [str(paths.python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for requirement in requirements:
        args += ["-r", requirement]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["pip failed"]
        raise ComponentUnavailable(
            "searxng",
            f"installing SearXNG's requirements failed: {tail[0]}",
            "check network access to PyPI (or a local mirror), then run `appliance searxng install` again",
        )
    paths.marker.write_text(requirements_digest(src), encoding="utf-8")
    return paths.venv


def searxng_config(settings: Settings, port: int, secret_key: str) -> dict[str, object]:
    """SearXNG's settings.yml content (JSON is valid YAML, so no YAML writer is needed)."""
    search = settings.search
    engines = list(search.searxng_engines)
    defaults: object = True
    if search.searxng_docs_db and engines and "localdocs" not in engines:
        engines.append("localdocs")
    if engines:
        defaults = {"engines": {"keep_only": engines}}
    config: dict[str, object] = {
        "use_default_settings": defaults,
        "general": {"instance_name": "SearXNG (appliance)", "enable_metrics": True},
        "server": {
            "bind_address": "127.0.0.1",
            "port": port,
            "secret_key": secret_key,
            "limiter": False,
            "public_instance": False,
            "image_proxy": False,
            "method": "GET",
        },
        "valkey": {"url": False},
        "search": {"formats": ["html", "json"], "autocomplete": "", "favicon_resolver": "", "safe_search": 0},
        "plugins": {f"searx.plugins.{name}.SXNGPlugin": {"active": True} for name in OFFLINE_PLUGINS},
    }
    if search.searxng_docs_db:
        config["engines"] = [
            {
                "name": "localdocs",
                "engine": "sqlite",
                "shortcut": "ld",
                "categories": ["general"],
                "result_type": "MainResult",
                "database": str(Path(search.searxng_docs_db).expanduser().resolve()),
                "query_str": "SELECT title, url, content FROM docs "
                "WHERE title LIKE :wildcard OR content LIKE :wildcard ORDER BY rowid",
                "timeout": 5.0,
                "disabled": False,
            }
        ]
    return config


def read_pid(paths: SearxngPaths) -> int | None:
    """The pid in the pid file if that process is alive and is a SearXNG server."""
    try:
        pid = int(paths.pidfile.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return None
    return pid if any(marker in cmdline for marker in _SERVER_MARKERS) else None


def probe(url: str, timeout: float = 5.0) -> tuple[bool, bool, str]:
    """(reachable, JSON API works, detail) for a SearXNG base URL."""
    try:
        response = httpx.get(
            url.rstrip("/") + "/search",
            params={"q": "appliance", "format": "json"},
            timeout=timeout,
            trust_env=False,
            follow_redirects=False,
        )
    except httpx.ConnectError:
        return False, False, "connection refused"
    except httpx.TimeoutException:
        return False, False, f"no answer within {timeout:g} s"
    except httpx.HTTPError as exc:
        return False, False, f"{type(exc).__name__}: {exc}"
    if response.status_code == 403:
        return True, False, "JSON output is disabled (add json to search.formats)"
    if response.status_code == 429:
        return True, False, "the rate limiter refused the request (set server.limiter: false)"
    try:
        data = response.json()
    except ValueError:
        return True, False, f"HTTP {response.status_code}, not a SearXNG JSON answer"
    if response.status_code != 200 or not isinstance(data, dict) or "results" not in data:
        return True, False, f"HTTP {response.status_code}: {str(data)[:200]}"
    broken = [str(e[0]) for e in data.get("unresponsive_engines") or [] if isinstance(e, list) and e]
    return True, True, "ok" + (f" (engines not answering: {', '.join(broken)})" if broken else "")


def status(settings: Settings) -> SearxngStatus:
    url = settings.search.searxng_url
    pid = None
    try:
        local_port(url)
        pid = read_pid(paths_for(settings))
    except ConfigError:
        pass
    reachable, json_ok, detail = probe(url, timeout=min(5.0, settings.search.timeout))
    return SearxngStatus(url, pid, reachable, json_ok, detail)


def start(settings: Settings, *, timeout: float = 60.0) -> SearxngStatus:
    url = settings.search.searxng_url
    port = local_port(url)
    paths = paths_for(settings)
    src = require_source(paths)
    running = read_pid(paths)
    if running is not None:
        raise ConfigError(f"SearXNG is already running (pid {running})", "run `appliance searxng stop` first")
    reachable, _, _ = probe(url, timeout=2.0)
    if reachable:
        raise ConfigError(f"something already answers on {url}", "stop it, or choose another port in searxng_url")
    if not paths.python.is_file():
        raise ComponentUnavailable(
            "searxng", f"SearXNG's Python environment {paths.venv} does not exist", "run `appliance searxng install`"
        )
    if paths.marker.is_file() and paths.marker.read_text(encoding="utf-8").strip() != requirements_digest(src):
        raise ComponentUnavailable(
            "searxng", f"{paths.venv} was installed for another SearXNG version", "run `appliance searxng install`"
        )
    if settings.search.searxng_docs_db and not Path(settings.search.searxng_docs_db).expanduser().is_file():
        raise ConfigError(
            f"[search] searxng_docs_db {settings.search.searxng_docs_db} does not exist", "fix the path or unset it"
        )

    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / "tmp").mkdir(exist_ok=True)
    config = searxng_config(settings, port, secrets.token_hex(32))
    fd = os.open(paths.settings_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)

    granian = paths.venv / "bin" / "granian"
    if granian.is_file():
        command = [str(granian), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--workers", "1", "--blocking-threads", "4", "--no-ws", "--working-dir", str(src)]
        command += ["searx.webapp:app"]
    else:
        command = [str(paths.python), "-m", "searx.webapp"]
    # SEARXNG_* variables in the user's environment would override the settings file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEARXNG_")}
    env.update(
        SEARXNG_SETTINGS_PATH=str(paths.settings_file),
        SEARXNG_PORT=str(port),
        PYTHONPATH=str(src),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        TMPDIR=str(paths.root / "tmp"),
    )
    with paths.log.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=src,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    paths.pidfile.write_text(str(process.pid), encoding="utf-8")
    deadline = time.monotonic() + timeout
    detail = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            paths.pidfile.unlink(missing_ok=True)
            raise ComponentUnavailable(
                "searxng", f"SearXNG exited during start-up (code {process.returncode})", f"read {paths.log}"
            )
        reachable, json_ok, detail = probe(url, timeout=2.0)
        if reachable and json_ok:
            return SearxngStatus(url, process.pid, True, True, detail)
        time.sleep(0.3)
    _terminate(process.pid)
    paths.pidfile.unlink(missing_ok=True)
    raise ComponentUnavailable(
        "searxng", f"SearXNG did not answer on {url} within {timeout:g} s ({detail})", f"read {paths.log}"
    )


def _terminate(pid: int, grace: float = 10.0) -> None:
    # The server leads its own session (start_new_session): signal the group, which holds its workers.
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited == pid:
                return
        except ChildProcessError:
            pass
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(settings: Settings) -> int | None:
    """Stop the SearXNG this appliance started; returns its pid, or None when none was running."""
    paths = paths_for(settings)
    pid = read_pid(paths)
    paths.pidfile.unlink(missing_ok=True)
    if pid is None:
        return None
    if os.getpgid(pid) != pid:
        raise ComponentUnavailable(
            "searxng", f"pid {pid} does not lead its own process group; not signalling it", "stop it by hand"
        )
    _terminate(pid)
    return pid
