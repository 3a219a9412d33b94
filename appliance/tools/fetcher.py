"""The one way the appliance reaches the internet for the model: a guarded HTTP fetcher.

Everything the model asks for (a page to read, a file to download into the
sandbox) comes through here, because the model may be steered by prompt
injections. By default the fetcher refuses loopback, private, link-local and
other non-public addresses, checked after DNS resolution and again for every
redirect; the connection is made to the very address that was checked (no
second lookup an attacker's DNS could answer differently). Sizes, redirects
and time are capped.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Not "private" in Python's sense but not reachable public unicast either.
_EXTRA_BLOCKED = (
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("198.18.0.0/15"),  # benchmarking
)


class FetchError(Exception):
    """A fetch that did not produce a usable response; the message is for the model."""


class BlockedAddress(FetchError):
    pass


class TooLarge(FetchError):
    pass


class TooManyRedirects(FetchError):
    pass


class FetchTimeout(FetchError):
    pass


def is_public_address(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    ):
        return False
    return not any(address in net for net in _EXTRA_BLOCKED if address.version == net.version)


def resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses `host` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
    seen: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in seen:
            seen.append(address)
    return seen


@dataclass(frozen=True)
class AddressPolicy:
    """Which non-public destinations are allowed anyway.

    `allow` entries (from [scrape] allow_hosts) are a network ("10.20.0.0/16",
    any port), a host or address ("wiki.lan", any port), or host:port
    ("127.0.0.1:8123", that port only): an operator can open one intranet
    service to the model without opening the whole LAN.
    """

    allow_private: bool = False
    allow: tuple[str, ...] = ()

    def _allowed(self, host: str, port: int, address: IPAddress) -> bool:
        for entry in self.allow:
            if "/" in entry:
                try:
                    if address in ipaddress.ip_network(entry, strict=False):
                        return True
                except ValueError:
                    continue
                continue
            name, sep, entry_port = entry.rpartition(":")
            if sep and entry_port.isdigit() and "]" not in entry_port:
                if int(entry_port) == port and name.strip("[]") in (host, str(address)):
                    return True
            elif entry.strip("[]") in (host, str(address)):
                return True
        return False

    def check_recorded(self, url: str, address: str | None) -> None:
        """May a response archived from `url` (connected to `address`) be served now?

        An archive answers offline, so nothing is resolved: the address recorded at
        fetch time is checked, or the host itself when it is an IP literal or a
        local name. What the policy refuses today is refused from an archive too.
        """
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        candidates = [address] if address else [host]
        if not address and host.lower() in ("localhost", "localhost.localdomain"):
            candidates = ["127.0.0.1"]
        for candidate in candidates:
            try:
                ip = ipaddress.ip_address(candidate.strip("[]"))
            except ValueError:
                continue  # a name fetched without a recorded address (a page-cache copy): nothing to check
            if not self.allow_private and not is_public_address(ip) and not self._allowed(host, port, ip):
                raise BlockedAddress(
                    f"refusing to serve {url} from the archive: {host} ({ip}) is a loopback, private or "
                    "link-local address, which the appliance does not let the model reach"
                )

    def check(self, host: str, port: int) -> list[IPAddress]:
        addresses = resolve(host, port)
        if not addresses:
            raise FetchError(f"host {host!r} has no addresses")
        if not self.allow_private:
            bad = [a for a in addresses if not is_public_address(a) and not self._allowed(host, port, a)]
            if bad:
                raise BlockedAddress(
                    f"refusing to fetch from {host} ({bad[0]}): it is a loopback, private or link-local "
                    "address, which the appliance does not let the model reach"
                )
        return addresses


class _PinnedBackend(httpcore.SyncBackend):
    """Connects only to addresses the policy approved, resolved once."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.policy.check(host, port)
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


@dataclass(frozen=True)
class Exchange:
    """One HTTP request and its response as they went over the wire, for the web archive.

    Every hop of a redirect chain is one exchange. `body` is the payload after any
    Content-Encoding was undone (what the fetcher read); `peer` is the address connected to.
    """

    url: str
    request_headers: tuple[tuple[str, str], ...]
    status: int
    reason: str
    http_version: str
    response_headers: tuple[tuple[str, str], ...]
    body: bytes
    peer: str | None
    started: float  # wall-clock time the response was in


@dataclass
class FetchResult:
    url: str
    final_url: str
    status_code: int
    headers: dict[str, str]
    content: bytes
    redirects: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        for part in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip("\"' ").lower()
        return None


class Fetcher:
    def __init__(
        self,
        *,
        allow_private: bool = False,
        allow_hosts: Iterable[str] = (),
        timeout: float = 30.0,
        max_bytes: int = 20_000_000,
        max_redirects: int = 5,
        user_agent: str = "appliance-research-agent/0.1",
    ) -> None:
        self.policy = AddressPolicy(allow_private, tuple(allow_hosts))
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        transport = httpx.HTTPTransport(retries=0)
        # httpx has no public hook for name resolution; the pool's network
        # backend is where connections are opened, so the check lives there.
        transport._pool._network_backend = _PinnedBackend(self.policy)
        self.client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            trust_env=False,  # an environment proxy would connect on our behalf, unchecked
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            headers={"User-Agent": user_agent, "Accept": "*/*"},
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def check_url(url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"only http and https URLs can be fetched, not {parts.scheme or 'a bare path'!r}: {url}")
        if not parts.hostname:
            raise FetchError(f"the URL has no host: {url}")
        return url

    def permit(self, url: str) -> None:
        """FetchError unless the address policy lets `url` be fetched now (its host resolved afresh).

        Asked before a cached copy is served: a page kept while its host was allowed
        is not served once the policy (or the host's address) says no.
        """
        parts = urlsplit(self.check_url(url))
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise FetchError(f"the URL has a bad port: {url}") from exc
        self.policy.check(parts.hostname or "", port)

    @contextmanager
    def open(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        cancel: Callable[[], bool] | None = None,
        exchanges: list[Exchange] | None = None,
    ) -> Iterator[tuple[httpx.Response, list[str], float]]:
        """Follow redirects by hand (checking each hop); yield the final streaming response.

        With `exchanges`, each redirect hop is appended to it (the final response is the caller's to add).
        """
        deadline = time.monotonic() + self.timeout
        redirects: list[str] = []
        current = self.check_url(url)
        visited = {current}
        while True:
            if cancel is not None and cancel():
                raise FetchError("the fetch was cancelled")
            try:
                request = self.client.build_request("GET", current, headers=headers or {})
                response = self.client.send(request, stream=True)
            except BlockedAddress:
                raise
            except httpx.TimeoutException as exc:
                raise FetchTimeout(f"timed out after {self.timeout:g}s connecting to {current}") from exc
            except httpx.HTTPError as exc:
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, BlockedAddress):
                    raise cause from None
                raise FetchError(f"could not fetch {current}: {type(exc).__name__}: {exc}") from exc
            if response.is_redirect:
                location = response.headers.get("location", "")
                if exchanges is not None:
                    exchanges.append(exchange_of(response, b""))
                response.close()
                if len(redirects) >= self.max_redirects:
                    raise TooManyRedirects(f"more than {self.max_redirects} redirects starting at {url}")
                target = self.check_url(urljoin(current, location))
                if target in visited:
                    raise TooManyRedirects(f"redirect loop at {target}")
                visited.add(target)
                redirects.append(target)
                current = target
                continue
            try:
                yield response, redirects, deadline
            finally:
                response.close()
            return

    def fetch(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        cancel: Callable[[], bool] | None = None,
        exchanges: list[Exchange] | None = None,
    ) -> FetchResult:
        """GET `url`; with `exchanges`, every hop (redirects, then the response read whole) is appended."""
        started = time.monotonic()
        with self.open(url, headers=headers, cancel=cancel, exchanges=exchanges) as (response, redirects, deadline):
            peer = peer_address(response)
            content = b"".join(self._capped_body(response, deadline, url, cancel))
            if exchanges is not None:
                exchanges.append(exchange_of(response, content, peer))
            return _result(url, response, redirects, content, started)

    def download(
        self,
        url: str,
        destination: Path,
        *,
        headers: dict[str, str] | None = None,
        cancel: Callable[[], bool] | None = None,
        exchanges: list[Exchange] | None = None,
    ) -> FetchResult:
        """Stream `url` into `destination` (a file that must not exist yet); same limits.

        With `exchanges`, the hops are appended; the last one's body is the file, read back once written.
        """
        started = time.monotonic()
        with self.open(url, headers=headers, cancel=cancel, exchanges=exchanges) as (response, redirects, deadline):
            if not 200 <= response.status_code < 300:
                if exchanges is not None:
                    exchanges.append(exchange_of(response, b""))
                return _result(url, response, redirects, b"", started)
            peer = peer_address(response)
            try:
                with destination.open("xb") as handle:
                    for chunk in self._capped_body(response, deadline, url, cancel):
                        handle.write(chunk)
            except BaseException:
                destination.unlink(missing_ok=True)
                raise
            if exchanges is not None:
                exchanges.append(exchange_of(response, destination.read_bytes(), peer))
            return _result(url, response, redirects, b"", started)

    def _capped_body(
        self, response: httpx.Response, deadline: float, url: str, cancel: Callable[[], bool] | None
    ) -> Iterator[bytes]:
        """The body as it arrives, within the size cap, the deadline and the cancel flag."""
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise TooLarge(f"{url} is {int(declared):,} bytes, over the {self.max_bytes:,}-byte limit")
        size = 0
        try:
            # No chunk size: each piece is yielded as it arrives, so the deadline is checked
            # while a server drips bytes (a fixed size would wait for the whole buffer).
            for chunk in response.iter_bytes():
                if time.monotonic() > deadline:
                    raise FetchTimeout(f"{url} took longer than {self.timeout:g}s to download")
                if cancel is not None and cancel():
                    raise FetchError("the fetch was cancelled")
                size += len(chunk)
                if size > self.max_bytes:
                    raise TooLarge(f"{url} is larger than the {self.max_bytes:,}-byte limit")
                yield chunk
        except httpx.TimeoutException as exc:
            raise FetchTimeout(f"{url} stalled for more than {self.timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"the connection to {url} failed mid-download: {exc}") from exc


def peer_address(response: httpx.Response) -> str | None:
    """The address the response came from; ask before reading the body (a closed socket has none)."""
    stream = response.extensions.get("network_stream")
    try:
        peer = stream.get_extra_info("server_addr") if stream is not None else None
    except OSError:
        return None
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def exchange_of(response: httpx.Response, body: bytes, peer: str | None = None) -> Exchange:
    """The exchange `response` ended (its request's headers as sent; `body` as read; `peer` if known)."""
    reason = response.reason_phrase or ""
    return Exchange(
        url=str(response.request.url),
        request_headers=tuple(response.request.headers.items()),
        status=response.status_code,
        reason=reason,
        http_version=response.http_version,
        response_headers=tuple(response.headers.items()),
        body=body,
        peer=peer or peer_address(response),
        started=time.time(),
    )


def _result(url: str, response: httpx.Response, redirects: list[str], content: bytes, started: float) -> FetchResult:
    headers = {k.lower(): v for k, v in response.headers.items()}
    return FetchResult(
        url, str(response.url), response.status_code, headers, content, redirects, time.monotonic() - started
    )


class LazyFetcher:
    """A Fetcher made on first use from the [scrape] settings, shared by a tool server's threads."""

    def __init__(self, scrape: Any) -> None:
        self.scrape = scrape
        self._fetcher: Fetcher | None = None
        self._lock = threading.Lock()

    def get(self) -> Fetcher:
        with self._lock:
            if self._fetcher is None:
                self._fetcher = fetcher_from_settings(self.scrape)
            return self._fetcher

    def close(self) -> None:
        with self._lock:
            if self._fetcher is not None:
                self._fetcher.close()
                self._fetcher = None


def fetcher_from_settings(scrape: Any) -> Fetcher:
    """A Fetcher configured from the [scrape] section."""
    return Fetcher(
        allow_private=scrape.allow_private,
        allow_hosts=scrape.allow_hosts,
        timeout=scrape.timeout,
        max_bytes=scrape.max_bytes,
        max_redirects=scrape.max_redirects,
        user_agent=scrape.user_agent,
    )
