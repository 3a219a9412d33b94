"""Shared pieces of the installer tests: a profile for the tiny model, a wheelhouse, tree snapshots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.install import envs
from appliance.tools.search.manage import REQUIREMENTS
from tests.conftest import SHARED_DIR

SEARXNG_SRC = SHARED_DIR / "vendor" / "searxng-src"
REPO = "bartowski/test-model-GGUF"
FILE = "test-model-Q4_K_M.gguf"

TINY_PROFILE = f"""
[profile]
name = "tiny"
description = "the random-weight test model"
device = "cpu"
rank = 1
min_context = 256
weights_size_estimate = 600000

[profile.kv]
block_count = 2
head_count_kv = 4
key_length = 16
value_length = 16

[model]
backend = "llamacpp"
repo = "{REPO}"
file = "{FILE}"
sha256 = ""
size_bytes = 0
context_length = 4096
n_gpu_layers = 0
max_tokens = 256

[agent]
keep_last = 5
max_turns = 20

[extraction]
backend = "same"
"""


def write_tiny_profile(home: Path) -> Path:
    path = home / "profiles" / "tiny.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TINY_PROFILE)
    return path


def build_wheelhouse(out: Path) -> Path:
    """Wheels for SearXNG and the sandbox (from pip's cache or the index), so installs can run offline."""
    reqs = []
    for name in REQUIREMENTS:
        reqs += ["-r", str(SEARXNG_SRC / name)]
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(out), *reqs, *envs.SANDBOX_PACKAGES]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: equal snapshots mean nothing was touched."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".lock"):
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out
