"""The web archive against real pages on 127.0.0.1: written as fetched, read back with warcio's own reader,
replayed offline, and refused when damaged, another run's, or over a full disk."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from warcio.archiveiterator import ArchiveIterator

from appliance.tools.archive import (
    ArchiveError,
    ArchiveIndex,
    ArchiveWriter,
    NotArchived,
    RunWeb,
    archive_dir,
    open_run_web,
    warc_files,
)
from appliance.tools.fetcher import AddressPolicy, BlockedAddress, Fetcher, FetchResult
from tests.pagefixtures import PageServer, Response, boilerplate_article, report_pdf, serving, standard_routes

GZIP_PAGE = b"<html><body><article><p>Compressed on the wire, stored as read.</p></article></body></html>"


def routes() -> dict[str, object]:
    found: dict[str, object] = dict(standard_routes())
    found["/gzipped"] = Response(
        200, gzip.compress(GZIP_PAGE), {"Content-Type": "text/html", "Content-Encoding": "gzip"}
    )
    found["/noise"] = Response(200, random.Random(7).randbytes(60_000), {"Content-Type": "application/octet-stream"})
    found["/set-cookie"] = Response(
        200, b"<p>hello</p>", {"Content-Type": "text/html", "Set-Cookie": "sid=SESSIONSECRET"}
    )
    return found


@pytest.fixture(scope="module")
def pages() -> Iterator[PageServer]:
    with serving(routes()) as server:  # type: ignore[arg-type]
        yield server


def settings_for(port: int, *, web: str = "live", enabled: bool = True, max_mb: int = 100) -> SimpleNamespace:
    archive = SimpleNamespace(enabled=enabled, max_mb=max_mb, web=web)
    scrape = SimpleNamespace(allow_private=False, allow_hosts=[f"127.0.0.1:{port}"], max_redirects=5)
    return SimpleNamespace(archive=archive, scrape=scrape)


def make_web(tmp_path: Path, port: int, run_id: str = "run-a", **kwargs: object) -> RunWeb:
    s = settings_for(port, **kwargs)  # type: ignore[arg-type]
    return open_run_web(s.archive, s.scrape, (tmp_path / "runs").joinpath, run_id, tmp_path / "runs" / run_id)


def records(path: Path) -> list[tuple[str, dict[str, str], bytes, str | None]]:
    """(type, WARC headers, payload, HTTP status) of every record, through warcio with digest checks on."""
    found = []
    with path.open("rb") as handle:
        for record in ArchiveIterator(handle, check_digests="raise"):
            payload = record.content_stream().read()
            status = record.http_headers.get_statuscode() if record.http_headers is not None else None
            found.append((record.rec_type, dict(record.rec_headers.headers), payload, status))
    return found


def test_fetched_pages_are_archived_as_fetched_and_read_back_by_warcio(tmp_path: Path, pages: PageServer) -> None:
    web = make_web(tmp_path, pages.port)
    fetcher = Fetcher(allow_hosts=[f"127.0.0.1:{pages.port}"])
    call = web.call()
    for path in ("/article", "/report.pdf", "/to-article", "/gzipped"):
        result = call.fetch_live(lambda: fetcher, pages.url(path), None, None)
        assert result.ok
    (file,) = warc_files(archive_dir(tmp_path / "runs" / "run-a"))
    found = records(file)
    assert found[0][0] == "warcinfo" and b"run-id: run-a" in found[0][2]
    responses = {h["WARC-Target-URI"]: (payload, status, h) for kind, h, payload, status in found if kind == "response"}
    requests = [h for kind, h, _, _ in found if kind == "request"]
    assert responses[pages.url("/article")][0] == boilerplate_article().encode("utf-8")
    assert responses[pages.url("/report.pdf")][0] == report_pdf()
    assert responses[pages.url("/gzipped")][0] == GZIP_PAGE  # decoded, as the fetcher read it
    assert responses[pages.url("/gzipped")][2]["Appliance-Decoded"] == "gzip"
    assert responses[pages.url("/to-article")][1] == "301"  # the redirect hop is its own exchange
    for _, _, headers in responses.values():
        assert headers["WARC-Record-ID"].startswith("<urn:uuid:")
        assert headers["WARC-Date"].endswith("Z") and headers["WARC-IP-Address"] == "127.0.0.1"
        assert headers["WARC-Payload-Digest"].startswith("sha1:") and headers["WARC-Block-Digest"].startswith("sha1:")
        assert headers["Content-Type"] == "application/http; msgtype=response"
        assert headers["WARC-Concurrent-To"] in {r["WARC-Record-ID"] for r in requests}
    assert len(requests) == 5  # article, pdf, redirect hop + its target, gzip
    # Each tool call is linked to the records it read, by file and offset.
    refs = call.refs
    assert [r.status for r in refs] == [200, 200, 301, 200, 200]
    with file.open("rb") as handle:
        handle.seek(refs[1].offset or 0)
        record = next(iter(ArchiveIterator(handle)))
        assert record.rec_headers.get_header("WARC-Target-URI") == pages.url("/report.pdf")
        assert record.content_stream().read() == report_pdf()


def test_secrets_never_enter_the_archive(tmp_path: Path, pages: PageServer) -> None:
    web = make_web(tmp_path, pages.port)
    fetcher = Fetcher(allow_hosts=[f"127.0.0.1:{pages.port}"])
    call = web.call()
    headers = {"Authorization": "Bearer AUTHSECRET", "Cookie": "sid=COOKIESECRET", "X-Api-Key": "KEYSECRET"}
    url = f"http://alice:PASSSECRET@127.0.0.1:{pages.port}/set-cookie?api_key=PARAMSECRET&q=tea"
    assert call.fetch_live(lambda: fetcher, url, headers, None).ok
    (file,) = warc_files(archive_dir(tmp_path / "runs" / "run-a"))
    raw = b"".join(member for member in [gzip.decompress(file.read_bytes())])
    for secret in (b"AUTHSECRET", b"COOKIESECRET", b"KEYSECRET", b"PASSSECRET", b"PARAMSECRET", b"SESSIONSECRET"):
        assert secret not in raw
    assert b"q=tea" in raw and b"authorization: ***" in raw
    assert call.refs[0].uri == f"http://***@127.0.0.1:{pages.port}/set-cookie?api_key=***&q=tea"


def test_offline_replay_answers_from_the_archive_and_never_calls_the_network(tmp_path: Path) -> None:
    with serving(routes()) as live:  # type: ignore[arg-type]
        web = make_web(tmp_path, live.port)
        fetcher = Fetcher(allow_hosts=[f"127.0.0.1:{live.port}"])
        call = web.call()
        for path in ("/to-article", "/report.pdf"):
            call.fetch_live(lambda: fetcher, live.url(path), None, None)
        port = live.port
    # A server on the same port that fails the test if it is contacted.
    tripwire = PageServer({})
    replay = make_web(tmp_path, port, run_id="run-b", web="archive:run-a")
    assert replay.offline and replay.mode == "archive:run-a"
    call = replay.call()
    result = call.fetch_archived(f"http://127.0.0.1:{port}/to-article")
    assert isinstance(result, FetchResult) and result.content == boilerplate_article().encode("utf-8")
    assert result.redirects == [f"http://127.0.0.1:{port}/article"]
    with pytest.raises(NotArchived, match=r"not archived: .*/never-fetched is not in archive:run-a"):
        call.fetch_live(lambda: fetcher, f"http://127.0.0.1:{port}/never-fetched", None, None)
    # What was replayed is copied into the new run's own archive, with its original date.
    (copy,) = warc_files(archive_dir(tmp_path / "runs" / "run-b"))
    copied = [h for kind, h, _, _ in records(copy) if kind == "response"]
    assert copied[0]["Appliance-Replayed-From"] == "archive:run-a" and copied[0]["WARC-Refers-To"]
    assert sum(tripwire.hits.values()) == 0
    tripwire.close()


def test_replay_obeys_todays_address_policy(tmp_path: Path, pages: PageServer) -> None:
    web = make_web(tmp_path, pages.port)
    fetcher = Fetcher(allow_hosts=[f"127.0.0.1:{pages.port}"])
    web.call().fetch_live(lambda: fetcher, pages.url("/article"), None, None)
    files = warc_files(archive_dir(tmp_path / "runs" / "run-a"))
    closed = RunWeb(writer=None, policy=AddressPolicy(), replay=ArchiveIndex.load(files, "archive:run-a"))
    with pytest.raises(BlockedAddress, match=r"refusing to serve .* from the archive"):
        closed.call().fetch_archived(pages.url("/article"))


def test_a_truncated_or_corrupt_archive_is_a_clear_error(tmp_path: Path, pages: PageServer) -> None:
    web = make_web(tmp_path, pages.port)
    fetcher = Fetcher(allow_hosts=[f"127.0.0.1:{pages.port}"])
    web.call().fetch_live(lambda: fetcher, pages.url("/long"), None, None)
    (file,) = warc_files(archive_dir(tmp_path / "runs" / "run-a"))
    data = file.read_bytes()
    truncated = tmp_path / "truncated.warc.gz"
    truncated.write_bytes(data[: len(data) - 300])
    with pytest.raises(ArchiveError, match="truncated"):
        ArchiveIndex.load([truncated], "x")
    corrupt = tmp_path / "corrupt.warc.gz"
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(damaged))
    with pytest.raises(ArchiveError, match=r"corrupt|cannot be read|truncated"):
        ArchiveIndex.load([corrupt], "x")
    text = tmp_path / "notes.warc.gz"
    text.write_bytes(b"these are not the records you are looking for\n" * 20)
    with pytest.raises(ArchiveError):
        ArchiveIndex.load([text], "x")


def test_an_archive_of_another_run_is_refused_as_the_runs_own(tmp_path: Path, pages: PageServer) -> None:
    web = make_web(tmp_path, pages.port)
    fetcher = Fetcher(allow_hosts=[f"127.0.0.1:{pages.port}"])
    web.call().fetch_live(lambda: fetcher, pages.url("/article"), None, None)
    (file,) = warc_files(archive_dir(tmp_path / "runs" / "run-a"))
    intruder = archive_dir(tmp_path / "runs" / "run-b")
    intruder.mkdir(parents=True)
    (intruder / file.name).write_bytes(file.read_bytes())
    with pytest.raises(ArchiveError, match="is the web archive of run run-a, not of run run-b"):
        make_web(tmp_path, pages.port, run_id="run-b")
    with pytest.raises(ArchiveError, match="run nope has no web archive"):
        make_web(tmp_path, pages.port, run_id="run-c", web="archive:nope")


def test_the_size_cap_leaves_a_gap_and_a_valid_file(tmp_path: Path, pages: PageServer) -> None:
    web = make_web(tmp_path, pages.port, max_mb=0)
    web.writer.max_bytes = 20_000  # type: ignore[union-attr]
    fetcher = Fetcher(allow_hosts=[f"127.0.0.1:{pages.port}"])
    call = web.call()
    call.fetch_live(lambda: fetcher, pages.url("/article"), None, None)
    call.fetch_live(lambda: fetcher, pages.url("/noise"), None, None)  # incompressible: over the cap
    assert [r.kind for r in call.refs] == ["response", "gap"]
    assert "cap of 0.02 MB" in call.refs[1].note and call.meta()["notice"] == call.refs[1].note
    index = ArchiveIndex.load(warc_files(archive_dir(tmp_path / "runs" / "run-a")), "x")
    assert list(index.entries) == [pages.url("/article")]


FULL_DISK_SCRIPT = r"""
import json, random, resource, signal, sys
from pathlib import Path
from appliance.tools.archive import ArchiveWriter, ArchiveIndex, warc_files
from appliance.tools.fetcher import Exchange
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # the write then fails with EFBIG instead of killing us
directory = Path(sys.argv[1])
writer = ArchiveWriter(directory, "run-full", max_bytes=10**9)
def exchange(path, size):
    body = random.Random(size).randbytes(size)
    return Exchange("http://example.org" + path, (("Host", "example.org"),), 200, "OK", "HTTP/1.1",
                    (("Content-Type", "application/octet-stream"),), body, "93.184.215.14", 0.0)
writer.write_exchanges([exchange("/small", 2048)], "fetch")
resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))
outcome = []
for path, size in (("/big", 400_000), ("/after", 1024)):
    try:
        writer.write_exchanges([exchange(path, size)], "fetch")
        outcome.append("ok")
    except Exception as exc:
        outcome.append(f"{type(exc).__name__}: {exc}")
index = ArchiveIndex.load(warc_files(directory), "x")
print(json.dumps({"outcome": outcome, "uris": sorted(index.entries)}))
"""


def test_a_full_disk_leaves_a_recorded_gap_and_the_file_valid(tmp_path: Path) -> None:
    # RLIMIT_FSIZE is a real filesystem limit, in a subprocess so the test process keeps its own.
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path / "archive")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"][0].startswith("ArchiveGap: the web archive could not be written (File too large)")
    assert report["outcome"][1] == "ok"  # the run goes on: a later, smaller document is archived
    assert report["uris"] == ["http://example.org/after", "http://example.org/small"]


def test_archiving_can_be_turned_off(tmp_path: Path, pages: PageServer) -> None:
    web = make_web(tmp_path, pages.port, enabled=False)
    fetcher = Fetcher(allow_hosts=[f"127.0.0.1:{pages.port}"])
    call = web.call()
    assert call.fetch_live(lambda: fetcher, pages.url("/article"), None, None).ok
    assert call.refs == [] and not archive_dir(tmp_path / "runs" / "run-a").exists()
    assert isinstance(ArchiveWriter, type)


def test_the_passage_is_the_paragraph_the_extract_came_from() -> None:
    from appliance.tools.scrape.server import best_passage

    text = "Intro about trains.\n\nThe line opened in 1915 and ran 525 km.\n\nIt closed in 1989."
    assert best_passage(text, "It opened in 1915; the line ran 525 km.") == "The line opened in 1915 and ran 525 km."
    assert best_passage(text, "nothing in common here") == "Intro about trains."  # the opening, then
    assert best_passage("", "x") == ""
    long = "word " * 300
    assert len(best_passage(long, "word", limit=50)) == 50 and best_passage(long, "word", limit=50).endswith("…")
