"""The real huggingface-hub download code against a hub on 127.0.0.1 (HF_ENDPOINT): good, resumed, corrupt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import ComponentUnavailable
from appliance.ggufmeta import read_kv_shape
from appliance.install.weights import download, read_stamp, remote_file_info, sha256_file, verified_stamp
from tests.fakehub import COMMIT, HubFile, HubState, serve_hub

REPO = "bartowski/test-model-GGUF"
FILE = "test-model-Q4_K_M.gguf"
# huggingface-hub writes the body in chunks of DOWNLOAD_CHUNK_SIZE (10 MB) and keeps
# only whole chunks of a broken transfer; the test model is 0.5 MB, so the chunk is
# made small enough for a cut to leave something to resume from.
CHUNK = 64 * 1024


@pytest.fixture
def hub_state(tiny_gguf: Path) -> HubState:
    return HubState([HubFile(REPO, FILE, tiny_gguf.read_bytes())])


@pytest.fixture
def hub(hub_state: HubState, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    with serve_hub(hub_state) as url:
        yield url


def test_published_sha256_and_size_come_from_the_file_metadata_api(hub: str, hub_state: HubState) -> None:
    remote = remote_file_info(REPO, FILE, endpoint=hub)
    expected = hub_state.files[0]
    assert (remote.sha256, remote.size, remote.revision) == (expected.sha256, len(expected.data), COMMIT)
    assert remote.source == "file metadata API"


def test_the_resolve_headers_are_the_fallback(hub: str, hub_state: HubState) -> None:
    hub_state.no_blob_metadata = True
    remote = remote_file_info(REPO, FILE, endpoint=hub)
    assert remote.sha256 == hub_state.files[0].sha256
    assert remote.size == len(hub_state.files[0].data)
    assert remote.source == "X-Linked-Etag header"
    assert any(r[0] == "HEAD" and "/resolve/" in r[1] for r in hub_state.requests)


def test_unknown_repo_and_file_say_what_to_fix(hub: str) -> None:
    with pytest.raises(ComponentUnavailable, match="has no repository"):
        remote_file_info("nobody/nothing", FILE, endpoint=hub)
    with pytest.raises(ComponentUnavailable, match="has no file"):
        remote_file_info(REPO, "other.gguf", endpoint=hub)


def test_unreachable_hub_names_the_mirror_fix(tmp_path: Path) -> None:
    with pytest.raises(ComponentUnavailable, match=r"cannot ask http://127\.0\.0\.1:9") as info:
        remote_file_info(REPO, FILE, endpoint="http://127.0.0.1:9")
    assert "HF_ENDPOINT" in (info.value.fix or "")
    assert "bundle" in (info.value.fix or "")


def test_good_download_is_verified_and_stamped(hub: str, hub_state: HubState, tmp_path: Path, tiny_gguf: Path) -> None:
    remote = remote_file_info(REPO, FILE, endpoint=hub)
    path = download(remote, tmp_path / "models", endpoint=hub, progress=False)
    assert path == tmp_path / "models" / FILE
    assert path.read_bytes() == tiny_gguf.read_bytes()
    assert read_kv_shape(path).block_count == 2  # a loadable GGUF, not an HTML error page
    stamp = verified_stamp(path, remote.sha256)
    assert stamp is not None and stamp.revision == COMMIT
    # The download asked for the pinned commit, not "main".
    assert any(f"/resolve/{COMMIT}/" in r[1] for r in hub_state.requests)
    # A second call trusts the stamp: no request reaches the hub.
    before = len(hub_state.requests)
    assert download(remote, tmp_path / "models", endpoint=hub, progress=False) == path
    assert len(hub_state.requests) == before


def test_a_dropped_connection_resumes_with_a_range_request(
    hub: str, hub_state: HubState, tmp_path: Path, tiny_gguf: Path
) -> None:
    size = len(tiny_gguf.read_bytes())
    hub_state.cut_after = size // 3
    remote = remote_file_info(REPO, FILE, endpoint=hub)
    path = download(remote, tmp_path / "models", endpoint=hub, progress=False)
    assert sha256_file(path) == remote.sha256
    kept = size // 3 // CHUNK * CHUNK
    assert kept > 0
    ranges = [r[2] for r in hub_state.gets()]
    assert ranges == ["", f"bytes={kept}-"]
    assert hub_state.body_bytes_sent == size + (size // 3 - kept)  # only the unwritten tail was fetched twice


def test_an_interrupted_install_resumes_in_the_next_run(
    hub: str, hub_state: HubState, tmp_path: Path, tiny_gguf: Path
) -> None:
    size = len(tiny_gguf.read_bytes())
    hub_state.cut_after, hub_state.fail_after_cut = size // 2, True
    remote = remote_file_info(REPO, FILE, endpoint=hub)
    with pytest.raises(ComponentUnavailable, match=r"failed: .*503") as info:
        download(remote, tmp_path / "models", endpoint=hub, progress=False)
    assert "resumes where it stopped" in (info.value.fix or "")
    kept = size // 2 // CHUNK * CHUNK
    partial = list((tmp_path / "models").rglob("*.part"))
    assert len(partial) == 1 and partial[0].stat().st_size == kept > 0
    assert not (tmp_path / "models" / FILE).exists()
    hub_state.fail_after_cut = False  # the network is back; a new run continues the same file
    path = download(remote, tmp_path / "models", endpoint=hub, progress=False)
    assert path.read_bytes() == tiny_gguf.read_bytes()
    assert hub_state.gets()[-1][2] == f"bytes={kept}-"
    assert hub_state.body_bytes_sent == size + (size // 2 - kept)


def test_corrupt_bytes_are_rejected_and_deleted(hub: str, hub_state: HubState, tmp_path: Path) -> None:
    hub_state.corrupt = True
    remote = remote_file_info(REPO, FILE, endpoint=hub)
    with pytest.raises(ComponentUnavailable, match=r"has sha256 .* expected .*deleted"):
        download(remote, tmp_path / "models", endpoint=hub, progress=False)
    assert not (tmp_path / "models" / FILE).exists()
    assert read_stamp(tmp_path / "models" / FILE) is None
    assert not list((tmp_path / "models").rglob("*.part"))  # the bad bytes are not resumed from either
    hub_state.corrupt = False  # a healthy mirror: the next run downloads afresh and succeeds
    path = download(remote, tmp_path / "models", endpoint=hub, progress=False)
    assert verified_stamp(path, remote.sha256) is not None


def test_a_pinned_sha256_that_differs_from_the_hub_stops_before_downloading(
    hub: str, hub_state: HubState, tmp_path: Path
) -> None:
    remote = remote_file_info(REPO, FILE, endpoint=hub)
    with pytest.raises(ComponentUnavailable, match="profile pins"):
        download(remote, tmp_path / "models", endpoint=hub, expected_sha256="0" * 64, progress=False)
    assert hub_state.gets() == []


def test_a_changed_file_loses_its_stamp(hub: str, tmp_path: Path) -> None:
    remote = remote_file_info(REPO, FILE, endpoint=hub)
    path = download(remote, tmp_path / "models", endpoint=hub, progress=False)
    with path.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"X")
    assert verified_stamp(path, remote.sha256) is None
