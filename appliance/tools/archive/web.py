"""A run's web: live through the fetcher and archived as it goes, or answered from an archive.

A URL is answered by its newest archived response, redirects are followed
inside the archive, and the address policy of today is checked against the
address recorded at fetch time. Offline replay never reaches the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

from appliance.policy import redact_url
from appliance.tools.archive.warc import (
    ArchivedRecord,
    ArchiveError,
    ArchiveGap,
    ArchiveIndex,
    ArchiveWriter,
    NotArchived,
    RecordRef,
    archive_dir,
    clean_url,
    resolve_archive,
    search_key,
    warc_files,
)
from appliance.tools.fetcher import AddressPolicy, Exchange, Fetcher, FetchError, FetchResult

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
T = TypeVar("T")


class RunWeb:
    """How a run reaches the web: live (archived as it goes), or from an archive only.

    `reuse` archives (the run's own, on resume; the original's, on a re-run) answer
    first in live mode too, so a resumed or re-run run never fetches again what it
    already fetched.
    """

    def __init__(
        self,
        *,
        writer: ArchiveWriter | None,
        policy: AddressPolicy,
        replay: ArchiveIndex | None = None,
        reuse: Sequence[ArchiveIndex] = (),
        own: ArchiveIndex | None = None,
        max_redirects: int = 5,
    ) -> None:
        self.writer = writer
        self.policy = policy
        self.replay = replay
        self.reuse = list(reuse)
        self.own = own
        self.max_redirects = max_redirects

    @property
    def offline(self) -> bool:
        return self.replay is not None

    @property
    def mode(self) -> str:
        return self.replay.label if self.replay is not None else "live"

    def indexes(self) -> list[ArchiveIndex]:
        found = [i for i in (self.own, self.replay) if i is not None]
        return found + self.reuse

    def call(self) -> WebCall:
        return WebCall(self)


class WebCall:
    """One tool call's use of the run's web; collects the records it read for the history."""

    def __init__(self, web: RunWeb) -> None:
        self.web = web
        self.refs: list[RecordRef] = []

    # ------------------------------------------------------------ lookups

    def _find(self, key: str) -> tuple[ArchiveIndex, ArchivedRecord] | None:
        for index in self.web.indexes():
            entry = index.find(key)
            if entry is not None:
                return index, entry
        return None

    def _link(self, index: ArchiveIndex, entry: ArchivedRecord) -> None:
        """Record that this call read `entry`: in place if it is the run's own, else copied into the run's archive."""
        if index is self.web.own:
            self.refs.append(
                RecordRef(
                    entry.kind,
                    entry.uri,
                    file=entry.path.name,
                    offset=entry.offset,
                    record_id=entry.record_id,
                    date=entry.date,
                    status=entry.status,
                    origin="reused",
                )
            )
            return
        if self.web.writer is None:
            self.refs.append(RecordRef(entry.kind, entry.uri, date=entry.date, status=entry.status, origin=index.label))
            return
        try:
            self.refs.append(self.web.writer.copy(entry, index.label))
        except ArchiveGap as exc:
            self.refs.append(RecordRef("gap", entry.uri, note=str(exc)))

    def not_archived(self, what: str) -> NotArchived:
        return NotArchived(
            f"not archived: {what} is not in {self.web.mode} (offline replay makes no network request); "
            "the run can use only what that archive holds"
        )

    def archived(self, url: str) -> tuple[list[ArchivedRecord], ArchiveIndex] | None:
        """The archived chain for `url` (redirect hops, then the document), each hop allowed by today's policy."""
        found = self._find(clean_url(url))
        if found is None:
            return None
        index, entry = found
        chain = [entry]
        current = url
        while entry.status in _REDIRECTS and entry.location:
            if len(chain) > self.web.max_redirects:
                raise FetchError(f"more than {self.web.max_redirects} redirects starting at {url}")
            self.web.policy.check_recorded(current, entry.peer)
            current = Fetcher.check_url(urljoin(current, entry.location))
            hop = self._find(clean_url(current))
            if hop is None:
                if not self.web.offline:
                    return None  # live: fetch the whole chain again rather than half from an archive
                raise self.not_archived(f"{current} (the redirect target of {url})")
            index, entry = hop
            chain.append(entry)
        self.web.policy.check_recorded(current, entry.peer)
        return chain, index

    # ------------------------------------------------------------ what tools call

    def fetch_archived(self, url: str, *, files_only: bool = False) -> FetchResult | dict[str, Any] | None:
        """`url` from an archive: a FetchResult (a response), a page dict (a page-cache copy), or None.

        `files_only` (a download) passes over page-cache copies: they hold text, not the file.
        """
        found = self.archived(url)
        if found is None or (files_only and found[0][-1].source == "page-cache"):
            return None
        chain, index = found
        final = chain[-1]
        self._link(index, final)
        status, _, headers, body = final.read()
        if final.source == "page-cache":
            page: dict[str, Any] = json.loads(body.decode("utf-8"))
            page["fetched_at"] = final.when
            return page
        redirects = [clean_url(e.uri) for e in chain[1:]]
        lowered = {k.lower(): v for k, v in headers}
        return FetchResult(url, final.uri, status, lowered, body, redirects, 0.0)

    def fetch_live(
        self,
        fetcher: Callable[[], Fetcher],
        url: str,
        headers: dict[str, str] | None,
        cancel: Callable[[], bool] | None,
    ) -> FetchResult:
        """From the network, every hop archived; never when the run is offline (ask fetch_archived first)."""
        if self.web.offline:
            raise self.not_archived(url)
        exchanges: list[Exchange] = []
        try:
            return fetcher().fetch(url, headers=headers, cancel=cancel, exchanges=exchanges)
        finally:
            self.record(exchanges, "fetch")

    def download(
        self, fetcher: Callable[[], Fetcher], url: str, destination: Path, cancel: Callable[[], bool] | None
    ) -> FetchResult:
        archived = self.fetch_archived(url, files_only=True)
        if isinstance(archived, FetchResult):
            if archived.ok:
                with destination.open("xb") as handle:
                    handle.write(archived.content)
            return archived
        if self.web.offline:
            raise self.not_archived(url)
        exchanges: list[Exchange] = []
        try:
            return fetcher().download(url, destination, cancel=cancel, exchanges=exchanges)
        finally:
            self.record(exchanges, "download")

    def search(
        self, url: str, live: Callable[[list[Exchange]], T], archived: Callable[[int, str | None, bytes], T]
    ) -> T:
        """A SearXNG request (`url` with its query): `archived(status, location, body)` of its archived
        response, else `live(exchanges)`, archived."""
        found = self._find(search_key(url))
        if found is not None:
            index, entry = found
            self._link(index, entry)
            status, _, headers, body = entry.read()
            location = next((v for k, v in headers if k.lower() == "location"), None)
            return archived(status, location, body)
        if self.web.offline:
            raise self.not_archived(f"the search {redact_url(url)}")
        exchanges: list[Exchange] = []
        try:
            return live(exchanges)
        finally:
            self.record(exchanges, "searxng")

    def record(self, exchanges: Sequence[Exchange], source: str) -> None:
        if not exchanges or self.web.writer is None:
            return
        try:
            self.refs.extend(self.web.writer.write_exchanges(exchanges, source))
        except ArchiveGap as exc:
            self.refs.append(RecordRef("gap", clean_url(exchanges[-1].url), note=str(exc)))

    def record_cached_page(self, page: dict[str, Any], when: float) -> None:
        """A page the page cache answered: its text (not the original bytes) as a resource record."""
        if self.web.writer is None:
            return
        body = json.dumps(page, ensure_ascii=False).encode("utf-8")
        try:
            self.refs.append(
                self.web.writer.write_resource(
                    str(page["url"]), body, "application/json", when=when, source="page-cache", origin="page-cache"
                )
            )
        except ArchiveGap as exc:
            self.refs.append(RecordRef("gap", clean_url(str(page["url"])), note=str(exc)))

    def meta(self) -> dict[str, Any]:
        """What the tool output carries for the history: the records, and a notice for any gap."""
        if not self.refs:
            return {}
        meta: dict[str, Any] = {"archive": [ref.as_dict() for ref in self.refs]}
        gaps = [ref.note for ref in self.refs if ref.kind == "gap"]
        if gaps:
            meta["notice"] = gaps[0]
        return meta


def open_run_web(
    archive: Any,
    scrape: Any,
    run_dir_of: Callable[[str], Path],
    run_id: str,
    run_dir: Path,
    *,
    reuse_runs: Sequence[str] = (),
) -> RunWeb:
    """The run's web from the [archive] and [scrape] settings; ArchiveError for an unusable archive.

    The run's own earlier archive (a resumed run) and the archives of `reuse_runs`
    (the run a re-run repeats) answer before the network.
    """
    own_files = warc_files(archive_dir(run_dir))
    own = ArchiveIndex.load(own_files, "reused", run_id=run_id) if own_files else None
    reuse = []
    for other in reuse_runs:
        files = warc_files(archive_dir(run_dir_of(other)))
        if files:
            reuse.append(ArchiveIndex.load(files, f"archive:{other}", run_id=other))
    replay = None
    if archive.web.strip() and archive.web.strip() != "live":
        if not archive.web.startswith("archive:"):
            raise ArchiveError(
                f"[archive] web = {archive.web!r} is not a web mode", "use live, archive:RUN_ID or archive:PATH"
            )
        files, label = resolve_archive(archive.web, run_dir_of)
        replay = ArchiveIndex.load(files, label)
    writer = (
        ArchiveWriter(archive_dir(run_dir), run_id, max_bytes=archive.max_mb * 1_000_000) if archive.enabled else None
    )
    policy = AddressPolicy(scrape.allow_private, tuple(scrape.allow_hosts))
    return RunWeb(writer=writer, policy=policy, replay=replay, reuse=reuse, own=own, max_redirects=scrape.max_redirects)
