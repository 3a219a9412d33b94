"""WARC files of a run's web archive: written record by record, read back and indexed with warcio.

Layout: `RUN_DIR/archive/*.warc.gz`, one file per process session of the run (a
resumed run adds a file; nothing is rewritten). A file starts with a warcinfo
record naming the run; each HTTP exchange is a request record and a response
record linked by WARC-Concurrent-To (every hop of a redirect chain too). A page
the page cache answered (converted text, not bytes) is a resource record.
Records are built in memory and appended with one write, so a full disk or the
size cap leaves the file as it was (cut back) and the caller records the gap.

Secrets never enter an archive: user:password and `?api_key=`-style parameters
in URLs, and Authorization, Cookie and API-key headers, become ***. Response
bodies are the payload after Content-Encoding was undone (the bytes the
fetcher read); the headers say so (`Appliance-Decoded: gzip`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from appliance import __version__
from appliance.errors import ConfigError
from appliance.policy import SECRET_NAME, redact_url
from appliance.tools.documents import UnsupportedDocument, convert
from appliance.tools.fetcher import Exchange, FetchError

ARCHIVE_DIR = "archive"
SOURCE = "Appliance-Source"  # fetch | download | searxng | page-cache
_REPLAYED_FROM = "Appliance-Replayed-From"
_DECODED = "Appliance-Decoded"
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Framing that no longer describes the archived payload (it is stored whole and decoded).
_FRAMING = frozenset({"content-encoding", "transfer-encoding", "content-length"})


class ArchiveError(ConfigError):
    """An archive that cannot be used: missing, truncated, corrupt, or another run's."""


class NotArchived(FetchError):
    """Offline replay was asked for something the archive does not hold."""


class ArchiveGap(Exception):
    """A record could not be written (disk full, size cap); the message says why."""


def archive_dir(run_dir: Path) -> Path:
    return run_dir / ARCHIVE_DIR


def warc_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.warc.gz") if p.is_file()) if directory.is_dir() else []


# ---------------------------------------------------------------- secrets and keys


def clean_url(url: str) -> str:
    """The URL as archived and looked up: no credentials, no fragment."""
    parts = urlsplit(redact_url(url))
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


def clean_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    cleaned = []
    for name, value in headers:
        secret = name.lower() in _SECRET_HEADERS or SECRET_NAME.match(name.replace("-", "_")) is not None
        cleaned.append((name, "***" if secret and value else redact_url(value)))
    return cleaned


def search_key(url: str) -> str:
    """A SearXNG request by its query alone: the instance's address may differ when a run is replayed."""
    query = sorted(parse_qsl(urlsplit(redact_url(url)).query, keep_blank_values=True))
    return "searxng?" + urlencode(query)


def _key(source: str, uri: str) -> str:
    return search_key(uri) if source == "searxng" else clean_url(uri)


def payload_digest(body: bytes) -> str:
    """WARC-Payload-Digest as warcio writes it."""
    return "sha1:" + base64.b32encode(hashlib.sha1(body).digest()).decode("ascii")


def warc_date(when: float) -> str:
    """A time as WARC-Date writes it (UTC, seconds)."""
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- what a tool call links to


@dataclass(frozen=True)
class RecordRef:
    """A record of the run's own archive (or a gap) that a tool call read; stored in the history."""

    kind: str  # response | resource | gap | local
    uri: str
    file: str = ""  # a file name in the run's archive directory
    offset: int | None = None
    record_id: str = ""
    date: str = ""  # WARC-Date (UTC)
    status: int | None = None
    digest: str = ""  # WARC-Payload-Digest
    length: int | None = None  # payload bytes
    origin: str = "web"  # web | page-cache | reused | the archive it was replayed from
    note: str = ""  # why there is a gap
    passage: str = ""  # the part of the document the extractor used (set by the scrape tool)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", None)}


# ---------------------------------------------------------------- writing


@dataclass
class _Pending:
    record: Any  # a warcio ArcWarcRecord
    kind: str
    uri: str
    status: int | None
    length: int


class ArchiveWriter:
    """Appends records to this session's WARC file of a run; safe to share between a run's threads."""

    def __init__(self, directory: Path, run_id: str, *, max_bytes: int) -> None:
        self.directory = directory
        self.run_id = run_id
        self.max_bytes = max_bytes
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        self.path = directory / f"{stamp}-{os.getpid()}-{secrets.token_hex(2)}.warc.gz"
        self._lock = threading.Lock()
        self._used: int | None = None

    def _size_used(self) -> int:
        if self._used is None:
            self._used = sum(p.stat().st_size for p in warc_files(self.directory))
        return self._used

    def write_exchanges(self, exchanges: Sequence[Exchange], source: str, origin: str = "web") -> list[RecordRef]:
        """A request and a response record per exchange; the refs of the responses."""
        pending: list[_Pending] = []
        writer = WARCWriter(io.BytesIO(), gzip=True)
        for exchange in exchanges:
            uri = clean_url(exchange.url)
            parts = urlsplit(uri)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            request = writer.create_warc_record(
                uri,
                "request",
                http_headers=StatusAndHeaders(
                    f"GET {target} {exchange.http_version}",
                    clean_headers(exchange.request_headers),
                    is_http_request=True,
                ),
                warc_headers_dict={"WARC-Date": warc_date(exchange.started)},
            )
            response = self._response_record(writer, exchange, uri, source, request.rec_headers)
            pending.append(_Pending(request, "request", uri, None, 0))
            pending.append(_Pending(response, "response", uri, exchange.status, len(exchange.body)))
        return self._append(pending, origin)

    @staticmethod
    def _response_record(writer: WARCWriter, exchange: Exchange, uri: str, source: str, request: Any) -> Any:
        headers = [(k, v) for k, v in clean_headers(exchange.response_headers) if k.lower() not in _FRAMING]
        encoding = dict((k.lower(), v) for k, v in exchange.response_headers).get("content-encoding")
        headers.append(("Content-Length", str(len(exchange.body))))
        extra = {
            "WARC-Date": warc_date(exchange.started),
            "WARC-Concurrent-To": request.get_header("WARC-Record-ID"),
            SOURCE: source,
        }
        if exchange.peer:
            extra["WARC-IP-Address"] = exchange.peer
        if encoding and encoding.lower() != "identity":
            extra[_DECODED] = encoding
        return writer.create_warc_record(
            uri,
            "response",
            payload=io.BytesIO(exchange.body),
            length=len(exchange.body),
            http_headers=StatusAndHeaders(
                f"{exchange.status} {exchange.reason}".strip(), headers, protocol=exchange.http_version
            ),
            warc_headers_dict=extra,
        )

    def write_resource(
        self, uri: str, body: bytes, content_type: str, *, when: float, source: str, origin: str
    ) -> RecordRef:
        writer = WARCWriter(io.BytesIO(), gzip=True)
        record = writer.create_warc_record(
            clean_url(uri),
            "resource",
            payload=io.BytesIO(body),
            length=len(body),
            warc_content_type=content_type,
            warc_headers_dict={"WARC-Date": warc_date(when), SOURCE: source},
        )
        return self._append([_Pending(record, "resource", clean_url(uri), None, len(body))], origin)[0]

    def copy(self, entry: ArchivedRecord, origin: str) -> RecordRef:
        """An archived response (from another archive) written into this run's own, with its original date."""
        status, reason, headers, body = entry.read()
        if entry.kind == "resource":
            return self.write_resource(
                entry.uri, body, entry.content_type, when=entry.when, source=entry.source, origin=origin
            )
        writer = WARCWriter(io.BytesIO(), gzip=True)
        extra = {
            "WARC-Date": entry.date,
            SOURCE: entry.source,
            _REPLAYED_FROM: origin,
            "WARC-Refers-To": entry.record_id,
        }
        if entry.peer:
            extra["WARC-IP-Address"] = entry.peer
        record = writer.create_warc_record(
            entry.uri,
            "response",
            payload=io.BytesIO(body),
            length=len(body),
            http_headers=StatusAndHeaders(f"{status} {reason}".strip(), headers, protocol="HTTP/1.1"),
            warc_headers_dict=extra,
        )
        return self._append([_Pending(record, "response", entry.uri, status, len(body))], origin)[0]

    def _append(self, pending: list[_Pending], origin: str) -> list[RecordRef]:
        with self._lock:
            chunks: list[bytes] = []
            starting = not self.path.exists()
            if starting:
                chunks.append(self.serialise(self.warcinfo_record()))
            first_record = len(chunks)
            for item in pending:
                chunks.append(self.serialise(item.record))
            size = sum(len(c) for c in chunks)
            used = self._size_used()
            if used + size > self.max_bytes:
                raise ArchiveGap(
                    f"the run's web archive reached its cap of {self.max_bytes / 1e6:g} MB ([archive] max_mb); "
                    "this document was not archived"
                )
            self.directory.mkdir(parents=True, exist_ok=True)
            offset = self.path.stat().st_size if self.path.exists() else 0
            self._write_all(b"".join(chunks), offset)
            self._used = used + size
            refs = []
            position = offset + sum(len(c) for c in chunks[:first_record])
            for item, chunk in zip(pending, chunks[first_record:], strict=True):
                if item.kind != "request":
                    headers = item.record.rec_headers
                    refs.append(
                        RecordRef(
                            kind=item.kind,
                            uri=item.uri,
                            file=self.path.name,
                            offset=position,
                            record_id=str(headers.get_header("WARC-Record-ID")),
                            date=str(headers.get_header("WARC-Date")),
                            status=item.status,
                            digest=str(headers.get_header("WARC-Payload-Digest") or ""),
                            length=item.length,
                            origin=origin,
                        )
                    )
                position += len(chunk)
            return refs

    def _write_all(self, data: bytes, offset: int) -> None:
        """One append; on failure (ENOSPC, EFBIG) the file is cut back so it stays a valid WARC."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise ArchiveGap(
                f"the web archive could not be written ({exc.strerror}); this document was not archived"
            ) from exc
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError as exc:
            try:
                os.ftruncate(fd, offset)
            except OSError:
                pass
            raise ArchiveGap(
                f"the web archive could not be written ({exc.strerror}); this document was not archived"
            ) from exc
        finally:
            os.close(fd)

    def warcinfo_record(self) -> Any:
        writer = WARCWriter(io.BytesIO(), gzip=True)
        return writer.create_warcinfo_record(
            self.path.name,
            {"software": f"appliance/{__version__}", "format": "WARC File Format 1.0", "run-id": self.run_id},
        )

    @staticmethod
    def serialise(record: Any) -> bytes:
        out = io.BytesIO()
        WARCWriter(out, gzip=True).write_record(record)
        return out.getvalue()


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class ArchivedRecord:
    """A response or resource record found in an archive file."""

    path: Path
    offset: int
    kind: str
    uri: str
    source: str
    record_id: str
    date: str
    status: int | None
    location: str | None
    peer: str | None
    content_type: str
    run_id: str

    @property
    def when(self) -> float:
        return dt.datetime.strptime(self.date, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()

    def read(self) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """(status, reason, headers, body) read back from the file."""
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            for record in ArchiveIterator(handle):
                body = record.content_stream().read()
                if record.http_headers is None:
                    return 200, "OK", [("Content-Type", self.content_type)], body
                status_line = record.http_headers.get_statuscode() or "200"
                reason = record.http_headers.statusline.partition(" ")[2]
                return int(status_line), reason, list(record.http_headers.headers), body
        raise ArchiveError(f"no record at offset {self.offset} of {self.path}", "the archive was changed; rebuild it")


def scan(path: Path) -> tuple[str, list[ArchivedRecord]]:
    """The run id a file belongs to and its response/resource records; ArchiveError if it is damaged."""
    records: list[ArchivedRecord] = []
    run_id = ""
    end = 0
    fix = "move the file away (the run's own archive keeps working without it), or point --web at another archive"
    try:
        with path.open("rb") as handle:
            iterator = ArchiveIterator(handle, check_digests="raise")
            for record in iterator:
                if record.format != "warc":
                    raise ArchiveError(f"{path} is not a WARC file", fix)
                kind = record.rec_type
                if kind == "warcinfo":
                    fields = record.content_stream().read().decode("utf-8", "replace")
                    for line in fields.splitlines():
                        name, _, value = line.partition(":")
                        if name.strip() == "run-id":
                            run_id = value.strip()
                elif kind in ("response", "resource"):
                    headers = record.rec_headers
                    # warcio stops quietly where a gzip member is cut off: the digest says whether all is there.
                    if payload_digest(record.content_stream().read()) != headers.get_header("WARC-Payload-Digest"):
                        raise ArchiveError(
                            f"the web archive {path} is truncated or corrupt in the record after byte {end}", fix
                        )
                    http = record.http_headers
                    status = int(http.get_statuscode()) if http is not None and http.get_statuscode() else None
                    records.append(
                        ArchivedRecord(
                            path=path,
                            offset=0,  # set below, once warcio knows it
                            kind=kind,
                            uri=str(headers.get_header("WARC-Target-URI") or ""),
                            source=str(headers.get_header(SOURCE) or "fetch"),
                            record_id=str(headers.get_header("WARC-Record-ID") or ""),
                            date=str(headers.get_header("WARC-Date") or ""),
                            status=status,
                            location=http.get_header("Location") if http is not None else None,
                            peer=headers.get_header("WARC-IP-Address"),
                            content_type=str(headers.get_header("Content-Type") or ""),
                            run_id=run_id,
                        )
                    )
                iterator.read_to_end(record)
                offset = iterator.get_record_offset()
                end = offset + iterator.get_record_length()
                if records and kind in ("response", "resource"):
                    last = records[-1]
                    records[-1] = ArchivedRecord(**{**last.__dict__, "offset": offset})
    except ArchiveLoadFailed as exc:
        raise ArchiveError(f"the web archive {path} is corrupt after byte {end}: {exc}".splitlines()[0], fix) from exc
    except (OSError, EOFError, ValueError, AttributeError) as exc:
        raise ArchiveError(f"the web archive {path} cannot be read after byte {end}: {exc}", fix) from exc
    size = path.stat().st_size
    if end != size:
        raise ArchiveError(
            f"the web archive {path} is truncated: {size - end:,} bytes after byte {end} are cut off", fix
        )
    if not run_id:
        raise ArchiveError(f"{path} is not an appliance web archive (no warcinfo record naming its run)", fix)
    return run_id, records


@dataclass
class ArchiveIndex:
    """The newest response per URL (and per SearXNG query) across some archive files."""

    label: str
    run_ids: set[str] = field(default_factory=set)
    entries: dict[str, ArchivedRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, files: Sequence[Path], label: str, *, run_id: str | None = None) -> ArchiveIndex:
        """Index `files`; with `run_id`, every file must belong to that run."""
        index = cls(label)
        for path in files:
            owner, records = scan(path)
            if run_id is not None and owner != run_id:
                raise ArchiveError(
                    f"{path} is the web archive of run {owner}, not of run {run_id}",
                    f"move it out of {path.parent}; replay another run's archive with --web archive:{owner}",
                )
            index.run_ids.add(owner)
            for record in records:
                index.entries[_key(record.source, record.uri)] = record
        return index

    def find(self, key: str) -> ArchivedRecord | None:
        return self.entries.get(key)


def resolve_archive(spec: str, run_dir_of: Callable[[str], Path]) -> tuple[list[Path], str]:
    """`archive:RUN_ID`, `archive:PATH` (a WARC file or a directory of them): the files and a label."""
    target = spec.removeprefix("archive:").strip()
    if not target:
        raise ArchiveError(
            "--web archive: needs a run id or a path", "write --web archive:RUN_ID or --web FILE.warc.gz"
        )
    path = Path(target).expanduser()
    if path.is_file():
        return [path], f"archive:{path}"
    if path.is_dir():
        files = warc_files(path) or warc_files(archive_dir(path))
        if files:
            return files, f"archive:{path}"
        raise ArchiveError(f"no WARC file (*.warc.gz) in {path}", "point --web at a run's archive directory or file")
    run_dir = run_dir_of(target)  # a run id names one directory level under runs/, never a path out
    files = warc_files(archive_dir(run_dir))
    if not files:
        raise ArchiveError(
            f"run {target} has no web archive ({archive_dir(run_dir)} has no *.warc.gz)",
            "give the full run id of a run recorded with [archive] enabled, or a WARC file path",
        )
    return files, f"archive:{target}"


def read_archived_text(run_dir: Path, file: str, offset: int) -> tuple[str, bytes, str, str]:
    """(uri, body, content type, WARC-Date) of a record in a run's archive, for showing an archived copy."""
    path = archive_dir(run_dir) / Path(file).name
    if not path.is_file():
        raise ArchiveError(f"the archived copy is gone ({path} does not exist)", "the run's directory was pruned")
    with path.open("rb") as handle:
        handle.seek(offset)
        for record in ArchiveIterator(handle):
            uri = str(record.rec_headers.get_header("WARC-Target-URI") or "")
            body = record.content_stream().read()
            date = str(record.rec_headers.get_header("WARC-Date") or "")
            if str(record.rec_headers.get_header(SOURCE) or "") == "page-cache":
                page = json.loads(body.decode("utf-8"))
                return uri, str(page.get("text", "")).encode("utf-8"), "text/plain; charset=utf-8", date
            headers = record.http_headers if record.http_headers is not None else record.rec_headers
            return uri, body, str(headers.get_header("Content-Type") or ""), date
    raise ArchiveError(f"no record at offset {offset} of {path}", "the archive was changed")


def save_task_archive(run_dir: Path, run_id: str, target: Path) -> None:
    """A run's whole archive as one WARC file (gzip members concatenate), written atomically.

    A run that fetched nothing still gets a file (its warcinfo alone), so a replay of
    it is offline too.
    """
    files = warc_files(archive_dir(run_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as out:
        if not files:
            out.write(
                ArchiveWriter.serialise(ArchiveWriter(archive_dir(run_dir), run_id, max_bytes=0).warcinfo_record())
            )
        for path in files:
            out.write(path.read_bytes())
    partial.replace(target)


def archived_text(run_dir: Path, file: str, offset: int) -> str:
    """An archived copy rendered as text (the same converters as the scrape tool), headed by its URL and date."""
    uri, body, content_type, date = read_archived_text(run_dir, file, offset)
    ctype, _, params = content_type.partition(";")
    charset = next(
        (v.strip("\"' ") for k, _, v in (p.strip().partition("=") for p in params.split(";")) if k == "charset"), None
    )
    try:
        text = convert(body, content_type=ctype.strip().lower(), name=urlsplit(uri).path, charset=charset, url=uri).text
    except UnsupportedDocument as exc:
        text = f"(the archived copy cannot be shown as text: {exc})"
    return f"{uri}\narchived {date}\n\n{text}"
