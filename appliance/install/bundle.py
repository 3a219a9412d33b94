"""Air-gapped bundles: everything the appliance needs, in one directory with a manifest.

Layout of a bundle:
    manifest.json     format, versions, platform, profile, model, and sha256 + size of every file
    SHA256SUMS        the same sums for `sha256sum -c` (install.sh checks them before Python runs)
    install.sh        the bootstrap: `bash BUNDLE/install.sh --bundle BUNDLE`
    profile.toml      the profile the bundle was made for
    wheels/           the appliance and all its dependencies, llama-cpp-python built for this machine
    searxng/src/      SearXNG's source;  searxng/wheels/  its requirements
    sandbox/wheels/   the sandbox's packages
    models/FILE.gguf  the verified weights
    corpora/, zim/    optional local corpora and Kiwix ZIM archives

`install` verifies every checksum and refuses a damaged, tampered, truncated or
padded bundle before it writes anything, then installs with no network at all
(pip sees only the bundle's wheels).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from appliance import __version__
from appliance.config import builtin_profiles_dir, find_profile, load_settings
from appliance.errors import ApplianceError, ComponentUnavailable, ConfigError
from appliance.ggufmeta import read_kv_shape
from appliance.install import envs, weights
from appliance.install.configfile import update_config
from appliance.install.hardware import Hardware, detect
from appliance.install.profiles import ProfileSpec, load_spec, plan_for
from appliance.paths import AppDirs
from appliance.tools.search.manage import REQUIREMENTS

FORMAT = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
UNLISTED_OK = frozenset({MANIFEST, SUMS})

Log = Callable[[str], None]


class BundleError(ApplianceError):
    """A bundle that cannot be trusted or used; nothing was installed."""


def sha256_of(path: Path) -> str:
    return weights.sha256_file(path)


def platform_tag() -> str:
    return sysconfig.get_platform()


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


# ------------------------------------------------------------------ create


def _pip_wheel(args: Sequence[str], out: Path, extra_links: Sequence[Path], what: str) -> None:
    links: list[str] = []
    for directory in extra_links:
        links += ["--find-links", str(directory)]
    envs.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(out), *links, *args],
        what=what,
        fix="check the network or pip's configuration; prebuilt wheels can be added with --find-links DIR",
    )


def _place(src: Path, dst: Path) -> None:
    """Hard-link when possible (weights are gigabytes), copy otherwise."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _add_tree(src: Path, dst: Path) -> None:
    if src.is_dir():
        for path in sorted(src.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.name != envs.STAMP:
                _place(path, dst / path.relative_to(src))
    else:
        _place(src, dst / src.name)


def source_checkout() -> Path | None:
    """The checkout this appliance runs from (pip wheel builds the appliance's own wheel from it)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "appliance").is_dir() else None


@dataclass
class CreateOptions:
    out: Path
    profile: str
    source: Path | None = None
    searxng_src: str = ""
    with_weights: bool = True
    corpora: tuple[Path, ...] = ()
    zims: tuple[Path, ...] = ()
    find_links: tuple[Path, ...] = ()
    extras: tuple[str, ...] = ()
    environ: dict[str, str] | None = None
    progress: bool = True


def create(options: CreateOptions, dirs: AppDirs, log: Log) -> str:
    """Build the bundle; return the sha256 of its manifest (to check out of band on the other side)."""
    out = options.out
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty", "choose a new directory for the bundle")
    if not out.parent.is_dir():
        raise ConfigError(
            f"the folder {out.parent} does not exist", f"create it first (mkdir -p {out.parent}), or choose another OUT"
        )
    source = options.source or source_checkout()
    if source is None:
        raise ConfigError("cannot find the appliance's source to build its wheel", "pass --source CHECKOUT")
    spec = load_spec(options.profile, dirs)
    settings = load_settings(profile=spec.name, environ=options.environ)
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()

    target = f"{source}[{','.join(options.extras)}]" if options.extras else str(source)
    log("wheels: the appliance and its dependencies (llama-cpp-python from pip's cache when built before)")
    _pip_wheel([target], staging / "wheels", options.find_links, "bundle wheels")

    log("SearXNG: source and wheels")
    with tempfile.TemporaryDirectory(dir=staging) as scratch:
        tree = envs._fetch_source(
            options.searxng_src or settings.search.searxng_src or envs.SEARXNG_RELEASE_URL, Path(scratch), log
        )
        _add_tree(tree, staging / "searxng" / "src")
    reqs: list[str] = []
    for name in REQUIREMENTS:
        if (staging / "searxng" / "src" / name).is_file():
            reqs += ["-r", str(staging / "searxng" / "src" / name)]
    _pip_wheel(reqs, staging / "searxng" / "wheels", options.find_links, "bundle SearXNG wheels")

    log("sandbox: wheels")
    _pip_wheel(list(envs.SANDBOX_PACKAGES), staging / "sandbox" / "wheels", options.find_links, "bundle sandbox wheels")

    model: dict[str, Any] = {}
    if spec.local and options.with_weights:
        model = _add_weights(spec, settings.model_path(), staging / "models", options, log)
    for corpus in options.corpora:
        _add_tree(corpus, staging / "corpora")
    for zim in options.zims:
        _add_tree(zim, staging / "zim")
    shutil.copyfile(find_profile(spec.name, dirs), staging / "profile.toml")
    if (source / "installer" / "install.sh").is_file():
        shutil.copyfile(source / "installer" / "install.sh", staging / "install.sh")

    digest = write_manifest(staging, profile=spec.name, model=model)
    staging.rename(out) if not out.exists() else _move_into(staging, out)
    return digest


def _move_into(staging: Path, out: Path) -> None:
    for child in staging.iterdir():
        child.rename(out / child.name)
    staging.rmdir()


def _add_weights(
    spec: ProfileSpec, local: Path | None, models: Path, options: CreateOptions, log: Log
) -> dict[str, Any]:
    stamp = weights.verified_stamp(local, spec.sha256) if local else None
    if local is not None and stamp is not None:
        log(f"weights: {local} (verified)")
        _place(local, models / spec.file)
        return {"file": spec.file, "sha256": stamp.sha256, "repo": spec.repo, "revision": stamp.revision}
    endpoint = weights.hub_endpoint(options.environ)
    log(f"weights: downloading {spec.repo}/{spec.file}")
    remote = weights.remote_file_info(spec.repo, spec.file, endpoint=endpoint)
    path = weights.download(remote, models, endpoint=endpoint, expected_sha256=spec.sha256, progress=options.progress)
    for helper in (models / weights.STAMP_DIR, models / weights.PARTIAL_DIR):
        shutil.rmtree(helper, ignore_errors=True)
    return {"file": path.name, "sha256": remote.sha256, "repo": spec.repo, "revision": remote.revision}


def write_manifest(root: Path, *, profile: str, model: dict[str, Any]) -> str:
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in UNLISTED_OK:
            files[rel] = {"sha256": sha256_of(path), "size": path.stat().st_size}
    manifest = {
        "format": FORMAT,
        "appliance_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": profile,
        "python": python_tag(),
        "platform": platform_tag(),
        "model": model,
        "files": files,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (root / MANIFEST).write_text(text)
    (root / SUMS).write_text("".join(f"{v['sha256']}  {k}\n" for k, v in files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ verify


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict[str, Any]
    digest: str

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        files: dict[str, dict[str, Any]] = self.data["files"]
        return files

    @property
    def profile(self) -> str:
        return str(self.data["profile"])

    @property
    def model(self) -> dict[str, Any]:
        model: dict[str, Any] = self.data.get("model") or {}
        return model


def _refuse(bundle: Path, problem: str) -> BundleError:
    return BundleError(
        f"bundle {bundle} is damaged or was tampered with: {problem}; nothing was installed",
        "copy the bundle again from its source and compare the manifest digest printed by `appliance bundle create`",
    )


def _safe_relative(name: str) -> bool:
    pure = PurePosixPath(name)
    return bool(name) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in name


def _plain_name(name: object) -> bool:
    """A file name with no directory in it (a manifest's profile and weights name)."""
    return isinstance(name, str) and _safe_relative(name) and "/" not in name and name.strip() not in (".", "")


def verify(bundle: Path, *, expect_digest: str = "", check_platform: bool = True) -> Manifest:
    """Check the whole bundle against its manifest; raise BundleError on the first problem."""
    bundle = bundle.resolve()
    try:
        text = (bundle / MANIFEST).read_text()
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise _refuse(bundle, f"no readable {MANIFEST} ({exc})") from exc
    digest = hashlib.sha256(text.encode()).hexdigest()
    if expect_digest and digest != expect_digest.lower():
        raise _refuse(bundle, f"manifest digest {digest} is not the expected {expect_digest}")
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise _refuse(bundle, f"{MANIFEST} is not a format-{FORMAT} manifest")
    if check_platform and (data.get("python"), data.get("platform")) != (python_tag(), platform_tag()):
        raise BundleError(
            f"bundle {bundle} was made for Python {data.get('python')} on {data.get('platform')}, "
            f"this is Python {python_tag()} on {platform_tag()}; nothing was installed",
            "create the bundle on a machine like this one (same OS, CPU architecture and Python)",
        )
    # The profile and weights names become file names on this machine: plain names only.
    model = data.get("model") or {}
    if not _plain_name(data.get("profile")) or (model and not _plain_name(model.get("file"))):
        raise _refuse(bundle, f"unsafe profile or model file name in the manifest ({data.get('profile')!r})")
    files: dict[str, Any] = data["files"]
    for name, entry in files.items():
        if not _safe_relative(name) or not isinstance(entry, dict):
            raise _refuse(bundle, f"unsafe path {name!r} in the manifest")
        path = bundle / name
        if path.is_symlink() or not path.is_file():
            raise _refuse(bundle, f"{name} is missing or not a regular file")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise _refuse(bundle, f"{name} is {size:,} bytes, the manifest says {entry.get('size'):,}")
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle).as_posix()
        if path.is_symlink():
            raise _refuse(bundle, f"{rel} is a symbolic link")
        if path.is_file() and rel not in files and rel not in UNLISTED_OK:
            raise _refuse(bundle, f"{rel} is not in the manifest")
    for name, entry in files.items():
        if sha256_of(bundle / name) != entry.get("sha256"):
            raise _refuse(bundle, f"{name} does not match its sha256")
    if (bundle / SUMS).is_file():
        sums = {line[66:].strip(): line[:64] for line in (bundle / SUMS).read_text().splitlines() if line.strip()}
        if sums != {k: v["sha256"] for k, v in files.items()}:
            raise _refuse(bundle, f"{SUMS} disagrees with {MANIFEST}")
    if model and files.get(f"models/{model.get('file')}", {}).get("sha256") != model.get("sha256"):
        raise _refuse(bundle, "the weights are not the ones the manifest's model entry names")
    return Manifest(bundle, data, digest)


# ------------------------------------------------------------------ install


def install(
    bundle: Path,
    dirs: AppDirs,
    log: Log,
    *,
    expect_digest: str = "",
    hardware: Hardware | None = None,
    environ: dict[str, str] | None = None,
) -> list[str]:
    """Verify, then install from the bundle with no network. Returns what changed."""
    log(f"verifying {bundle} ...")
    manifest = verify(bundle, expect_digest=expect_digest)
    root = manifest.root
    log(f"bundle ok: {len(manifest.files)} files, manifest sha256 {manifest.digest}")
    changed: list[str] = []
    dirs.data_dir.mkdir(parents=True, exist_ok=True)

    name = manifest.profile
    builtin = builtin_profiles_dir() / f"{name}.toml"
    if not builtin.is_file() or builtin.read_bytes() != (root / "profile.toml").read_bytes():
        user_profile = dirs.config_dir / "profiles" / f"{name}.toml"
        if not user_profile.is_file() or user_profile.read_bytes() != (root / "profile.toml").read_bytes():
            user_profile.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / "profile.toml", user_profile)
            changed.append(f"profile {user_profile}")
    spec = load_spec(name, dirs)
    updates: dict[str, Any] = {"profile": name}

    model = manifest.model
    if model:
        settings = load_settings(profile=name, environ=environ)
        target = settings.model_path() or dirs.models_dir / model["file"]
        if weights.verified_stamp(target, model["sha256"]) is None:
            log(f"weights -> {target}")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".bundle-tmp")
            shutil.copyfile(root / "models" / model["file"], tmp)
            try:
                size = manifest.files[f"models/{model['file']}"]["size"]
                weights.verify_file(tmp, model["sha256"], size, progress=False)  # the copy, hashed again
            except ComponentUnavailable:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(target)
            weights.write_stamp(target, model["sha256"], repo=model.get("repo", ""), revision=model.get("revision", ""))
            changed.append(f"weights {target}")
        hw = hardware or detect(disk_path=dirs.data_dir)
        memory = plan_for(spec, hw, kv=read_kv_shape(target), weights_bytes=target.stat().st_size)
        if memory is not None:
            if not memory.fits:
                log(f"warning: {memory.describe()}")
            updates["model"] = {"context_length": memory.context if memory.lowered and memory.fits else None}

    sx = envs.install_searxng(
        str(root / "searxng" / "src"), dirs.data_dir, envs.PipSource((root / "searxng" / "wheels",)), log
    )
    if sx.changed:
        changed.append(f"SearXNG {sx.venv}")
    updates["search"] = {"searxng_src": str(sx.src), "searxng_venv": str(sx.venv)}

    python, sandbox_changed = envs.install_sandbox_env(
        dirs.data_dir, envs.PipSource((root / "sandbox" / "wheels",)), log
    )
    problem = envs.check_imports(python, envs.SANDBOX_PACKAGES)
    if problem:
        raise ComponentUnavailable("sandbox python", f"the sandbox's Python cannot import: {problem}", None)
    if sandbox_changed:
        changed.append(f"sandbox Python {python}")
    updates["sandbox"] = {"python": str(python)}

    for kind in ("corpora", "zim"):
        if (root / kind).is_dir():
            dest = dirs.data_dir / kind
            for path in sorted((root / kind).rglob("*")):
                if path.is_file():
                    target_file = dest / path.relative_to(root / kind)
                    # verify() hashed the bundle's copy already: its sum is in the manifest.
                    want = manifest.files[path.relative_to(root).as_posix()]["sha256"]
                    if not target_file.is_file() or sha256_of(target_file) != want:
                        target_file.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, target_file)
                        changed.append(f"{kind} {target_file}")
    zims = sorted(str(p) for p in (dirs.data_dir / "zim").rglob("*.zim")) if (root / "zim").is_dir() else []
    if zims:
        updates["search"]["zim_paths"] = zims
    dbs = sorted((dirs.data_dir / "corpora").rglob("*.db")) if (root / "corpora").is_dir() else []
    if len(dbs) == 1:
        updates["search"]["corpus_db"] = str(dbs[0])

    changes = update_config(dirs.config_file, updates)
    if changes:
        changed.append(f"config {dirs.config_file}")
    load_settings(environ=environ)
    return changed
