"""`appliance install`: plan (profile, download, disk, memory), then do it; a second run changes nothing.

The plan is computed before anything is written and printed first; `--dry-run`
stops there. Every step checks a stamp and skips work already done, and the
config file is rewritten only when one of its values changes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import load_settings
from appliance.errors import ApplianceError, ComponentUnavailable, ConfigError
from appliance.ggufmeta import read_kv_shape
from appliance.install import envs, weights
from appliance.install.configfile import update_config
from appliance.install.hardware import GIB, Hardware, detect
from appliance.install.memplan import MemoryPlan, best_cache_plan, cache_choice_reason, describe_cache_choices
from appliance.install.profiles import Fit, ProfileSpec, cache_type_plans, pick_profile
from appliance.paths import AppDirs, app_dirs

# Room the two Python environments take once installed (measured on Linux x86_64, Python 3.11).
SEARXNG_ENV_BYTES = 250 * 1024**2
SANDBOX_ENV_BYTES = 700 * 1024**2
DISK_MARGIN = GIB

Log = Callable[[str], None]


@dataclass
class InstallOptions:
    profile: str = ""  # "" = the configured profile (auto when there is none), "auto", or a name
    dry_run: bool = False
    searxng_src: str = ""
    wheel_dirs: tuple[Path, ...] = ()
    with_model: bool = True
    # The weights' repository and file instead of the profile's (written to the config).
    repo: str = ""
    file: str = ""
    with_searxng: bool = True
    with_sandbox: bool = True
    force: bool = False
    progress: bool = True
    hardware: Hardware | None = None
    environ: dict[str, str] | None = None


@dataclass
class InstallPlan:
    dirs: AppDirs
    hardware: Hardware
    spec: ProfileSpec
    chosen_by: str
    fits: list[Fit]
    memory: MemoryPlan | None
    # The plan of each KV cache type; `memory` is the best of them once the weights' size is known.
    cache_plans: list[MemoryPlan] = field(default_factory=list)
    model_path: Path | None = None
    remote: weights.RemoteFile | None = None
    verified: bool = False
    partial_bytes: int = 0
    download_bytes: int = 0
    disk_needed: int = 0
    searxng_source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def disk_ok(self) -> bool:
        return self.disk_needed <= self.hardware.disk_free_bytes

    def memory_choice(self) -> str:
        return f"{self.memory.cache_type} ({self.memory.context:,} tokens)" if self.memory else "none"

    def use_cache_plans(self, plans: list[MemoryPlan]) -> None:
        """Plan with the KV cache type that gives the largest context (memplan.best_cache_plan)."""
        self.cache_plans = plans
        if plans:
            self.memory = best_cache_plan(plans, self.spec.context_length)

    def render(self) -> str:
        spec = self.spec
        lines = ["Hardware", *("  " + line for line in self.hardware.summary().splitlines())]
        lines.append(f"Profile: {spec.name} ({self.chosen_by}) - {spec.description}")
        if spec.local:
            lines.append(f"  model {spec.repo}/{spec.file}")
            if self.verified:
                lines.append(f"  weights: present and verified at {self.model_path}")
            elif self.remote:
                lines.append(
                    f"  weights: {self.remote.size / GIB:.2f} GiB, sha256 {self.remote.sha256[:16]}... "
                    f"(from the hub's {self.remote.source}; commit {self.remote.revision[:12]})"
                )
                left = self.download_bytes / GIB
                lines.append(
                    f"  download: {left:.2f} GiB" + (f" (resuming: {self.partial_bytes:,} bytes here)" if left else "")
                )
        lines.append(
            f"Disk: needs {self.disk_needed / GIB:.1f} GiB, {self.hardware.disk_free_bytes / GIB:.1f} GiB free at "
            f"{self.hardware.disk_path}: " + ("ok" if self.disk_ok else "NOT ENOUGH")
        )
        if self.memory is not None:
            lines.append(f"Memory: {self.memory.describe()}")
        if self.cache_plans:
            lines.append(f"  {describe_cache_choices(self.cache_plans)}; chosen: {self.memory_choice()}")
            lines.append(f"  why: {cache_choice_reason(self.cache_plans, self.spec.context_length)}")
        else:
            lines.append("Memory: inference runs on the server at [model] base_url")
        if self.searxng_source:
            lines.append(f"SearXNG: from {self.searxng_source} into {envs.searxng_paths(self.dirs.data_dir)[1]}")
        lines.append(
            f"Sandbox Python: {', '.join(envs.SANDBOX_PACKAGES)} in {envs.sandbox_env_dir(self.dirs.data_dir)}"
        )
        lines.append(f"Config: {self.dirs.config_file}")
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)


def named_weights(options: InstallOptions) -> dict[str, str]:
    """`--repo`/`--file` as [model] values; both or neither, so a profile's file is never looked up elsewhere."""
    if not options.repo and not options.file:
        return {}
    if not (options.repo and options.file):
        raise ConfigError(
            "--repo and --file go together",
            "pass both: --repo OWNER/NAME --file NAME.gguf (the file in that repository)",
        )
    if not options.file.endswith(".gguf") or ".." in options.file.split("/"):
        raise ConfigError(f"--file {options.file!r} is not a GGUF file name", "name the .gguf file in the repository")
    return {"repo": options.repo, "file": options.file}


def make_plan(options: InstallOptions) -> InstallPlan:
    env = dict(os.environ if options.environ is None else options.environ)
    dirs = app_dirs(env)
    hardware = options.hardware or detect(disk_path=dirs.data_dir)
    pick = pick_profile(dirs, hardware, env, options.profile or None)
    spec, fits = pick.spec, pick.fits
    fit = next(f for f in fits if f.spec.name == spec.name)
    named = named_weights(options)
    if named:
        # Other weights than the profile's: its pinned sha256 and size belong to its own file.
        spec = dataclasses.replace(spec, repo=named["repo"], file=named["file"], sha256="", size_bytes=0)
    plan = InstallPlan(dirs, hardware, spec, pick.chosen_by, fits, fit.plan)
    settings = load_settings(profile=spec.name, environ=env, overrides={f"model.{k}": v for k, v in named.items()})
    if options.with_searxng:
        plan.searxng_source = options.searxng_src or settings.search.searxng_src or envs.SEARXNG_RELEASE_URL
    plan.disk_needed = DISK_MARGIN
    if options.with_searxng and not envs.read_stamp(envs.searxng_paths(dirs.data_dir)[1]):
        plan.disk_needed += SEARXNG_ENV_BYTES
    if options.with_sandbox and not envs.read_stamp(envs.sandbox_env_dir(dirs.data_dir)):
        plan.disk_needed += SANDBOX_ENV_BYTES
    if not spec.local:
        return plan
    if not fit.usable and not options.force:
        plan.notes.append(f"{spec.name} does not fit: {fit.reason}")
    plan.model_path = settings.model_path()
    if plan.model_path is None:
        raise ConfigError(f"profile {spec.name} names no model file", "set [model] file in the profile")
    if weights.verified_stamp(plan.model_path, spec.sha256):
        plan.verified = True
    elif options.with_model:
        endpoint = weights.hub_endpoint(env)
        try:
            plan.remote = weights.remote_file_info(spec.repo, spec.file, endpoint=endpoint)
        except ComponentUnavailable as exc:
            if not options.dry_run:
                raise
            plan.notes.append(f"cannot reach the hub for the exact size and sha256: {exc.message}")
        size = plan.remote.size if plan.remote else spec.weights_bytes
        if plan.remote:
            sha = spec.sha256 or plan.remote.sha256
            part = weights.partial_path(plan.model_path.parent, spec.file, sha)
            plan.partial_bytes = part.stat().st_size if part.is_file() else 0
        plan.download_bytes = max(0, size - plan.partial_bytes)
        plan.disk_needed += plan.download_bytes
        plan.use_cache_plans(cache_type_plans(spec, hardware, weights_bytes=size))
    if plan.verified:
        # The real numbers: the file's size and the KV shape from its own header.
        plan.use_cache_plans(
            cache_type_plans(
                spec, hardware, kv=read_kv_shape(plan.model_path), weights_bytes=plan.model_path.stat().st_size
            )
        )
    return plan


@dataclass
class InstallResult:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def run_install(plan: InstallPlan, options: InstallOptions, log: Log) -> InstallResult:
    """Carry out a plan. Raises with the fix on the first failure; what was done stays done."""
    spec, dirs = plan.spec, plan.dirs
    result = InstallResult()
    if spec.local and plan.memory is not None and not plan.memory.fits and not options.force:
        raise ConfigError(
            f"profile {spec.name} does not fit this machine: {plan.memory.describe()}",
            "pick a smaller profile (see `appliance profiles`), use --profile auto, or pass --force",
        )
    if not plan.disk_ok:
        raise ComponentUnavailable(
            "disk",
            f"not enough disk: {plan.disk_needed / GIB:.1f} GiB needed, {plan.hardware.disk_free_bytes / GIB:.1f} free",
            f"free space at {plan.hardware.disk_path} or set APPLIANCE_HOME to a bigger disk",
        )
    dirs.data_dir.mkdir(parents=True, exist_ok=True)
    updates: dict[str, Any] = {"profile": spec.name}
    model_updates: dict[str, Any] = dict(named_weights(options))
    pip = envs.PipSource(options.wheel_dirs)

    if spec.local and options.with_model and plan.model_path is not None:
        if plan.verified:
            result.unchanged.append(f"model {plan.model_path.name} (verified)")
        else:
            assert plan.remote is not None
            log(f"Downloading {spec.repo}/{spec.file} ({plan.download_bytes / GIB:.2f} GiB to go)")
            weights.download(
                plan.remote,
                plan.model_path.parent,
                endpoint=weights.hub_endpoint(options.environ),
                expected_sha256=spec.sha256,
                progress=options.progress,
            )
            result.changed.append(f"model {spec.file} downloaded and verified")
        shape = read_kv_shape(plan.model_path)
        plan.use_cache_plans(
            cache_type_plans(spec, plan.hardware, kv=shape, weights_bytes=plan.model_path.stat().st_size)
        )
        memory = plan.memory
        if plan.cache_plans and memory is not None:
            if not memory.fits and not options.force:
                raise ConfigError(
                    f"with the real file, {spec.name} does not fit: {memory.describe()}",
                    "pick a smaller profile (`appliance profiles`) or pass --force",
                )
            # The window and cache type the plan chose; the profile's own values are left unwritten.
            model_updates["context_length"] = memory.context if memory.context != spec.context_length else None
            model_updates["kv_cache_type"] = memory.cache_type if memory.cache_type != spec.kv_cache_type else None
    if model_updates:
        updates["model"] = model_updates

    if options.with_searxng:
        log("SearXNG")
        sx = envs.install_searxng(plan.searxng_source, dirs.data_dir, pip, log)
        (result.changed if sx.changed else result.unchanged).append(f"SearXNG in {sx.venv}")
        updates["search"] = {"searxng_src": str(sx.src), "searxng_venv": str(sx.venv)}

    if options.with_sandbox:
        log("Sandbox Python")
        python, changed = envs.install_sandbox_env(dirs.data_dir, pip, log)
        problem = envs.check_imports(python, envs.SANDBOX_PACKAGES)
        if problem:
            raise ComponentUnavailable(
                "sandbox python", f"the sandbox's Python cannot import its packages: {problem}", "run it again"
            )
        (result.changed if changed else result.unchanged).append(f"sandbox Python {python}")
        updates["sandbox"] = {"python": str(python)}

    changes = update_config(dirs.config_file, updates)
    if changes:
        result.changed.append(
            f"config {dirs.config_file}: " + ", ".join(f"{k} = {new!r}" for k, (_, new) in changes.items())
        )
    else:
        result.unchanged.append(f"config {dirs.config_file}")
    try:  # the written configuration must load, or the next start fails instead of this one
        load_settings(environ=dict(os.environ if options.environ is None else options.environ))
    except ApplianceError as exc:
        raise ConfigError(f"the configuration written is not valid: {exc.message}", exc.fix) from exc
    return result
