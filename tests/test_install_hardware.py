"""Hardware detection from faked /proc data and a faked NVML, and the real NVML path without a driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.install.hardware import Gpu, Hardware, detect, parse_cpuinfo, parse_meminfo
from tests.fakemachine import GIB, FakeNVML, cpuinfo_arm, cpuinfo_x86, fake_root, meminfo


def test_x86_cores_threads_and_instruction_sets(tmp_path: Path) -> None:
    root = fake_root(tmp_path / "m", cpuinfo=cpuinfo_x86(sockets=2, cores=4, threads_per_core=2), ram_gib=64)
    hw = detect(disk_path=tmp_path, root=root, nvml=FakeNVML([]), system="Linux", machine="x86_64")
    assert hw.logical_cores == 16
    assert hw.physical_cores == 8
    assert {"avx2", "fma", "f16c"} <= set(hw.cpu_flags)
    assert "avx512f" not in hw.cpu_flags
    assert hw.cpu_model == "Test CPU @ 3.0GHz"
    assert hw.ram_bytes == 64 * GIB
    assert hw.gpus == () and hw.gpu_kind == "none"


def test_arm_features_line_counts_as_flags(tmp_path: Path) -> None:
    root = fake_root(tmp_path / "m", cpuinfo=cpuinfo_arm(6), ram_gib=8)
    hw = detect(disk_path=tmp_path, root=root, nvml=FakeNVML([]), system="Linux", machine="aarch64")
    assert (hw.logical_cores, hw.physical_cores) == (6, 6)
    assert "asimd" in hw.cpu_flags
    assert "asimd" in hw.summary()


def test_meminfo_total_and_available() -> None:
    total, available = parse_meminfo(meminfo(31.3, 20.5))
    assert total == pytest.approx(31.3 * GIB, rel=1e-6)
    assert available == pytest.approx(20.5 * GIB, rel=1e-6)


def test_container_memory_limit_wins_over_host_ram(tmp_path: Path) -> None:
    root = fake_root(tmp_path / "m", cpuinfo=cpuinfo_x86(1, 4, 1), ram_gib=128, cgroup_max=str(16 * GIB))
    hw = detect(disk_path=tmp_path, root=root, nvml=FakeNVML([]), system="Linux", machine="x86_64")
    assert hw.ram_bytes == 16 * GIB
    assert any("container memory limit" in n for n in hw.notes)
    unlimited = fake_root(tmp_path / "u", cpuinfo=cpuinfo_x86(1, 4, 1), ram_gib=128, cgroup_max="max")
    assert detect(disk_path=tmp_path, root=unlimited, nvml=FakeNVML([])).ram_bytes == 128 * GIB


def test_nvidia_gpus_with_vram_from_nvml(tmp_path: Path) -> None:
    root = fake_root(tmp_path / "m", cpuinfo=cpuinfo_x86(1, 8, 2), ram_gib=64)
    nvml = FakeNVML([("NVIDIA GeForce RTX 4090", 24), ("NVIDIA RTX A6000", 48)], bytes_names=True)
    hw = detect(disk_path=tmp_path, root=root, nvml=nvml, system="Linux", machine="x86_64")
    assert [g.name for g in hw.gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA RTX A6000"]
    assert hw.vram_bytes == 72 * GIB
    assert hw.gpu_kind == "cuda"
    assert hw.gpus[0].compute_capability == "8.9"
    assert (nvml.initialised, nvml.shutdowns) == (1, 1)


def test_nvml_without_a_driver_means_no_gpu_and_says_why(tmp_path: Path) -> None:
    root = fake_root(tmp_path / "m", cpuinfo=cpuinfo_x86(1, 2, 1), ram_gib=8)
    hw = detect(disk_path=tmp_path, root=root, nvml=FakeNVML([("x", 8)], fail_init=True), system="Linux")
    assert hw.gpus == ()
    assert "no NVIDIA driver" in hw.gpu_note


def test_real_nvidia_ml_py_on_this_machine_without_a_gpu(tmp_path: Path) -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is in the test extra")
    hw = detect(disk_path=tmp_path)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert hw.gpus == ()
        assert "no NVIDIA driver" in hw.gpu_note
    else:  # a machine with a GPU: the detector must see the same count
        assert len(hw.gpus) == pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()


def test_apple_silicon_is_metal_with_unified_memory(tmp_path: Path) -> None:
    values = {"hw.memsize": str(32 * GIB), "hw.logicalcpu": "10", "hw.physicalcpu": "10",
              "machdep.cpu.brand_string": "Apple M2 Pro"}  # fmt: skip
    hw = detect(disk_path=tmp_path, system="Darwin", machine="arm64", sysctl=values.get)
    assert hw.gpu_kind == "metal"
    assert hw.vram_bytes == 24 * GIB  # three quarters of unified memory
    assert hw.ram_bytes == 32 * GIB
    intel = detect(disk_path=tmp_path, system="Darwin", machine="x86_64", sysctl=values.get)
    assert intel.gpu_kind == "none"


def test_disk_free_is_measured_at_the_nearest_existing_parent(tmp_path: Path) -> None:
    root = fake_root(tmp_path / "m", cpuinfo=cpuinfo_x86(1, 1, 1), ram_gib=4)
    hw = detect(disk_path=tmp_path / "not" / "yet" / "there", root=root, nvml=FakeNVML([]))
    assert hw.disk_path == str(tmp_path)
    assert hw.disk_free_bytes > 0


def test_hardware_round_trips_through_json() -> None:
    hw = Hardware("Linux", "x86_64", "cpu", 8, 4, ("avx2",), 16 * GIB, 8 * GIB, 100 * GIB, "/",
                  (Gpu("nvidia", "RTX", 8 * GIB, "8.6"),), "", ("n",))  # fmt: skip
    assert Hardware.from_json(hw.to_json()) == hw


def test_garbage_cpuinfo_does_not_crash() -> None:
    model, logical, physical, flags = parse_cpuinfo("no colon here\n\n:::\nprocessor : x\n")
    assert (model, logical, physical, flags) == ("", 0, 0, ())
