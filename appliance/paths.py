"""Where the appliance keeps its data and configuration.

`APPLIANCE_HOME` puts everything (config, history, models, runs) under one
directory: tests, portable installs and air-gapped bundles use it. Otherwise the
platform's conventional directories are used (platformdirs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from appliance.errors import ConfigError

APP_NAME = "appliance"


@dataclass(frozen=True)
class AppDirs:
    config_dir: Path
    data_dir: Path
    cache_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def default_db(self) -> Path:
        return self.data_dir / "history.db"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def run_dir(self, run_id: str) -> Path:
        """RUNS/RUN_ID; a run id (read from a history database, which may come from elsewhere) names one level."""
        if not run_id or run_id in (".", "..") or any(c in run_id for c in "/\\\x00"):
            raise ConfigError(
                f"run id {run_id!r} cannot name a run directory", "use a run id from `appliance history list`"
            )
        return self.runs_dir / run_id


def app_dirs(environ: dict[str, str] | None = None) -> AppDirs:
    env = os.environ if environ is None else environ
    home = env.get("APPLIANCE_HOME")
    if home:
        root = Path(home).expanduser()
        return AppDirs(config_dir=root, data_dir=root, cache_dir=root / "cache")
    return AppDirs(
        config_dir=Path(platformdirs.user_config_dir(APP_NAME)),
        data_dir=Path(platformdirs.user_data_dir(APP_NAME)),
        cache_dir=Path(platformdirs.user_cache_dir(APP_NAME)),
    )


def confined(base: Path, name: str) -> Path | None:
    """base/name with links resolved, if it stays inside base; None for an absolute name, '..' or a link out.

    For paths that come from data (a dataset's file_name), never trusted to stay where they are read.
    """
    if not name or "\x00" in name or Path(name).is_absolute():
        return None
    root = Path(os.path.realpath(base))
    full = Path(os.path.realpath(root / name))
    return full if full != root and full.is_relative_to(root) else None


def make_named_dir(path: Path, option: str) -> Path:
    """Create a directory the user named for output: the last component only, never its parents.

    The appliance changes nothing on the host outside its own directories, so a
    mistyped `--out /srv/reprots/x` is an error naming the missing folder, not a
    tree of new folders wherever the typo pointed.
    """
    path = path.expanduser()
    if path.is_dir():
        return path
    if not path.parent.is_dir():
        raise ConfigError(
            f"{option}: the folder {path.parent} does not exist",
            f"create it first (mkdir -p {path.parent}), or choose another {option}",
        )
    try:
        path.mkdir()
    except FileExistsError as exc:
        raise ConfigError(f"{option}: {path} exists and is not a directory", f"choose another {option}") from exc
    except OSError as exc:
        raise ConfigError(
            f"{option}: cannot create {path}: {exc.strerror or exc}", f"choose a writable {option}"
        ) from exc
    return path
