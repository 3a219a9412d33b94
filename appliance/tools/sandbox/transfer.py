"""The three file tools: attached files in, internet files in (fetched by the host), sandbox files out."""

from __future__ import annotations

import dataclasses
import posixpath
import secrets
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from appliance.config import Settings
from appliance.tools.archive import WebCall
from appliance.tools.base import CallContext, ToolOutput
from appliance.tools.fetcher import FetchError, LazyFetcher
from appliance.tools.sandbox import files
from appliance.tools.sandbox.files import PathRefused

if TYPE_CHECKING:
    from appliance.tools.sandbox.bwrap import Layout
    from appliance.tools.sandbox.server import SandboxServer

DOWNLOADS_DIR = ".downloads"  # in the run directory: fetched files wait here, out of the sandbox's reach


def url_file_name(url: str) -> str:
    """The reference's rule: the last component of the URL's path, else "downloaded_file"."""
    name = unquote(posixpath.basename(urlsplit(url).path)).strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return "downloaded_file"
    return name


def looks_like_dir(requested: str, parts: tuple[str, ...], exists_as_dir: bool) -> bool:
    """The reference's looks_like_dir, asked of the workspace: a directory, a trailing '/', no extension."""
    if exists_as_dir or not parts or requested.rstrip().endswith("/"):
        return True
    return not posixpath.splitext(parts[-1])[1]


class Transfers:
    def __init__(self, settings: Settings, server: SandboxServer) -> None:
        self.settings = settings
        self.server = server
        self.fetcher = LazyFetcher(settings.scrape)

    def close(self) -> None:
        self.fetcher.close()

    def upload(self, sandbox_id: str, local: str, destination: str, ctx: CallContext) -> ToolOutput:
        found = self.server.find(sandbox_id, ctx)
        if isinstance(found, ToolOutput):
            return found
        try:
            source = files.attached_source(local, ctx.attachments)
            directory = files.sandbox_parts(destination)
            layout = self.server.record_layout(found, ctx)
            if source.is_file():
                target = (*directory, source.name)
                with source.open("rb") as handle:
                    files.write_file(layout.workspace, target, handle, uid=layout.file_owner)
                return ToolOutput(f"File uploaded to {files.sandbox_path(target)}")
            if not source.is_dir():
                return ToolOutput(f"[ERROR]: Path is not a file: {local}", is_error=True)
            root = (*directory, source.name)
            count = 0
            with files.open_dir(layout.workspace, root, create=True, uid=layout.file_owner):
                pass
            for relative, path in files.walk_upload(source):
                with path.open("rb") as handle:
                    files.write_file(layout.workspace, (*root, *relative), handle, uid=layout.file_owner)
                count += 1
            return ToolOutput(f"Directory uploaded to {files.sandbox_path(root)} ({count} files)")
        except PathRefused as exc:
            return ToolOutput(f"[ERROR]: Failed to upload file {local} to sandbox {sandbox_id}: {exc}", is_error=True)
        except OSError as exc:
            return ToolOutput(
                f"[ERROR]: Failed to upload file {local} to sandbox {sandbox_id}: {exc.strerror}", is_error=True
            )

    def from_internet(self, sandbox_id: str, url: str, destination: str, ctx: CallContext) -> ToolOutput:
        found = self.server.find(sandbox_id, ctx)
        if isinstance(found, ToolOutput):
            return found
        try:
            layout = self.server.record_layout(found, ctx)
            parts = files.sandbox_parts(destination)
            if looks_like_dir(destination, parts, files.is_dir(layout.workspace, parts)):
                parts = (*parts, url_file_name(url))
        except PathRefused as exc:
            return ToolOutput(f"[ERROR]: Failed to download file from {url}: {exc}", is_error=True)
        where = files.sandbox_path(parts)
        incoming = ctx.run_dir / DOWNLOADS_DIR
        incoming.mkdir(parents=True, exist_ok=True)
        scratch = incoming / secrets.token_hex(8)
        web = ctx.web.call() if ctx.web is not None else None
        output = self._download(url, where, scratch, parts, layout, ctx, web)
        return dataclasses.replace(output, meta={**output.meta, **web.meta()}) if web is not None else output

    def _download(
        self,
        url: str,
        where: str,
        scratch: Path,
        parts: tuple[str, ...],
        layout: Layout,
        ctx: CallContext,
        web: WebCall | None,
    ) -> ToolOutput:
        try:
            if web is not None:
                fetched = web.download(self.fetcher.get, url, scratch, ctx.cancel.is_set)
            else:
                fetched = self.fetcher.get().download(url, scratch, cancel=ctx.cancel.is_set)
            if not fetched.ok:
                return ToolOutput(
                    f"[ERROR]: Failed to download file from {url} to {where}: the server answered HTTP "
                    f"{fetched.status_code}.",
                    is_error=True,
                )
            with scratch.open("rb") as handle:
                files.write_file(layout.workspace, parts, handle, uid=layout.file_owner)
        except FetchError as exc:
            return ToolOutput(f"[ERROR]: Failed to download file from {url}: {exc}", is_error=True)
        except PathRefused as exc:
            return ToolOutput(f"[ERROR]: Failed to download file from {url} to {where}: {exc}", is_error=True)
        finally:
            scratch.unlink(missing_ok=True)
        return ToolOutput(f"File downloaded to {where}")

    def to_local(self, sandbox_id: str, path: str, local_name: object, ctx: CallContext) -> ToolOutput:
        found = self.server.find(sandbox_id, ctx)
        if isinstance(found, ToolOutput):
            return found
        try:
            layout = self.server.record_layout(found, ctx)
            parts = files.sandbox_parts(path)
            with files.read_file(layout.workspace, parts) as source:
                name = files.output_name(str(local_name) if local_name is not None else None, parts[-1])
                target, sink = files.create_output(Path(ctx.output_dir), name)
                with sink:
                    while chunk := source.read(1 << 20):
                        sink.write(chunk)
        except PathRefused as exc:
            return ToolOutput(
                f"[ERROR]: Cannot download '{path}' from sandbox {sandbox_id}: {str(exc).rstrip('.')}.",
                is_error=True,
            )
        except OSError as exc:
            return ToolOutput(
                f"[ERROR]: Failed to download file '{path}' from sandbox {sandbox_id}: {exc.strerror}", is_error=True
            )
        return ToolOutput(f"File downloaded successfully to: {target}", meta={"path": str(target)})
