"""The guarded fetcher against local HTTP servers: address policy, redirects, size and time caps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.tools.fetcher import (
    BlockedAddress,
    Fetcher,
    FetchError,
    FetchTimeout,
    TooLarge,
    TooManyRedirects,
)
from tests.pagefixtures import PageServer, Response, standard_routes


@pytest.fixture(scope="module")
def secret() -> Iterator[PageServer]:
    """A loopback service the model must never reach (think: the local SearXNG or llama-server)."""
    server = PageServer({"/secret": Response(200, b"internal secret", {"Content-Type": "text/plain"})})
    yield server
    server.close()


@pytest.fixture(scope="module")
def pages(secret: PageServer) -> Iterator[PageServer]:
    server = PageServer(standard_routes(other_port=secret.port))
    yield server
    server.close()


@pytest.fixture
def fetcher(pages: PageServer) -> Iterator[Fetcher]:
    # Only the page server's own port is opened, as an operator would with [scrape] allow_hosts.
    with Fetcher(allow_hosts=[f"127.0.0.1:{pages.port}"], max_bytes=100_000, timeout=2.0) as f:
        yield f


def test_allowed_page_is_fetched_with_type_and_charset(fetcher: Fetcher, pages: PageServer) -> None:
    result = fetcher.fetch(pages.url("/article"))
    assert result.ok and result.status_code == 200
    assert result.content_type == "text/html"
    assert result.charset == "utf-8"
    assert b"Kettle Valley Railway" in result.content
    assert result.redirects == []


def test_loopback_is_refused_by_default(pages: PageServer) -> None:
    before = pages.hits["/article"]
    with Fetcher() as default, pytest.raises(BlockedAddress, match="loopback, private or link-local"):
        default.fetch(pages.url("/article"))
    assert pages.hits["/article"] == before


@pytest.mark.parametrize("host", ["localhost", "127.1", "0.0.0.0", "[::1]", "[::ffff:127.0.0.1]", "2130706433"])
def test_loopback_spellings_are_refused(host: str, secret: PageServer) -> None:
    with Fetcher() as default, pytest.raises(BlockedAddress):
        default.fetch(f"http://{host}:{secret.port}/secret")
    assert secret.hits["/secret"] == 0


def test_allow_hosts_opens_one_port_only(fetcher: Fetcher, secret: PageServer) -> None:
    with pytest.raises(BlockedAddress):
        fetcher.fetch(secret.url("/secret"))
    assert secret.hits["/secret"] == 0


def test_allow_private_reaches_loopback(secret: PageServer) -> None:
    # The check above could pass for the wrong reason (a dead server); this one shows it is reachable.
    with Fetcher(allow_private=True) as open_fetcher:
        assert open_fetcher.fetch(secret.url("/secret")).content == b"internal secret"
    secret.hits.clear()


@pytest.mark.parametrize(
    "path",
    ["/to-loopback", "/to-localhost", "/to-decimal-ip", "/to-mapped-ipv6", "/to-scheme-relative", "/to-userinfo"],
)
def test_redirect_to_loopback_is_refused(fetcher: Fetcher, pages: PageServer, secret: PageServer, path: str) -> None:
    with pytest.raises(BlockedAddress):
        fetcher.fetch(pages.url(path))
    assert pages.hits[path] >= 1
    assert secret.hits["/secret"] == 0


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata", "/to-ipv6-loopback"])
def test_redirect_to_private_or_link_local_is_refused_without_connecting(
    fetcher: Fetcher, pages: PageServer, path: str
) -> None:
    started = time.monotonic()
    with pytest.raises(BlockedAddress, match="refusing to fetch"):
        fetcher.fetch(pages.url(path))
    # 10.255.255.1 would hang until the connect timeout if the fetcher tried it.
    assert time.monotonic() - started < 1.5


def test_redirect_to_file_url_is_refused(fetcher: Fetcher, pages: PageServer) -> None:
    with pytest.raises(FetchError, match="only http and https"):
        fetcher.fetch(pages.url("/to-file"))


def test_redirect_loop_is_detected(fetcher: Fetcher, pages: PageServer) -> None:
    with pytest.raises(TooManyRedirects, match="redirect loop"):
        fetcher.fetch(pages.url("/loop-a"))


def test_redirects_are_capped_at_five(fetcher: Fetcher, pages: PageServer) -> None:
    with pytest.raises(TooManyRedirects, match="more than 5 redirects"):
        fetcher.fetch(pages.url("/chain/0"))
    result = fetcher.fetch(pages.url("/chain/3"))  # exactly five hops
    assert result.ok and len(result.redirects) == 5 and result.final_url.endswith("/chain/8")


def test_same_host_redirect_is_followed(fetcher: Fetcher, pages: PageServer) -> None:
    result = fetcher.fetch(pages.url("/to-article"))
    assert result.final_url == pages.url("/article")
    assert result.redirects == [pages.url("/article")]


@pytest.mark.parametrize("path", ["/huge", "/huge-chunked"])
def test_size_cap(fetcher: Fetcher, pages: PageServer, path: str) -> None:
    with pytest.raises(TooLarge, match="100,000-byte limit"):
        fetcher.fetch(pages.url(path))


def test_slow_page_hits_the_total_timeout(fetcher: Fetcher, pages: PageServer) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTimeout):
        fetcher.fetch(pages.url("/slow"))  # ten pieces, 0.5 s apart: 5 s against a 2 s budget
    assert time.monotonic() - started < 4.0


def test_error_status_is_returned_not_raised(fetcher: Fetcher, pages: PageServer) -> None:
    result = fetcher.fetch(pages.url("/missing"))
    assert result.status_code == 404 and not result.ok


def test_download_streams_to_a_new_file_and_cleans_up(fetcher: Fetcher, pages: PageServer, tmp_path: Path) -> None:
    target = tmp_path / "report.pdf"
    result = fetcher.download(pages.url("/report.pdf"), target)
    assert result.ok and target.read_bytes().startswith(b"%PDF-")
    with pytest.raises(FileExistsError):
        fetcher.download(pages.url("/report.pdf"), target)
    partial = tmp_path / "huge.html"
    with pytest.raises(TooLarge):
        fetcher.download(pages.url("/huge-chunked"), partial)
    assert not partial.exists()


def test_compressed_body_is_capped_after_decompression(fetcher: Fetcher, pages: PageServer) -> None:
    # About 5 KB on the wire, 5 MB once decompressed: the cap counts what is decoded.
    with pytest.raises(TooLarge):
        fetcher.fetch(pages.url("/gzip-bomb"))


def test_one_private_answer_among_public_ones_blocks_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # A hostile DNS server answering a public and a loopback address: refused, not "try the public one".
    def answers(host: str, port: int, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        return [(2, 1, 6, "", ("93.184.216.34", port)), (2, 1, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr("appliance.tools.fetcher.socket.getaddrinfo", answers)
    with Fetcher() as default, pytest.raises(BlockedAddress, match=r"127\.0\.0\.1"):
        default.fetch("http://rebind.example/")


def test_cancel_stops_a_fetch(fetcher: Fetcher, pages: PageServer) -> None:
    with pytest.raises(FetchError, match="cancelled"):
        fetcher.fetch(pages.url("/slow"), cancel=lambda: True)
