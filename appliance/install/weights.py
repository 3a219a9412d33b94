"""Model weights: what the hub publishes, the download, and the sha256 check.

The download is huggingface-hub's HTTP code (the resolve request with the
hub's headers, the CDN redirect, `http_get` with its progress bar, retries and
Range requests) and honours `HF_ENDPOINT` for a local mirror. The partial file
is kept in `models/.partial/` so an interrupted download resumes in the next
run. The sha256 is checked by us afterwards, against the profile's pinned
value or, when the profile leaves it empty, the hub's published LFS sha256
(the file metadata API; the X-Linked-Etag header as a fallback). A file that
does not match is deleted and the install fails: nobody runs on bytes nobody
vouched for.

A verified file gets a stamp (size, mtime, sha256) so later runs and
`appliance doctor` need not hash gigabytes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ComponentUnavailable

DEFAULT_ENDPOINT = "https://huggingface.co"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
STAMP_DIR = ".verified"
PARTIAL_DIR = ".partial"
CHUNK = 8 * 1024 * 1024


def hub_endpoint(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    file: str
    revision: str  # the commit the sha256 belongs to: the download asks for exactly that
    sha256: str
    size: int
    source: str  # which hub answer gave the sha256


# A profile's repository or file can be wrong (named before anyone could check it): say how to name the real ones.
_NAME_THE_WEIGHTS = (
    "name the weights: appliance install --profile PROFILE --repo OWNER/NAME --file NAME.gguf "
    "(or fix [model] repo and file in the profile)"
)


def _unreachable(endpoint: str, repo: str, exc: Exception) -> ComponentUnavailable:
    return ComponentUnavailable(
        "model",
        f"cannot ask {endpoint} about {repo}: {type(exc).__name__}: {exc}",
        "check the network, set HF_ENDPOINT to a reachable mirror, or install from a bundle (appliance bundle install)",
    )


def remote_file_info(repo: str, file: str, *, endpoint: str, revision: str = "main") -> RemoteFile:
    """The sha256 and size the hub publishes for `file`, and the commit they belong to."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True)
    except RepositoryNotFoundError as exc:
        raise ComponentUnavailable("model", f"{endpoint} has no repository {repo}", _NAME_THE_WEIGHTS) from exc
    except Exception as exc:
        raise _unreachable(endpoint, repo, exc) from exc
    commit = info.sha or revision
    sibling = next((s for s in info.siblings or [] if s.rfilename == file), None)
    if sibling is None:
        ggufs = sorted(s.rfilename for s in info.siblings or [] if s.rfilename.endswith(".gguf"))
        listing = f"; its GGUF files: {', '.join(ggufs[:8])}" + (" ..." if len(ggufs) > 8 else "") if ggufs else ""
        raise ComponentUnavailable("model", f"{repo} has no file {file}{listing}", _NAME_THE_WEIGHTS)
    if sibling.lfs is not None and SHA256_RE.match(sibling.lfs.sha256 or ""):
        return RemoteFile(repo, file, commit, sibling.lfs.sha256, int(sibling.lfs.size), "file metadata API")
    # Some mirrors answer model info without blob metadata: the resolve headers carry it too.
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, file, revision=commit, endpoint=endpoint), endpoint=endpoint)
    except (EntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise _unreachable(endpoint, repo, exc) from exc
    etag = (meta.etag or "").strip('"').lower()
    if not SHA256_RE.match(etag) or not meta.size:
        raise ComponentUnavailable(
            "model",
            f"{endpoint} publishes no sha256 for {repo}/{file}",
            "pin [model] sha256 and size_bytes in the profile, or use a hub that serves LFS metadata",
        )
    return RemoteFile(repo, file, meta.commit_hash or commit, etag, int(meta.size), "X-Linked-Etag header")


# ------------------------------------------------------------------ verification


def sha256_file(path: Path, *, progress: bool = False) -> str:
    digest = hashlib.sha256()
    bar: Any = None
    if progress:
        tqdm = importlib.import_module("tqdm.auto").tqdm
        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", leave=False)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return digest.hexdigest()


@dataclass(frozen=True)
class Stamp:
    sha256: str
    size: int
    mtime_ns: int
    repo: str = ""
    revision: str = ""


def stamp_path(path: Path) -> Path:
    return path.parent / STAMP_DIR / f"{path.name}.json"


def read_stamp(path: Path) -> Stamp | None:
    try:
        return Stamp(**json.loads(stamp_path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_stamp(path: Path, sha256: str, *, repo: str = "", revision: str = "") -> Stamp:
    st = path.stat()
    stamp = Stamp(sha256, st.st_size, st.st_mtime_ns, repo, revision)
    target = stamp_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(stamp)))
    tmp.replace(target)
    return stamp


def verified_stamp(path: Path, expected_sha256: str = "") -> Stamp | None:
    """The stamp, if the file is still exactly the one that was verified (and is the expected one)."""
    stamp = read_stamp(path)
    if stamp is None or not path.is_file():
        return None
    st = path.stat()
    if (st.st_size, st.st_mtime_ns) != (stamp.size, stamp.mtime_ns):
        return None
    if expected_sha256 and stamp.sha256 != expected_sha256.lower():
        return None
    return stamp


def verify_file(path: Path, sha256: str, size: int, *, progress: bool = False) -> None:
    """Raise (and delete nothing) unless `path` has exactly this size and sha256."""
    actual_size = path.stat().st_size
    if size and actual_size != size:
        raise ComponentUnavailable(
            "model",
            f"{path.name} is {actual_size:,} bytes, expected {size:,}",
            "run `appliance install` again to resume or redo the download",
        )
    actual = sha256_file(path, progress=progress)
    if actual != sha256.lower():
        raise ComponentUnavailable(
            "model",
            f"{path.name} has sha256 {actual}, expected {sha256}; the file was deleted",
            "run `appliance install` again; if it repeats, the mirror (HF_ENDPOINT) serves a different file",
        )


# ------------------------------------------------------------------ download


def partial_path(models_dir: Path, file: str, sha256: str) -> Path:
    """Where the bytes of an unfinished download wait for the next run (named by what they must become)."""
    return models_dir / PARTIAL_DIR / f"{file}.{sha256[:16]}.part"


def download(
    remote: RemoteFile, models_dir: Path, *, endpoint: str, expected_sha256: str = "", progress: bool = True
) -> Path:
    """Download (or resume) `remote` into `models_dir`, check its sha256, stamp it; return its path.

    huggingface-hub does the HTTP: the resolve request with the hub's headers,
    the redirect to the CDN, the ranged GET with its own retries and progress
    bar. The partial file is ours, so an interrupted run (Ctrl-C, a lost
    network, a reboot) resumes in the next one: `hf_hub_download` itself
    deletes its temporary file on failure.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils._headers import build_hf_headers

    want = (expected_sha256 or remote.sha256).lower()
    if expected_sha256 and remote.sha256 and expected_sha256.lower() != remote.sha256.lower():
        raise ComponentUnavailable(
            "model",
            f"the hub's {remote.file} has sha256 {remote.sha256}, but the profile pins {expected_sha256}",
            "the repository changed since the profile was written: check it, then update [model] sha256",
        )
    target = models_dir / remote.file
    if verified_stamp(target, want):
        return target
    part = partial_path(models_dir, remote.file, want)
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        url = hf_hub_url(remote.repo, remote.file, revision=remote.revision, endpoint=endpoint)
        meta = get_hf_file_metadata(url, endpoint=endpoint, retry_on_errors=True)
        linked = (meta.etag or "").strip('"').lower()
        if SHA256_RE.match(linked) and linked != want:
            raise ComponentUnavailable(
                "model",
                f"{endpoint} now serves {remote.file} with sha256 {linked}, expected {want}",
                "run `appliance install` again to re-plan, or check the mirror (HF_ENDPOINT)",
            )
        size = remote.size or int(meta.size or 0)
        with _locked(part), part.open("ab") as handle:
            done = handle.tell()
            if size and done > size:  # not ours to resume: start over
                handle.truncate(0)
                done = 0
            if not size or done < size:
                http_get(
                    meta.location,
                    handle,
                    resume_size=done,
                    headers=build_hf_headers(headers={"Accept-Encoding": "identity"}),
                    expected_size=size or None,
                    displayed_filename=remote.file,
                    tqdm_class=None if progress else _SilentBar,
                )
    except KeyboardInterrupt:
        raise
    except ComponentUnavailable:
        raise
    except Exception as exc:
        raise ComponentUnavailable(
            "model",
            f"downloading {remote.repo}/{remote.file} failed: {type(exc).__name__}: {exc}",
            "run `appliance install` again: the download resumes where it stopped",
        ) from exc
    try:
        verify_file(part, want, remote.size, progress=progress)
    except ComponentUnavailable:
        part.unlink(missing_ok=True)
        raise
    part.replace(target)
    write_stamp(target, want, repo=remote.repo, revision=remote.revision)
    return target


class _SilentBar:
    """A tqdm stand-in for --quiet runs and tests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n = kwargs.get("initial", 0)

    def __enter__(self) -> _SilentBar:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _locked(part: Path) -> Iterator[None]:
    """One download of a file at a time: a second `appliance install` waits instead of interleaving bytes."""
    import fcntl

    with open(part.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another download of {part.name} to finish ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
