"""Describe machines for tests: a fake /proc (and cgroup) tree and a fake NVML module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3

X86_FLAGS = "fpu vme de pse tsc msr pae mce cx8 sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2"


def cpuinfo_x86(sockets: int, cores: int, threads_per_core: int, flags: str = X86_FLAGS) -> str:
    blocks = []
    n = 0
    for socket in range(sockets):
        for core in range(cores):
            for _ in range(threads_per_core):
                blocks.append(
                    f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU @ 3.0GHz\n"
                    f"physical id\t: {socket}\ncore id\t\t: {core}\nflags\t\t: {flags}\n"
                )
                n += 1
    return "\n".join(blocks) + "\n"


def cpuinfo_arm(cores: int) -> str:
    block = "processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"
    return "\n".join(block.format(n=n) for n in range(cores)) + "\n"


def meminfo(total_gib: float, available_gib: float | None = None) -> str:
    total_kb = int(total_gib * GIB / 1024)
    avail_kb = int((available_gib if available_gib is not None else total_gib * 0.8) * GIB / 1024)
    return f"MemTotal:       {total_kb} kB\nMemFree:        {avail_kb // 2} kB\nMemAvailable:   {avail_kb} kB\n"


def fake_root(
    tmp: Path, *, cpuinfo: str, ram_gib: float, available_gib: float | None = None, cgroup_max: str | None = None
) -> Path:
    (tmp / "proc").mkdir(parents=True)
    (tmp / "proc/cpuinfo").write_text(cpuinfo)
    (tmp / "proc/meminfo").write_text(meminfo(ram_gib, available_gib))
    if cgroup_max is not None:
        (tmp / "sys/fs/cgroup").mkdir(parents=True)
        (tmp / "sys/fs/cgroup/memory.max").write_text(cgroup_max + "\n")
    return tmp


class NVMLError(Exception):
    pass


@dataclass
class _Memory:
    total: int
    free: int
    used: int


class FakeNVML:
    """The part of the `pynvml` module the detector calls, describing the given cards."""

    def __init__(self, cards: list[tuple[str, float]], *, fail_init: bool = False, bytes_names: bool = False) -> None:
        self.cards = cards
        self.fail_init = fail_init
        self.bytes_names = bytes_names
        self.initialised = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.cards):
            raise NVMLError("Invalid Argument")
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        name = self.cards[handle][0]
        return name.encode() if self.bytes_names else name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        total = int(self.cards[handle][1] * GIB)
        return _Memory(total=total, free=total - 300 * 1024**2, used=300 * 1024**2)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return (8, 9)
