"""Document conversion with real files: HTML main text, PDF, Word, Excel, PowerPoint, OpenDocument, charsets."""

from __future__ import annotations

import codecs
import io
import zipfile

import pytest

from appliance.tools import documents
from appliance.tools.documents import UnsupportedDocument, convert, decode_text, kind_for, pack_paragraphs
from tests.pagefixtures import LATIN1_PAGE, SJIS_PAGE, SJIS_TEXT, boilerplate_article, make_pdf, report_pdf


def test_html_main_text_drops_boilerplate() -> None:
    page = boilerplate_article()
    doc = convert(page.encode(), content_type="text/html; charset=utf-8")
    assert doc.kind == "html"
    assert doc.title == "Kettle Valley Railway - Rail History Weekly"
    assert "The line opened in 1915 and ran for 525 kilometres" in doc.text
    for noise in ("Sponsored", "We use cookies", "Footer link", "gtag", "Search the archive", "Section 12"):
        assert noise not in doc.text
    assert len(doc.text) < len(page) / 4


def test_html_charset_from_meta_and_from_header() -> None:
    latin = convert(LATIN1_PAGE, content_type="text/html")  # no charset in the header: the meta tag says it
    assert latin.title == "Café crème"
    assert "coûte 3,50 € à la brasserie" in latin.text  # the euro sign is cp1252, not latin-1
    sjis = convert(SJIS_PAGE, content_type="text/html", charset="shift_jis")
    assert SJIS_TEXT in sjis.text and sjis.title == "天気予報"


def test_text_decoding_fallbacks() -> None:
    text = "Grüße aus Köln, naïve façade, déjà vu. " * 20
    assert decode_text(text.encode("utf-8")) == text
    assert decode_text(codecs.BOM_UTF16_LE + text.encode("utf-16-le")) == text
    assert decode_text(text.encode("cp1252")) == text  # undeclared, not UTF-8: detected
    russian = "Привет, как дела? Это тестовая страница на русском языке. " * 10
    assert decode_text(russian.encode("cp1251")) == russian
    polish = "Zażółć gęślą jaźń. Příliš žluťoučký kůň. " * 10
    assert decode_text(polish.encode("cp1250")) == polish
    assert decode_text(text.encode("utf-8"), "no-such-charset") == text


def test_pdf_text_and_title() -> None:
    doc = convert(report_pdf(), content_type="application/pdf")
    assert doc.kind == "pdf" and doc.title == "Annual Water Quality Report 2023"
    assert "The 90th percentile lead level was 3.4 ppb (action level 15 ppb)." in doc.text
    assert doc.text.index("Nitrate levels") < doc.text.index("Section 2: Lead and copper")


def test_pdf_detected_by_magic_bytes_when_mislabelled() -> None:
    assert convert(report_pdf(), content_type="application/octet-stream").kind == "pdf"
    assert convert(report_pdf(), content_type="text/html").kind == "pdf"


def test_pdf_problems_are_reported() -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(report_pdf())).pages:
        writer.add_page(page)
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    locked = io.BytesIO()
    writer.write(locked)
    with pytest.raises(UnsupportedDocument, match="password"):
        convert(locked.getvalue())
    with pytest.raises(UnsupportedDocument, match="no text layer"):
        convert(make_pdf([[]]))
    with pytest.raises(UnsupportedDocument, match="cannot be read"):
        convert(b"%PDF-1.4\n" + b"garbage" * 50)


def test_word_document() -> None:
    import docx

    document = docx.Document()
    document.core_properties.title = "Field trip plan"
    document.add_heading("Field trip plan", level=1)
    document.add_paragraph("The bus leaves at 07:45 from the north gate.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Item", "Cost"
    table.cell(1, 0).text, table.cell(1, 1).text = "Tickets", "12 EUR"
    data = io.BytesIO()
    document.save(data)
    doc = convert(data.getvalue(), name="plan.docx")
    assert doc.kind == "docx" and doc.title == "Field trip plan"
    assert "# Field trip plan" in doc.text
    assert "The bus leaves at 07:45 from the north gate." in doc.text
    assert "Tickets | 12 EUR" in doc.text


def test_excel_workbook() -> None:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Budget"
    sheet.append(["Line", "Amount"])
    sheet.append(["Rent", 1200])
    sheet.append(["Heating", 85.5])
    data = io.BytesIO()
    workbook.save(data)
    doc = convert(data.getvalue(), content_type="application/octet-stream", name="/files/budget.xlsx")
    assert doc.kind == "xlsx"
    assert "## Sheet: Budget" in doc.text and "Heating\t85.5" in doc.text


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


def test_powerpoint_slides() -> None:
    ns = 'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"'
    slide = (
        f'<p:sld xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main" {ns}><p:cSld><p:spTree>'
        "<p:sp><p:txBody><a:p><a:r><a:t>Quarterly </a:t></a:r><a:r><a:t>results</a:t></a:r></a:p>"
        "<a:p><a:r><a:t>Revenue grew 14 percent</a:t></a:r></a:p></p:txBody></p:sp></p:spTree></p:cSld></p:sld>"
    )
    data = _zip(
        {
            "[Content_Types].xml": b"<Types/>",
            "ppt/presentation.xml": b"<presentation/>",
            "ppt/slides/slide2.xml": slide.replace("Quarterly ", "Second ").encode(),
            "ppt/slides/slide1.xml": slide.encode(),
        }
    )
    doc = convert(data, name="deck.pptx")
    assert doc.kind == "pptx"
    assert doc.text.index("## Slide 1\nQuarterly results\nRevenue grew 14 percent") < doc.text.index("## Slide 2")


def test_opendocument_text() -> None:
    content = (
        '<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
        'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"><office:body><office:text>'
        "<text:h>Minutes</text:h><text:p>The board met on <text:span>Tuesday</text:span> and"
        "<text:s/>approved the budget.</text:p></office:text></office:body></office:document-content>"
    )
    data = _zip({"mimetype": b"application/vnd.oasis.opendocument.text", "content.xml": content.encode()})
    doc = convert(data)
    assert doc.kind == "odf"
    assert "Minutes\nThe board met on Tuesday and approved the budget." in doc.text


def test_zip_bombs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents, "MAX_UNPACKED_BYTES", 1_000_000)
    bomb = _zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"\x00" * 2_000_000})
    assert len(bomb) < 20_000
    with pytest.raises(UnsupportedDocument, match="unpacks to 2,000,"):
        convert(bomb, name="bomb.docx")


def test_xml_entities_are_not_expanded() -> None:
    billion_laughs = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>'
        '<p:sld xmlns:p="p" xmlns:a="a"><a:p><a:t>&lol2;</a:t></a:p></p:sld>'
    )
    data = _zip({"ppt/presentation.xml": b"<x/>", "ppt/slides/slide1.xml": billion_laughs.encode()})
    assert "lollol" not in convert(data, name="x.pptx").text


def test_markdown_and_plain_text() -> None:
    doc = convert(b"Intro line\n\n# Packing list\n\n- tent\n- stove\n", name="notes.md")
    assert doc.kind == "markdown" and doc.title == "Packing list"
    plain = convert(b"just words", content_type="text/plain", name="/a/b/readme")
    assert plain.kind == "text" and plain.title == "readme"
    # Declared text/plain stays text even when it looks like HTML.
    assert convert(b"<html><body>x</body></html>", content_type="text/plain").text == "<html><body>x</body></html>"


@pytest.mark.parametrize(
    ("ctype", "data"),
    [
        ("image/png", b"\x89PNG\r\n\x1a\n"),
        ("video/mp4", b"\x00\x00\x00\x18ftypmp42"),
        ("application/zip", b"PK\x03\x04"),
        ("application/octet-stream", b"\x7fELF\x02\x01\x01" + b"\x00\x01\x02\x03" * 500),
    ],
)
def test_binary_content_is_refused(ctype: str, data: bytes) -> None:
    with pytest.raises(UnsupportedDocument):
        kind_for(ctype, "download", data)


def test_pack_paragraphs_keeps_every_word_within_size() -> None:
    text = "\n\n".join(f"Paragraph {n} " + "word " * (n * 7) for n in range(1, 30)) + "\n\n" + "x" * 5000
    parts = pack_paragraphs(text, 400)
    assert all(len(p) <= 400 for p in parts)
    assert "".join(parts).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
