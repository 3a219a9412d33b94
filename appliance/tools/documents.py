"""Turn document bytes into the text a model reads: HTML, PDF, office files, Markdown, plain text.

Shared by the scrape tool (fetched pages) and the local corpus (files on disk).
Converters, chosen for size and upkeep: trafilatura for HTML main text, pypdf
(pure Python) for PDF, python-docx for Word, openpyxl for Excel; PowerPoint and
OpenDocument files are zip archives of XML whose text runs are read with lxml
directly, which avoids python-pptx's Pillow dependency. Every input is
untrusted: zip archives are checked for their unpacked size before parsing.
"""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

# Unpacked size an office archive may claim before we refuse it (zip bombs).
MAX_UNPACKED_BYTES = 200_000_000

_CONTENT_TYPES: dict[str, str] = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/vnd.oasis.opendocument.text": "odf",
    "application/vnd.oasis.opendocument.spreadsheet": "odf",
    "application/vnd.oasis.opendocument.presentation": "odf",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "application/json": "text",
    "application/ld+json": "text",
    "application/xml": "text",
    "text/xml": "text",
    "application/javascript": "text",
    "application/x-yaml": "text",
    "application/yaml": "text",
    "application/toml": "text",
    "application/x-tex": "text",
    "application/x-sh": "text",
}

_EXTENSIONS: dict[str, str] = {
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".pptx": "pptx",
    ".odt": "odf",
    ".ods": "odf",
    ".odp": "odf",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".rst": "text",
    ".txt": "text",
    ".text": "text",
    ".csv": "text",
    ".tsv": "text",
    ".json": "text",
    ".jsonl": "text",
    ".xml": "text",
    ".yaml": "text",
    ".yml": "text",
    ".toml": "text",
    ".ini": "text",
    ".cfg": "text",
    ".log": "text",
    ".tex": "text",
    ".py": "text",
    ".c": "text",
    ".h": "text",
    ".cpp": "text",
    ".java": "text",
    ".js": "text",
    ".ts": "text",
    ".go": "text",
    ".rs": "text",
    ".sh": "text",
    ".sql": "text",
}

# Content types that are certainly not text: refused without looking further.
_BINARY_PREFIXES = ("image/", "audio/", "video/", "font/")
_BINARY_TYPES = frozenset(
    {
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/x-7z-compressed",
        "application/x-rar-compressed",
        "application/vnd.rar",
        "application/x-bzip2",
        "application/x-xz",
        "application/wasm",
        "application/x-executable",
        "application/x-msdownload",
        "application/vnd.microsoft.portable-executable",
        "application/java-archive",
        "application/x-iso9660-image",
        "application/vnd.ms-fontobject",
    }
)


class UnsupportedDocument(Exception):
    """The bytes are not a document the appliance can turn into text; the message says why."""


@dataclass(frozen=True)
class Document:
    title: str
    text: str
    kind: str


def supported_extensions() -> frozenset[str]:
    return frozenset(_EXTENSIONS)


def kind_for(content_type: str, name: str, data: bytes) -> str:
    """Which converter reads these bytes: declared type, then file name, then magic bytes."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype.startswith(_BINARY_PREFIXES) or ctype in _BINARY_TYPES:
        raise UnsupportedDocument(f"the content type is {ctype}, which is not a text document")
    head = data[:1024].lstrip()
    if head.startswith(b"%PDF-"):
        return "pdf"
    if ctype in _CONTENT_TYPES:
        return _CONTENT_TYPES[ctype]
    if ctype.startswith("text/"):
        return "text"
    suffix = PurePosixPath(name.split("?")[0].split("#")[0]).suffix.lower()
    if suffix in _EXTENSIONS and (not ctype or ctype in ("application/octet-stream", "binary/octet-stream")):
        return _EXTENSIONS[suffix]
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(data) or _raise(f"{name or 'the data'} is a zip archive, not a document")
    lowered = head[:512].lower()
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<body" in lowered or b"<head" in lowered:
        return "html"
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if looks_like_text(data):
        return "text"
    raise UnsupportedDocument(
        f"the content type is {ctype or 'unknown'}, and the data is not HTML, PDF, an office file or text"
    )


def _raise(message: str) -> str:
    raise UnsupportedDocument(message)


def _zip_kind(data: bytes) -> str | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            if "mimetype" in names:
                mimetype = archive.read("mimetype")[:100].decode("ascii", "replace").strip()
                return _CONTENT_TYPES.get(mimetype)
    except zipfile.BadZipFile:
        return None
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names:
        return "xlsx"
    if "ppt/presentation.xml" in names:
        return "pptx"
    return None


def looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    if not sample:
        return True
    if b"\x00" in sample and not sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    controls = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return controls / len(sample) < 0.05


# ------------------------------------------------------------------ charsets

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"""^<\?xml[^>]+encoding\s*=\s*["']([a-zA-Z0-9_.:-]+)""")


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip()).name
    except LookupError:
        return None


def decode_text(data: bytes, declared: str | None = None, *, html: bool = False) -> str:
    """Bytes to str: BOM, then the declared charset, an HTML/XML declaration, UTF-8, then detection."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace")
    candidates = [_codec(declared)]
    head = data[:4096]
    if html:
        found = _META_CHARSET.search(head)
        candidates.append(_codec(found.group(1).decode("ascii")) if found else None)
    found_xml = _XML_ENCODING.search(head)
    candidates.append(_codec(found_xml.group(1).decode("ascii")) if found_xml else None)
    for candidate in candidates:
        if candidate:
            # Pages often declare latin-1 and mean cp1252 (browsers do the same swap).
            encoding = "cp1252" if candidate in ("latin-1", "iso8859-1", "ascii") else candidate
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                return data.decode(encoding, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data[:200_000])
    # Western single-byte encodings are hard to tell apart; when windows-1252 is among
    # the plausible ones, take it, as browsers do for undeclared pages.
    if any(match.encoding == "cp1252" for match in matches):
        return data.decode("cp1252", errors="replace")
    best = matches.best()
    return data.decode(best.encoding if best is not None else "cp1252", errors="replace")


# ------------------------------------------------------------------ splitting


def pack_paragraphs(text: str, size: int) -> list[str]:
    """Split on blank lines, then lines, then words, packing pieces up to `size` characters."""
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= size:
            pieces.append(paragraph)
            continue
        for line in paragraph.split("\n"):
            while len(line) > size:
                cut = line.rfind(" ", 0, size)
                cut = cut if cut > size // 2 else size
                pieces.append(line[:cut])
                line = line[cut:].lstrip()
            if line.strip():
                pieces.append(line)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + len(piece) + 2 > size:
            chunks.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


# ------------------------------------------------------------------ converters

_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_BLANK_RUNS = re.compile(r"\n{3,}")


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def html_to_text(html: str, url: str | None = None) -> tuple[str, str]:
    """(title, main text as Markdown): trafilatura's main-content extraction, whole-page text as a fallback."""
    import trafilatura
    from lxml import html as lxml_html

    title = ""
    match = _TITLE.search(html[:200_000])
    if match:
        title = " ".join(lxml_html.fromstring(f"<p>{match.group(1)}</p>").text_content().split())
    text = trafilatura.extract(
        html,
        url=url,
        output_format="markdown",
        include_tables=True,
        include_comments=False,
        include_links=False,
        include_images=False,
        favor_recall=True,
    )
    if not text or len(text) < 200:
        # Short or unusual pages (a table, a list of links) defeat the main-content
        # heuristics; all visible text is better than nothing.
        fallback = trafilatura.html2txt(html)
        if fallback and len(fallback) > len(text or ""):
            text = fallback
    return title, _tidy(text or "")


def pdf_to_text(data: bytes) -> tuple[str, str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnsupportedDocument("the PDF is encrypted with a password")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta = reader.metadata
        title = str(meta.title).strip() if meta is not None and meta.title else ""
    except UnsupportedDocument:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise UnsupportedDocument(f"the PDF cannot be read: {exc}") from exc
    text = "\n\n".join(_tidy(p) for p in pages if p.strip())
    if not text:
        raise UnsupportedDocument("the PDF has no text layer (a scan?); it would need OCR")
    return title, text


def _open_zip(data: bytes) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise UnsupportedDocument(f"the office file is not a valid zip archive: {exc}") from exc
    unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > MAX_UNPACKED_BYTES:
        archive.close()
        raise UnsupportedDocument(
            f"the office file unpacks to {unpacked:,} bytes, over the {MAX_UNPACKED_BYTES:,}-byte limit"
        )
    return archive


def docx_to_text(data: bytes) -> tuple[str, str]:
    import docx

    _open_zip(data).close()
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises assorted errors on broken files
        raise UnsupportedDocument(f"the Word file cannot be read: {exc}") from exc
    parts: list[str] = []
    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        if not text:
            continue
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        if style.startswith("Heading") and style[-1:].isdigit():
            text = "#" * int(style[-1]) + " " + text
        elif style == "Title":
            text = "# " + text
        parts.append(text)
    for table in document.tables:
        rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
        parts.append("\n".join(rows))
    title = (document.core_properties.title or "").strip()
    return title, _tidy("\n\n".join(parts))


def xlsx_to_text(data: bytes) -> tuple[str, str]:
    import openpyxl

    _open_zip(data).close()
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:
        raise UnsupportedDocument(f"the Excel file cannot be read: {exc}") from exc
    parts: list[str] = []
    try:
        for sheet in workbook.worksheets:
            rows = []
            for row in sheet.iter_rows(values_only=True):
                cells = ["" if value is None else str(value) for value in row]
                if any(cells):
                    rows.append("\t".join(cells).rstrip())
            if rows:
                parts.append(f"## Sheet: {sheet.title}\n" + "\n".join(rows))
        title = (workbook.properties.title or "").strip()
    finally:
        workbook.close()
    return title, _tidy("\n\n".join(parts))


def _xml_runs(xml: bytes, text_tags: tuple[str, ...], block_tags: tuple[str, ...], inline_tails: bool) -> str:
    """The text of an office XML part: a newline before each block, runs in document order."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    root = etree.fromstring(xml, parser)
    out: list[str] = []
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        tag = etree.QName(element).localname
        if tag in block_tags or tag in ("br", "line-break"):
            out.append("\n")
        elif tag == "s":
            out.append(" ")
        elif tag == "tab":
            out.append("\t")
        if tag in text_tags and element.text:
            out.append(element.text)
        # In ODF, text after an inline element (span, s, tab) is its tail.
        if inline_tails and tag not in block_tags and element.tail:
            out.append(element.tail)
    return "".join(out)


def pptx_to_text(data: bytes) -> tuple[str, str]:
    with _open_zip(data) as archive:
        slides = sorted(
            (n for n in archive.namelist() if re.fullmatch(r"ppt/slides/slide\d+\.xml", n)),
            key=lambda n: int(re.findall(r"\d+", n)[-1]),
        )
        parts = []
        for number, name in enumerate(slides, 1):
            text = _tidy(_xml_runs(archive.read(name), ("t",), ("p",), inline_tails=False))
            if text:
                parts.append(f"## Slide {number}\n{text}")
    return "", _tidy("\n\n".join(parts))


def odf_to_text(data: bytes) -> tuple[str, str]:
    with _open_zip(data) as archive:
        try:
            content = archive.read("content.xml")
        except KeyError as exc:
            raise UnsupportedDocument("the OpenDocument file has no content.xml") from exc
        text = _xml_runs(content, ("p", "h", "span", "a"), ("p", "h", "table-row"), inline_tails=True)
    return "", _tidy(text)


def convert(
    data: bytes,
    *,
    content_type: str = "",
    name: str = "",
    charset: str | None = None,
    url: str | None = None,
) -> Document:
    """The title and text of a document; raises UnsupportedDocument with a reason."""
    kind = kind_for(content_type, name, data)
    title = ""
    if kind == "html":
        title, text = html_to_text(decode_text(data, charset, html=True), url)
    elif kind == "pdf":
        title, text = pdf_to_text(data)
    elif kind == "docx":
        title, text = docx_to_text(data)
    elif kind == "xlsx":
        title, text = xlsx_to_text(data)
    elif kind == "pptx":
        title, text = pptx_to_text(data)
    elif kind == "odf":
        title, text = odf_to_text(data)
    else:
        text = _tidy(decode_text(data, charset))
        if kind == "markdown":
            heading = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
            title = heading.group(1).strip() if heading else ""
    if not title and name:
        title = PurePosixPath(name.split("?")[0]).name
    return Document(title=title, text=text, kind=kind)
