"""Air-gapped bundles: a round trip into a fresh prefix with no network, and tampered bundles refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_cli
from tests.fakehub import HubFile, HubState, serve_hub
from tests.installfixtures import FILE, REPO, SEARXNG_SRC, build_wheelhouse, snapshot, write_tiny_profile

pytestmark = pytest.mark.slow


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[tuple[Path, str]]:
    """A bundle of the tiny profile, made on a 'connected' machine: the fake hub and pip's index or cache."""
    work = tmp_path_factory.mktemp("maker")
    home = work / "home"
    write_tiny_profile(home)
    wheelhouse = build_wheelhouse(work / "wheelhouse")
    (work / "corpus.db").write_bytes(b"SQLite format 3\0" + b"\0" * 84)
    (work / "wiki.zim").write_bytes(b"ZIM\x04" + os.urandom(1000))
    state = HubState([HubFile(REPO, FILE, tiny_gguf.read_bytes())])
    with serve_hub(state) as url:
        proc = run_cli(
            ["bundle", "create", str(work / "bundle"), "--profile", "tiny", "--searxng-src", str(SEARXNG_SRC),
             "--find-links", str(wheelhouse), "--corpus", str(work / "corpus.db"), "--zim", str(work / "wiki.zim"),
             "-q"],
            env={"APPLIANCE_HOME": str(home), "HF_ENDPOINT": url, "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
            timeout=1200,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    digest = proc.stdout.split("manifest sha256: ")[1].split()[0]
    yield work / "bundle", digest


def test_the_bundle_holds_everything_with_a_sum_for_every_file(bundle: tuple[Path, str], tiny_gguf: Path) -> None:
    root, _ = bundle
    manifest = json.loads((root / "manifest.json").read_text())
    files = manifest["files"]
    names = set(files)
    assert any(n.startswith("wheels/llama_cpp_python-") for n in names)
    assert any(n.startswith("wheels/appliance-") for n in names)
    assert any(n.startswith("searxng/wheels/flask-") or n.startswith("searxng/wheels/Flask-") for n in names)
    assert "searxng/src/searx/webapp.py" in names
    assert any(n.startswith("sandbox/wheels/pandas-") for n in names)
    assert f"models/{FILE}" in names and "corpora/corpus.db" in names and "zim/wiki.zim" in names
    assert "install.sh" in names and "profile.toml" in names
    assert (root / f"models/{FILE}").read_bytes() == tiny_gguf.read_bytes()
    assert manifest["model"]["sha256"] == files[f"models/{FILE}"]["sha256"]
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == names | {"manifest.json", "SHA256SUMS"}
    sums = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout


@pytest.mark.skipif(not _unshare_works(), reason="needs user namespaces (unshare -rn) to cut the network")
def test_round_trip_into_a_fresh_prefix_with_no_network(bundle: tuple[Path, str], tmp_path: Path) -> None:
    root, digest = bundle
    home, prefix = tmp_path / "home", tmp_path / "prefix"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "PYTHON"))}
    env.update({"APPLIANCE_HOME": str(home), "HOME": str(tmp_path), "APPLIANCE_INSTALL_PYTHON": sys.executable,
                "HF_ENDPOINT": "http://127.0.0.1:9"})  # fmt: skip
    # No network at all inside: only a loopback interface that is down.
    probe = subprocess.run(["unshare", "-rn", sys.executable, "-c",
                            "import socket; socket.create_connection(('127.0.0.1', 22), timeout=2)"],
                           capture_output=True, text=True)  # fmt: skip
    assert probe.returncode != 0 and "Network is unreachable" in probe.stderr
    proc = subprocess.run(
        ["unshare", "-rn", "bash", str(root / "install.sh"), "--prefix", str(prefix), "--no-run",
         "--bundle-digest", digest],
        capture_output=True, text=True, env=env, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    app = prefix / "venv" / "bin" / "appliance"
    assert app.exists()
    config = tomllib.loads((home / "config.toml").read_text())
    assert config["profile"] == "tiny"
    assert (home / "profiles" / "tiny.toml").is_file()
    assert (home / "models" / FILE).is_file()
    assert config["search"]["zim_paths"] == [str(home / "zim" / "wiki.zim")]
    assert config["search"]["corpus_db"] == str(home / "corpora" / "corpus.db")
    assert Path(config["search"]["searxng_venv"], "bin", "granian").exists()
    check = subprocess.run([config["sandbox"]["python"], "-c", "import numpy, pandas, matplotlib, openpyxl, pypdf"])
    assert check.returncode == 0
    # The installed appliance (from the bundle's wheel, not this checkout) sees a verified model.
    doctor = subprocess.run(["unshare", "-rn", str(app), "doctor", "--json"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)  # fmt: skip
    status = {c["component"]: c["status"] for c in json.loads(doctor.stdout)["checks"]}
    for component in ("model", "sandbox Python", "llama-cpp-python", "memory"):
        assert status[component] == "ok", doctor.stdout
    assert status["SearXNG"] == "fail"  # not started: the installer installs it, `appliance searxng start` runs it

    # Installing the same bundle again changes nothing.
    before = snapshot(home)
    again = subprocess.run(["unshare", "-rn", str(app), "bundle", "install", str(root)], capture_output=True,
                           text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert snapshot(home) == before


def _copy(bundle: Path, to: Path) -> Path:
    """A hard-linked copy: cheap, and a file replaced in it leaves the original alone."""
    subprocess.run(["cp", "-al", str(bundle), str(to)], check=True)
    return to


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _installed(home: Path) -> dict[str, tuple[int, int]]:
    write_tiny_profile(home)
    (home / "config.toml").write_text('profile = "tiny"\n')
    (home / "models").mkdir()
    (home / "models" / FILE).write_bytes(b"an existing installation")
    return snapshot(home)


def _tamper_wheel(root: Path) -> str:
    wheel = next((root / "wheels").glob("appliance-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    _replace(wheel, bytes(data))
    return "does not match its sha256"


def _truncate_weights(root: Path) -> str:
    weights = root / "models" / FILE
    _replace(weights, weights.read_bytes()[:1000])
    return "the manifest says"


def _add_a_file(root: Path) -> str:
    (root / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    return "is not in the manifest"


def _escape_the_bundle(root: Path) -> str:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "size": 1}
    _replace(root / "manifest.json", json.dumps(manifest).encode())
    return "unsafe path"


def _swap_weights_and_manifest(root: Path) -> str:
    """Consistent sums for other weights: only the digest from `bundle create` catches this."""
    import hashlib

    evil = b"GGUF" + b"\0" * 5000
    _replace(root / "models" / FILE, evil)
    manifest = json.loads((root / "manifest.json").read_text())
    sha = hashlib.sha256(evil).hexdigest()
    manifest["files"][f"models/{FILE}"] = {"sha256": sha, "size": len(evil)}
    manifest["model"]["sha256"] = sha
    _replace(root / "manifest.json", json.dumps(manifest).encode())
    (root / "SHA256SUMS").unlink()
    return "manifest digest"


def _weights_named_outside(root: Path) -> str:
    """Weights named by an absolute path: the key "models//abs" passes a '..' check, and models_dir / "/abs" is /abs."""
    victim = root.parent / "victim.gguf"
    weights = root / "models" / FILE
    inside = root / "models" / str(victim).lstrip("/")
    inside.parent.mkdir(parents=True)
    weights.rename(inside)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["files"].pop(f"models/{FILE}")
    manifest["files"][f"models/{victim}"] = manifest["files"][f"models/{str(victim).lstrip('/')}"] = entry
    manifest["model"]["file"] = str(victim)
    _replace(root / "manifest.json", json.dumps(manifest).encode())
    (root / "SHA256SUMS").unlink()
    return "unsafe profile or model file name"


def _profile_named_outside(root: Path) -> str:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["profile"] = "../../victim"
    _replace(root / "manifest.json", json.dumps(manifest).encode())
    return "unsafe profile or model file name"


@pytest.mark.parametrize(
    ("tamper", "with_digest"),
    [(_tamper_wheel, True), (_tamper_wheel, False), (_truncate_weights, False), (_add_a_file, False),
     (_escape_the_bundle, False), (_escape_the_bundle, True), (_swap_weights_and_manifest, True),
     (_weights_named_outside, False), (_profile_named_outside, False)],
)  # fmt: skip
def test_a_tampered_bundle_is_refused_before_anything_changes(
    bundle: tuple[Path, str], tmp_path: Path, tamper: object, with_digest: bool
) -> None:
    root, digest = bundle
    copy = _copy(root, tmp_path / "copy")
    assert callable(tamper)
    expected = tamper(copy)
    if with_digest and tamper in (_escape_the_bundle, _swap_weights_and_manifest):
        expected = "manifest digest"  # any change to the manifest is caught first by the digest
    home = tmp_path / "home"
    home.mkdir()
    before = _installed(home)
    args = ["bundle", "install", str(copy), *(["--digest", digest] if with_digest else [])]
    proc = run_cli(args, env={"APPLIANCE_HOME": str(home)})
    assert proc.returncode == 2, proc.stderr
    assert "damaged or was tampered with" in proc.stderr and expected in proc.stderr
    assert "nothing was installed" in proc.stderr
    assert snapshot(home) == before
    assert not (tmp_path / "victim.gguf").exists() and not (tmp_path / "victim.toml").exists()


def test_install_sh_refuses_a_tampered_bundle_before_creating_anything(
    bundle: tuple[Path, str], tmp_path: Path
) -> None:
    root, _ = bundle
    copy = _copy(root, tmp_path / "copy")
    _tamper_wheel(copy)
    env = {**os.environ, "HOME": str(tmp_path), "APPLIANCE_INSTALL_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(copy / "install.sh"), "--prefix", str(tmp_path / "prefix"), "--no-run"],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout + proc.stderr
    assert not (tmp_path / "prefix" / "venv" / "bin" / "appliance").exists()


def test_a_bundle_for_another_platform_is_refused(bundle: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = bundle
    copy = _copy(root, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["platform"] = "macosx-14.0-arm64"
    _replace(copy / "manifest.json", json.dumps(manifest).encode())
    proc = run_cli(["bundle", "install", str(copy)], env={"APPLIANCE_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2
    assert "made for Python" in proc.stderr and "macosx-14.0-arm64" in proc.stderr
    assert not (tmp_path / "home").exists()


def test_the_source_checkout_is_found_for_the_wheel() -> None:
    from appliance.install.bundle import source_checkout

    assert source_checkout() == REPO_ROOT
    assert shutil.which("sha256sum")
