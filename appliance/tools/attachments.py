"""Attached files read for the task message: converted to text, capped by characters and by tokens.

The reference inlines its task file's text (appliance.protocol.attachments has
the format). Its 200,000-character cap is about 50,000 tokens: more than a
32K window holds. Here the attached files share a token budget (by default a
quarter of the context window) so that the task leaves room for the run; a
file cut by it ends with the reference's truncation mark, and stays whole in
the sandbox (the upload tool reads the file itself, not this text).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.protocol.attachments import (
    FILE_MAX_CHARS,
    InlineFile,
    UnreadableFile,
    extension,
    is_inlined_kind,
)
from appliance.tools.documents import UnsupportedDocument, convert

# Bigger files are not read into the task at all (the note points the model at its tools).
MAX_READ_BYTES = 50_000_000
_PLAIN = frozenset({"py", "txt", "md", "sh", "yaml", "yml", "toml", "csv"})

Attachment = InlineFile | UnreadableFile | str


def read_attachment(path: Path) -> Attachment:
    """The text of an attached file as the reference reads it, an error, or its path (note only)."""
    name = str(path)
    if not path.is_file() or not is_inlined_kind(name) or path.stat().st_size > MAX_READ_BYTES:
        return name
    kind = extension(name)
    try:
        data = path.read_bytes()
        if kind in _PLAIN:
            return InlineFile(name, data.decode("utf-8"))
        if kind in ("json", "jsonld"):
            return InlineFile(name, json.dumps(json.loads(data.decode("utf-8")), ensure_ascii=False, indent=2))
        document = convert(data, name=path.name)
    except UnsupportedDocument:
        return name
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return UnreadableFile(name, str(exc))
    # Only an HTML page's own <title> is a title the reference prints (not the file name).
    title = document.title if document.kind == "html" and document.title != path.name else ""
    return InlineFile(name, document.text, title)


def fit_chars(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> int:
    """The most leading characters of `text` (at most the reference's cap) that fit `max_tokens`."""
    limit = min(len(text), FILE_MAX_CHARS)
    if max_tokens <= 0:
        return 0
    if count_tokens(text[:limit]) <= max_tokens:
        return limit
    low, high = 0, limit  # text[:low] fits, text[:high] does not
    while high - low > max(32, low // 200):
        middle = (low + high) // 2
        if count_tokens(text[:middle]) <= max_tokens:
            low = middle
        else:
            high = middle
    return low


def inline_attachments(
    paths: Sequence[Path], *, token_budget: int, count_tokens: Callable[[str], int]
) -> list[Attachment]:
    """Every attached path for the task message; the inlined texts share `token_budget` evenly."""
    read = [read_attachment(path) for path in paths]
    inlined = [a for a in read if isinstance(a, InlineFile)]
    if not inlined:
        return read
    share = max(0, token_budget) // len(inlined)
    capped: list[Attachment] = []
    for attached in read:
        if isinstance(attached, InlineFile):
            keep = fit_chars(attached.text, share, count_tokens)
            attached = InlineFile(attached.path, attached.text, attached.title, keep)
        capped.append(attached)
    return capped
