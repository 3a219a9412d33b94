"""The GGUF header reader, the memory plan, and the profile chooser on a table of machines."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from appliance.config import load_settings
from appliance.errors import ConfigError
from appliance.ggufmeta import KvShape, read_kv_shape, read_metadata
from appliance.install.hardware import Gpu, Hardware
from appliance.install.memplan import kv_bytes_per_token, plan_memory
from appliance.install.profiles import assess, choose, load_specs
from appliance.paths import app_dirs
from tests.fakemachine import GIB


def machine(ram_gib: float, gpus: tuple[tuple[str, float], ...] = (), vendor: str = "nvidia") -> Hardware:
    cards = tuple(Gpu(vendor, name, int(v * GIB)) for name, v in gpus)
    return Hardware("Linux", "x86_64", "cpu", 16, 8, ("avx2",), int(ram_gib * GIB), int(ram_gib * GIB), 500 * GIB,
                    "/", cards)  # fmt: skip


# ------------------------------------------------------------------ GGUF header


def test_header_reader_agrees_with_the_gguf_package(tiny_gguf: Path) -> None:
    ours = read_metadata(tiny_gguf)
    reader = gguf.GGUFReader(tiny_gguf)
    for key in ("general.architecture", "llama.block_count", "llama.attention.head_count_kv", "llama.context_length"):
        field = reader.fields[key]
        theirs = field.contents()
        assert ours[key] == theirs, key
    assert ours["tokenizer.ggml.tokens"] == reader.fields["tokenizer.ggml.tokens"].contents()
    shape = read_kv_shape(tiny_gguf)
    assert shape == KvShape(2, 4, 16, 16, "llama", 4096)


def test_kv_size_matches_what_llama_cpp_allocates(tiny_gguf: Path) -> None:
    n_ctx = 8192
    code = f"import llama_cpp; llama_cpp.Llama({str(tiny_gguf)!r}, n_ctx={n_ctx}, verbose=True)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    match = re.search(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells", out.stderr)
    assert match, out.stderr[-2000:]
    assert int(match.group(2)) == n_ctx
    llama_bytes = float(match.group(1)) * 1024**2
    assert kv_bytes_per_token(read_kv_shape(tiny_gguf)) * n_ctx == pytest.approx(llama_bytes, rel=0.01)


def test_long_arrays_are_skipped_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(3)
    writer.add_array("big.ints", list(range(5000)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    metadata = read_metadata(path)
    assert metadata["big.ints"] is None
    assert metadata["llama.block_count"] == 3


def test_damaged_headers_are_refused_quickly(tmp_path: Path, tiny_gguf: Path) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"<html>not found</html>")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        read_metadata(not_gguf)
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[:300])
    with pytest.raises(ConfigError, match="damaged GGUF header"):
        read_metadata(truncated)
    hostile = tmp_path / "h.gguf"  # one key claiming a 2**60-byte name
    hostile.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**60))
    with pytest.raises(ConfigError, match="damaged GGUF header"):
        read_metadata(hostile)


# ------------------------------------------------------------------ memory plan


def test_kv_per_token_for_the_real_models() -> None:
    assert kv_bytes_per_token(KvShape(36, 8, 128, 128)) == 147_456  # Qwen3-8B: 144 KiB a token
    assert kv_bytes_per_token(KvShape(48, 4, 128, 128)) == 98_304  # Qwen3-30B-A3B
    assert kv_bytes_per_token(KvShape(80, 8, 128, 128)) == 327_680  # Qwen2.5-72B
    assert kv_bytes_per_token(KvShape(36, 8, 128, 128), "q8_0") == 147_456 * 17 // 32


def test_context_is_lowered_to_fit_instead_of_failing_later() -> None:
    kv = 147_456
    roomy = plan_memory(device="cpu", budget_bytes=20 * GIB, weights_bytes=5 * GIB, kv_per_token=kv,
                        requested_context=32768, min_context=8192)  # fmt: skip
    assert roomy.fits and not roomy.lowered and roomy.context == 32768
    tight = plan_memory(device="cpu", budget_bytes=9 * GIB, weights_bytes=5 * GIB, kv_per_token=kv,
                        requested_context=32768, min_context=8192)  # fmt: skip
    assert tight.fits and tight.lowered
    assert tight.context % 1024 == 0
    assert tight.total_bytes <= tight.budget_bytes < tight.total_bytes + 1024 * kv
    assert "lowered from 32,768" in tight.describe()
    hopeless = plan_memory(device="cpu", budget_bytes=6 * GIB, weights_bytes=5 * GIB, kv_per_token=kv,
                           requested_context=32768, min_context=8192)  # fmt: skip
    assert not hopeless.fits
    assert hopeless.shortfall_bytes() == 5 * GIB + 8192 * kv + GIB - 6 * GIB
    assert "does NOT fit" in hopeless.describe()


def test_trained_context_caps_the_request() -> None:
    plan = plan_memory(device="gpu", budget_bytes=80 * GIB, weights_bytes=GIB, kv_per_token=1000,
                       requested_context=65536, min_context=8192, trained_context=40960)  # fmt: skip
    assert plan.context == 40960
    assert plan.fits


# ------------------------------------------------------------------ chooser

# (description, hardware, expected profile, context lowered?)
MACHINES = [
    ("8 GiB laptop", machine(8), "remote", None),
    ("12 GiB laptop", machine(12), "cpu-8b", True),
    ("16 GiB desktop", machine(16), "cpu-8b", False),
    ("24 GiB workstation", machine(24), "cpu-30b-a3b", True),
    ("32 GiB workstation", machine(32), "cpu-30b-a3b", False),
    ("16 GiB + 4 GiB GTX 1650", machine(16, (("GTX 1650", 4),)), "cpu-8b", False),
    ("16 GiB + 8 GiB RTX 3070", machine(16, (("RTX 3070", 8),)), "gpu-8b", True),
    ("64 GiB + 24 GiB RTX 4090", machine(64, (("RTX 4090", 24),)), "gpu-30b-a3b", True),
    ("128 GiB + 48 GiB A6000", machine(128, (("A6000", 48),)), "gpu-30b-a3b", False),
    ("256 GiB + 80 GiB H100", machine(256, (("H100", 80),)), "gpu-72b", False),
    ("256 GiB + 2 x 48 GiB", machine(256, (("A6000", 48), ("A6000", 48))), "gpu-72b", False),
    ("Apple M1 16 GiB", machine(16, (("Apple M1", 12),), vendor="apple"), "gpu-8b", True),
    ("Apple M2 Max 64 GiB", machine(64, (("Apple M2 Max", 48),), vendor="apple"), "gpu-30b-a3b", False),
]


@pytest.mark.parametrize(("label", "hardware", "expected", "lowered"), MACHINES, ids=[m[0] for m in MACHINES])
def test_auto_picks_the_best_profile_that_fits(
    appliance_home: Path, label: str, hardware: Hardware, expected: str, lowered: bool | None
) -> None:
    chosen, fits = choose(load_specs(app_dirs()), hardware)
    assert chosen.name == expected, [(f.spec.name, f.usable, f.reason) for f in fits]
    fit = next(f for f in fits if f.spec.name == expected)
    if lowered is None:
        assert fit.plan is None
    else:
        assert fit.plan is not None and fit.plan.fits
        assert fit.plan.lowered is lowered
    # The choice is never a profile that does not fit, and every unusable one says why.
    for other in fits:
        if not other.usable:
            assert other.reason


def test_gpu_profiles_need_a_gpu(appliance_home: Path) -> None:
    specs = {s.name: s for s in load_specs(app_dirs())}
    fit = assess(specs["gpu-8b"], machine(512))
    assert not fit.usable and "no CUDA or Metal GPU" in fit.reason


def test_every_shipped_profile_loads_and_is_complete(appliance_home: Path) -> None:
    specs = load_specs(app_dirs())
    names = {s.name for s in specs}
    assert {"cpu-8b", "cpu-30b-a3b", "gpu-8b", "gpu-30b-a3b", "gpu-72b", "remote"} <= names
    assert {"cpu-30b-v1.5", "gpu-30b-v1.5", "cpu-30b-1.7-mini", "gpu-30b-1.7-mini"} <= names
    for spec in specs:
        settings = load_settings(profile=spec.name, environ={"APPLIANCE_HOME": str(appliance_home)})
        assert settings.agent.keep_last >= 1 and settings.agent.max_turns >= 1
        assert settings.extraction.backend in ("same", "openai", "llamacpp")
        if spec.local:
            version = settings.model.version
            assert version in ("1.0", "1.5", "1.7"), spec.name  # read from the file name
            assert spec.repo.startswith("bartowski/miromind-ai_MiroThinker-")
            assert spec.file.endswith(".gguf") and spec.file.startswith("miromind-ai_MiroThinker-")
            assert settings.agent.max_turns == {"1.0": 600, "1.5": 400, "1.7": 200}[version]
            assert settings.agent.retry_with_summary == (version != "1.7")
            # Weights nobody could check are installed only when named.
            assert spec.auto == (version == "1.0")
            assert spec.kv is not None and spec.weights_size_estimate > 1e9
            # Either pinned exactly or explicitly left to the hub's published values.
            assert (len(spec.sha256) == 64) or (spec.sha256 == "" and spec.size_bytes == 0)
            assert settings.model.n_gpu_layers == (-1 if spec.device == "gpu" else 0)
