"""What this machine has: CPU cores and instruction sets, RAM, free disk, GPUs.

Every source is injectable so tests describe machines instead of needing them:
`root` stands in for `/` (its `proc/cpuinfo`, `proc/meminfo` and the cgroup
memory limit are read), `nvml` for the `pynvml` module of nvidia-ml-py, and
`system`/`machine` for `platform.system()`/`platform.machine()`.
A machine can also be described as JSON (`Hardware.to_json`/`from_json`) to plan
for another computer, e.g. the target of an air-gapped bundle.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GIB = 1024**3
# Instruction sets llama.cpp's CPU kernels care about, in the order worth reporting.
INTERESTING_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "neon", "asimd")
# macOS lets the GPU wire about three quarters of unified memory by default.
METAL_USABLE_FRACTION = 0.75


@dataclass(frozen=True)
class Gpu:
    vendor: str  # "nvidia" | "apple"
    name: str
    vram_bytes: int
    compute_capability: str = ""


@dataclass(frozen=True)
class Hardware:
    system: str
    machine: str
    cpu_model: str
    logical_cores: int
    physical_cores: int
    cpu_flags: tuple[str, ...]
    ram_bytes: int
    ram_available_bytes: int
    disk_free_bytes: int
    disk_path: str
    gpus: tuple[Gpu, ...] = ()
    gpu_note: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def vram_bytes(self) -> int:
        """Memory the GPUs offer a model: summed across cards (llama.cpp splits layers)."""
        return sum(g.vram_bytes for g in self.gpus)

    @property
    def gpu_kind(self) -> str:
        """ "cuda", "metal" or "none"."""
        if any(g.vendor == "nvidia" for g in self.gpus):
            return "cuda"
        if any(g.vendor == "apple" for g in self.gpus):
            return "metal"
        return "none"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Hardware:
        data: dict[str, Any] = json.loads(text)
        data["gpus"] = tuple(Gpu(**g) for g in data.get("gpus", ()))
        data["cpu_flags"] = tuple(data.get("cpu_flags", ()))
        data["notes"] = tuple(data.get("notes", ()))
        return cls(**data)

    def summary(self) -> str:
        gpus = ", ".join(f"{g.name} ({g.vram_bytes / GIB:.1f} GiB)" for g in self.gpus) or "none"
        flags = " ".join(f for f in INTERESTING_FLAGS if f in self.cpu_flags) or "no SIMD flags found"
        return (
            f"CPU: {self.cpu_model or 'unknown'}, {self.physical_cores} cores / "
            f"{self.logical_cores} threads ({flags})\n"
            f"RAM: {self.ram_bytes / GIB:.1f} GiB ({self.ram_available_bytes / GIB:.1f} GiB available)\n"
            f"Disk: {self.disk_free_bytes / GIB:.1f} GiB free at {self.disk_path}\n"
            f"GPU: {gpus}" + (f" [{self.gpu_note}]" if self.gpu_note else "")
        )


# ------------------------------------------------------------------ parsing


def parse_cpuinfo(text: str) -> tuple[str, int, int, tuple[str, ...]]:
    """(model, logical cores, physical cores, flags) from /proc/cpuinfo (x86 and ARM layouts)."""
    model = ""
    logical = 0
    cores: set[tuple[str, str]] = set()
    flags: set[str] = set()
    block: dict[str, str] = {}

    def close(entry: dict[str, str]) -> None:
        if "physical id" in entry and "core id" in entry:
            cores.add((entry["physical id"], entry["core id"]))

    for line in text.splitlines():
        if not line.strip():
            close(block)
            block = {}
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        block[key] = value
        if key == "processor" and value.isdigit():
            logical += 1
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = value
        elif key in ("flags", "features"):
            flags.update(value.split())
    close(block)
    physical = len(cores) or logical
    return model, logical, physical, tuple(sorted(flags))


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
            values[key.strip()] = int(parts[0]) * scale
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return total, available


def cgroup_memory_limit(root: Path) -> int | None:
    """The cgroup v2 memory limit (a container's real RAM), or None when unlimited."""
    try:
        text = (root / "sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def nvidia_gpus(nvml: Any) -> tuple[tuple[Gpu, ...], str]:
    """GPUs from NVML (the `pynvml` module or a stand-in); a note says why there are none."""
    if nvml is None:
        try:
            import pynvml

            nvml = pynvml
        except ImportError:
            return (), "nvidia-ml-py not installed (pip install nvidia-ml-py to see NVIDIA GPUs)"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return (), f"no NVIDIA driver ({type(exc).__name__})"
    try:
        gpus = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            capability = ""
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability = f"{major}.{minor}"
            except Exception:
                pass
            gpus.append(Gpu("nvidia", str(name), int(memory.total), capability))
        return tuple(gpus), ""
    except Exception as exc:
        return (), f"NVML error ({type(exc).__name__}: {exc})"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _darwin_sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def free_disk(path: Path) -> tuple[int, str]:
    """Free bytes on the filesystem that will hold `path` (its nearest existing parent)."""
    probe = path.expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free, str(probe)


# ------------------------------------------------------------------ detection


def detect(
    *,
    disk_path: Path,
    root: Path = Path("/"),
    nvml: Any = None,
    system: str | None = None,
    machine: str | None = None,
    sysctl: Any = None,
) -> Hardware:
    system = system or platform.system()
    machine = machine or platform.machine()
    notes: list[str] = []
    disk_free, disk_where = free_disk(disk_path)

    if system == "Darwin":
        read = sysctl or _darwin_sysctl
        ram = int(read("hw.memsize") or 0)
        logical = int(read("hw.logicalcpu") or os.cpu_count() or 1)
        physical = int(read("hw.physicalcpu") or logical)
        model = read("machdep.cpu.brand_string")
        flags: tuple[str, ...] = ("neon",) if machine == "arm64" else ()
        gpus: tuple[Gpu, ...] = ()
        gpu_note = ""
        if machine == "arm64":
            gpus = (Gpu("apple", f"Apple GPU ({model or 'Apple silicon'})", int(ram * METAL_USABLE_FRACTION)),)
            gpu_note = "Metal, unified memory"
        else:
            gpu_note = "Intel Mac: no Metal offload for llama.cpp"
        return Hardware(
            system, machine, model, logical, physical, flags, ram, ram, disk_free, disk_where, gpus, gpu_note
        )

    try:
        cpuinfo = (root / "proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
        notes.append("cannot read /proc/cpuinfo")
    model, logical, physical, flags = parse_cpuinfo(cpuinfo)
    if not logical:
        logical = physical = os.cpu_count() or 1
    try:
        ram, available = parse_meminfo((root / "proc/meminfo").read_text())
    except OSError:
        ram = available = 0
        notes.append("cannot read /proc/meminfo")
    limit = cgroup_memory_limit(root)
    if limit is not None and 0 < limit < ram:
        notes.append(f"container memory limit {limit / GIB:.1f} GiB (host has {ram / GIB:.1f} GiB)")
        ram, available = limit, min(available, limit)
    gpus, gpu_note = nvidia_gpus(nvml)
    return Hardware(
        system, machine, model, logical, physical, flags, ram, available, disk_free, disk_where, gpus, gpu_note,
        tuple(notes),
    )  # fmt: skip
