"""Hardware profiles as data, and the choice of one for a machine.

A profile is a TOML file (appliance/profiles/NAME.toml, or the user's
config-dir/profiles/NAME.toml). Its `[profile]` table says where it runs
(`device` = cpu | gpu | remote), how `auto` ranks it, the smallest useful
context, an estimate of the weights' size and the model's KV-cache shape, so a
plan exists before a byte is downloaded.

`auto` picks the highest-ranked local profile whose memory plan fits; the
remote profile (an OpenAI-compatible server) only when none does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.config import KV_CACHE_TYPES, available_profiles, find_profile, read_toml
from appliance.errors import ConfigError
from appliance.ggufmeta import KvShape
from appliance.install.hardware import Hardware
from appliance.install.memplan import MemoryPlan, kv_bytes_per_token, memory_budget, plan_memory
from appliance.paths import AppDirs

DEVICES = ("cpu", "gpu", "remote")


@dataclass(frozen=True)
class ProfileSpec:
    name: str
    description: str
    device: str
    rank: int
    min_context: int
    context_length: int
    repo: str
    file: str
    sha256: str
    size_bytes: int
    weights_size_estimate: int
    kv: KvShape | None
    kv_cache_type: str
    data: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    # False: only installed when named (its weights could not be checked where it was written).
    auto: bool = True

    @property
    def local(self) -> bool:
        return self.device != "remote"

    @property
    def weights_bytes(self) -> int:
        """The exact size when the profile pins it, else the estimate."""
        return self.size_bytes or self.weights_size_estimate


def _int(meta: dict[str, Any], key: str, default: int, name: str) -> int:
    value = meta.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"profile '{name}': [profile] {key} must be an integer", f"fix {key} in {name}.toml")
    return value


def parse_profile(name: str, data: dict[str, Any]) -> ProfileSpec:
    meta = data.get("profile", {})
    model = data.get("model", {})
    if not isinstance(meta, dict) or not isinstance(model, dict):
        raise ConfigError(f"profile '{name}' is malformed", "[profile] and [model] must be tables")
    device = str(meta.get("device", "remote" if model.get("backend") == "openai" else "cpu"))
    if device not in DEVICES:
        raise ConfigError(f"profile '{name}': unknown device '{device}'", f"use one of {', '.join(DEVICES)}")
    kv_table = meta.get("kv")
    kv = None
    if isinstance(kv_table, dict):
        kv = KvShape(
            block_count=_int(kv_table, "block_count", 0, name),
            head_count_kv=_int(kv_table, "head_count_kv", 0, name),
            key_length=_int(kv_table, "key_length", 0, name),
            value_length=_int(kv_table, "value_length", 0, name),
            context_length=_int(kv_table, "trained_context", 0, name),
        )
    return ProfileSpec(
        name=name,
        description=str(meta.get("description", "")),
        device=device,
        rank=_int(meta, "rank", 0, name),
        min_context=_int(meta, "min_context", 4096, name),
        context_length=int(model.get("context_length", 32768)),
        repo=str(model.get("repo", "")),
        file=str(model.get("file", "")),
        sha256=str(model.get("sha256", "")).lower(),
        size_bytes=int(model.get("size_bytes", 0)),
        weights_size_estimate=_int(meta, "weights_size_estimate", 0, name),
        kv=kv,
        # [model] kv_cache_type is what the runtime uses; [profile] kv_cache_type is the older spelling.
        kv_cache_type=str(model.get("kv_cache_type", meta.get("kv_cache_type", "f16"))),
        data=data,
        auto=bool(meta.get("auto", True)),
    )


def load_spec(name: str, dirs: AppDirs) -> ProfileSpec:
    path = find_profile(name, dirs)
    return parse_profile(name, read_toml(path, f"profile '{name}'"))


def load_specs(dirs: AppDirs) -> list[ProfileSpec]:
    return [load_spec(name, dirs) for name in available_profiles(dirs)]


# ------------------------------------------------------------------ fit and choice


@dataclass(frozen=True)
class Fit:
    spec: ProfileSpec
    plan: MemoryPlan | None
    usable: bool
    reason: str


def device_available(spec: ProfileSpec, hardware: Hardware) -> tuple[bool, str]:
    if spec.device == "gpu" and hardware.gpu_kind == "none":
        return False, "no CUDA or Metal GPU"
    return True, ""


def plan_for(
    spec: ProfileSpec,
    hardware: Hardware,
    *,
    kv: KvShape | None = None,
    weights_bytes: int | None = None,
    requested_context: int | None = None,
    cache_type: str | None = None,
) -> MemoryPlan | None:
    """The memory plan of a local profile; `kv`/`weights_bytes` replace the profile's numbers once known."""
    shape = kv or spec.kv
    if not spec.local or shape is None:
        return None
    cache_type = cache_type or spec.kv_cache_type
    return plan_memory(
        device=spec.device,
        budget_bytes=memory_budget(hardware, spec.device),
        weights_bytes=weights_bytes if weights_bytes is not None else spec.weights_bytes,
        kv_per_token=kv_bytes_per_token(shape, cache_type),
        requested_context=requested_context or spec.context_length,
        min_context=spec.min_context,
        trained_context=shape.context_length,
        cache_type=cache_type,
    )


def cache_type_plans(
    spec: ProfileSpec, hardware: Hardware, *, kv: KvShape | None = None, weights_bytes: int | None = None
) -> list[MemoryPlan]:
    """One plan per KV cache type (most precise first), each asking for the whole window the model was trained for.

    Empty for a remote profile or one without a KV shape. The installer keeps
    best_cache_plan() of these; doctor and `install --dry-run` show them all.
    """
    shape = kv or spec.kv
    if shape is None:
        return []
    window = shape.context_length or spec.context_length
    plans = [plan_for(spec, hardware, kv=shape, weights_bytes=weights_bytes, requested_context=window, cache_type=t)
             for t in KV_CACHE_TYPES]  # fmt: skip
    return [p for p in plans if p is not None]


def assess(spec: ProfileSpec, hardware: Hardware) -> Fit:
    if not spec.local:
        return Fit(spec, None, True, "needs an OpenAI-compatible server ([model] base_url)")
    ok, why = device_available(spec, hardware)
    if not ok:
        return Fit(spec, None, False, why)
    plan = plan_for(spec, hardware)
    if plan is None:
        return Fit(spec, None, False, "the profile gives no [profile.kv] shape to plan with")
    if not plan.fits:
        where = "RAM" if spec.device == "cpu" else "GPU memory"
        return Fit(spec, plan, False, f"needs {plan.shortfall_bytes() / 1024**3:.1f} GiB more {where}")
    note = f"context {plan.context:,}" + (f" (lowered from {plan.requested_context:,})" if plan.lowered else "")
    return Fit(spec, plan, True, note)


def choose(specs: list[ProfileSpec], hardware: Hardware) -> tuple[ProfileSpec, list[Fit]]:
    """The profile `auto` picks, and the fit of every profile (best first)."""
    fits = sorted((assess(s, hardware) for s in specs), key=lambda f: (-int(f.usable), -f.spec.rank, f.spec.name))
    local = [f for f in fits if f.usable and f.spec.local and f.spec.auto]
    if local:
        return local[0].spec, fits
    remote = [f for f in fits if f.spec.device == "remote"]
    if remote:
        return remote[0].spec, fits
    raise ConfigError("no profile fits this machine and there is no remote profile", "add a profile with device=remote")


@dataclass(frozen=True)
class ProfilePick:
    spec: ProfileSpec
    chosen_by: str  # why this one, in words
    fits: list[Fit]


def pick_profile(
    dirs: AppDirs, hardware: Hardware, environ: Mapping[str, str], named: str | None = None
) -> ProfilePick:
    """The profile `doctor`, `install` and `profiles` would use: one rule for all three.

    A name given on the command line, then APPLIANCE_PROFILE, then `profile` in
    the config file; otherwise `auto`: the best profile that fits this machine.
    """
    specs = load_specs(dirs)
    configured = ""
    if dirs.config_file.is_file():
        value = read_toml(dirs.config_file, "config file").get("profile", "")
        configured = value if isinstance(value, str) else ""
    for wanted, chosen_by in (
        (named, "named"),
        (environ.get("APPLIANCE_PROFILE") or None, "from APPLIANCE_PROFILE"),
        (configured or None, "from the config file"),
    ):
        if wanted is not None and wanted != "auto":
            return ProfilePick(load_spec(wanted, dirs), chosen_by, [assess(s, hardware) for s in specs])
    spec, fits = choose(specs, hardware)
    return ProfilePick(spec, "auto: the best profile that fits this machine", fits)
