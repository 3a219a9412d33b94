"""`appliance doctor`: hardware, the profile and its plan, and the health of every component.

Components are checked from the outside, the way a user would: the model file
and its stamp, an import of llama-cpp-python in a child process, `bwrap`
creating a user namespace, an HTTP search against SearXNG, free disk, and the
sandbox's Python importing its packages, and each configured MCP server
started and listing its tools. Each problem comes with its fix.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.ggufmeta import read_kv_shape
from appliance.install import envs, weights
from appliance.install.hardware import GIB, Hardware
from appliance.install.memplan import describe_cache_choices
from appliance.install.profiles import ProfileSpec, cache_type_plans, load_spec, plan_for

MIN_FREE_DISK = 2 * GIB


@dataclass(frozen=True)
class Check:
    component: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""


def check_model(settings: Settings, spec: ProfileSpec | None) -> Check:
    backend = settings.model.backend
    if backend == "replay":
        return Check("model", "skip", f"replay backend ({settings.model.replay or 'no script'})")
    if backend == "openai":
        url = settings.model.base_url.rstrip("/") + "/models"
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return Check("model", "ok", f"OpenAI-compatible server answers at {settings.model.base_url}")
            detail = f"{url} answered HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            detail = f"no server at {settings.model.base_url} ({type(exc).__name__})"
        return Check("model", "fail", detail, "start the server (e.g. llama-server) or set [model] base_url")
    path = settings.model_path()
    if path is None:
        return Check("model", "fail", "no model file configured", "run `appliance install` or pass --model PATH.gguf")
    if not path.is_file():
        return Check("model", "fail", f"{path} is missing", "run `appliance install` to download and verify it")
    expected = settings.model.sha256 or (spec.sha256 if spec else "")
    stamp = weights.verified_stamp(path, expected)
    if stamp is None:
        return Check(
            "model",
            "warn",
            f"{path} is present but not verified against a published sha256",
            "run `appliance install` (it verifies and stamps the file)",
        )
    return Check("model", "ok", f"{path.name} ({path.stat().st_size / GIB:.2f} GiB), sha256 {stamp.sha256[:16]}... ok")


def check_llama_cpp(spec: ProfileSpec | None) -> Check:
    code = "import llama_cpp as l; print(l.__version__, bool(l.llama_supports_gpu_offload()))"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("llama-cpp-python", "fail", str(exc), "reinstall with installer/install.sh")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["import failed"])[-1]
        return Check("llama-cpp-python", "fail", last, "reinstall with installer/install.sh")
    version, offload = [*proc.stdout.split(), "?", "False"][:2]
    detail = f"{version}, GPU offload {'built in' if offload == 'True' else 'not built in'}"
    if spec is not None and spec.device == "gpu" and offload != "True":
        return Check(
            "llama-cpp-python",
            "fail",
            detail + f", but profile {spec.name} offloads to the GPU",
            'rebuild: CMAKE_ARGS="-DGGML_CUDA=on" (or -DGGML_METAL=on) pip install --force-reinstall '
            "--no-cache-dir llama-cpp-python, or run installer/install.sh again",
        )
    return Check("llama-cpp-python", "ok", detail)


def check_bwrap() -> Check:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check(
            "sandbox (bwrap)", "fail", "bubblewrap is not installed", "apt-get install bubblewrap (dnf/pacman)"
        )
    try:
        proc = subprocess.run(
            [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("sandbox (bwrap)", "fail", str(exc), "reinstall bubblewrap")
    if proc.returncode != 0:
        return Check(
            "sandbox (bwrap)",
            "fail",
            f"{bwrap} cannot create a user namespace: {proc.stderr.strip()[:200]}",
            "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 "
            "kernel.apparmor_restrict_unprivileged_userns=0); in a container run with --security-opt "
            "seccomp=unconfined (see docs/install.md)",
        )
    return Check("sandbox (bwrap)", "ok", f"{bwrap} creates namespaces")


def check_searxng(settings: Settings) -> Check:
    base = settings.search.searxng_url.rstrip("/")
    installed = settings.search.searxng_venv and (Path(settings.search.searxng_venv) / "bin" / "python").exists()
    try:
        response = httpx.get(f"{base}/search", params={"q": "appliance", "format": "json"}, timeout=10)
    except httpx.HTTPError as exc:
        fix = (
            "run `appliance searxng start`" if installed else "run `appliance install`, then `appliance searxng start`"
        )
        return Check("SearXNG", "fail", f"nothing answers at {base} ({type(exc).__name__})", fix)
    if response.status_code == 403:
        return Check("SearXNG", "fail", f"{base} refuses JSON output", "add json to search.formats in settings.yml")
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code != 200 or not isinstance(payload, dict) or "results" not in payload:
        return Check("SearXNG", "fail", f"{base} answered HTTP {response.status_code} without JSON results",
                     "check [search] searxng_url points at SearXNG")  # fmt: skip
    dead = payload.get("unresponsive_engines") or []
    detail = f"answers at {base} ({len(payload['results'])} results for a test query)"
    if dead:
        return Check("SearXNG", "warn", detail + f"; unresponsive engines: {dead}", "check the engines' settings")
    return Check("SearXNG", "ok", detail)


def check_disk(settings: Settings, hardware: Hardware) -> Check:
    free = hardware.disk_free_bytes
    detail = f"{free / GIB:.1f} GiB free at {hardware.disk_path}"
    if free < MIN_FREE_DISK:
        return Check("disk", "warn", detail, f"free space near {settings.dirs.data_dir}: runs and history need room")
    return Check("disk", "ok", detail)


def check_sandbox_python(settings: Settings) -> Check:
    # Empty is a valid setting: the sandbox then runs the appliance's own interpreter.
    python = settings.sandbox.python or sys.executable
    which = python if settings.sandbox.python else f"{python} (the appliance's own; [sandbox] python is empty)"
    if not Path(python).exists():
        return Check("sandbox Python", "fail", f"{python} is missing", "run `appliance install`")
    problem = envs.check_imports(Path(python), envs.SANDBOX_PACKAGES)
    if problem:
        # Code still runs; only the data packages the model expects are missing.
        status = "fail" if settings.sandbox.python else "warn"
        return Check("sandbox Python", status, f"{which}: {problem}", "run `appliance install`")
    return Check("sandbox Python", "ok", f"{which} imports {', '.join(envs.SANDBOX_PACKAGES)}")


def check_data_dir(settings: Settings) -> Check:
    """History, runs and models are written under the data directory: it must take a file."""
    data_dir = settings.dirs.data_dir
    existing = next((p for p in (data_dir, *data_dir.parents) if p.exists()), data_dir)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return Check(
            "data directory",
            "fail",
            f"{data_dir} is not writable ({exc.strerror or exc})",
            "make it writable, or set APPLIANCE_HOME to a writable directory",
        )
    return Check("data directory", "ok", f"{data_dir} is writable")


def check_mcp_servers(settings: Settings) -> list[Check]:
    """One check per configured MCP server: started, initialized and listed, as a run would."""
    if not settings.mcp_servers:
        return []
    from appliance.tools.mcp.health import check_servers  # loads the MCP SDK only when servers are configured

    return [Check(f"MCP server {h.name}", h.status, h.detail, h.fix) for h in check_servers(settings)]


def plan_text(settings: Settings, spec: ProfileSpec | None, hardware: Hardware) -> tuple[str, Check | None]:
    """The profile's memory plan on this machine; a check when the configured context would not fit."""
    if spec is None or not spec.local:
        return f"profile {settings.profile}: inference on {settings.model.base_url}", None
    path = settings.model_path()
    try:
        kv = read_kv_shape(path) if path and path.is_file() else None
    except ApplianceError:
        kv = None
    size = path.stat().st_size if path and path.is_file() else None
    plan = plan_for(
        spec,
        hardware,
        kv=kv,
        weights_bytes=size,
        requested_context=settings.model.context_length,
        cache_type=settings.model.kv_cache_type,
    )
    if plan is None:
        return f"profile {spec.name}: no KV shape to plan with", None
    text = f"profile {spec.name}: {plan.describe()}"
    text += f"\n  {describe_cache_choices(cache_type_plans(spec, hardware, kv=kv, weights_bytes=size))}"
    if not plan.fits:
        return text, Check("memory", "fail", plan.describe(), "pick a smaller profile: `appliance profiles`")
    if plan.lowered:
        return text, Check(
            "memory",
            "warn",
            f"[model] context_length {settings.model.context_length:,} does not fit; {plan.context:,} would",
            f"set [model] context_length = {plan.context} (appliance install does this)",
        )
    return text, Check("memory", "ok", f"context {plan.context:,} fits")


def diagnose(settings: Settings, hardware: Hardware) -> tuple[str, list[Check]]:
    try:
        spec: ProfileSpec | None = load_spec(settings.profile, settings.dirs)
    except ApplianceError:
        spec = None
    text, memory = plan_text(settings, spec, hardware)
    checks = [check_model(settings, spec)]
    if settings.model.backend == "llamacpp":
        checks.append(check_llama_cpp(spec))
    if memory is not None:
        checks.append(memory)
    checks += [check_data_dir(settings), check_bwrap(), check_searxng(settings), check_disk(settings, hardware)]
    checks.append(check_sandbox_python(settings))
    checks += check_mcp_servers(settings)
    return text, checks


def render(hardware: Hardware, plan: str, checks: list[Check], *, as_json: bool) -> str:
    if as_json:
        return json.dumps({"hardware": asdict(hardware), "plan": plan, "checks": [asdict(c) for c in checks]}, indent=2)
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
    lines = ["Hardware", *("  " + line for line in hardware.summary().splitlines()), f"Plan: {plan}", "Components"]
    for check in checks:
        lines.append(f"  [{marks[check.status]}] {check.component}: {check.detail}")
        if check.fix and check.status in ("warn", "fail"):
            lines.append(f"         fix: {check.fix}")
    return "\n".join(lines)
