"""Real-looking pages and a local HTTP server that serves them (tests and bench/bench_retrieval.py).

The server is a ThreadingHTTPServer on 127.0.0.1 with a route table; it counts
hits per path so tests can tell whether a fetch reached it.
"""

from __future__ import annotations

import collections
import gzip
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# ------------------------------------------------------------------ page bodies

ARTICLE_FACTS = {
    "opened": "1915",
    "length": "525 kilometres",
    "engineer": "Andrew McCulloch",
    "closed": "1989",
}

_NAV = "".join(f'<li><a href="/section/{n}">Section {n}</a></li>' for n in range(1, 41))
_FOOTER = "".join(f'<a href="/footer/{n}">Footer link {n}</a> | ' for n in range(1, 61))
_SIDEBAR = "".join(
    f'<div class="ad"><a href="/ad/{n}">Sponsored: buy {n} discounted train tickets today!</a></div>'
    for n in range(1, 16)
)


def boilerplate_article() -> str:
    """A news-style page: the article is a small part of the HTML (menus, ads, scripts, footer)."""
    paragraphs = [
        "The Kettle Valley Railway was a subsidiary railway of the Canadian Pacific Railway in southern "
        f"British Columbia. Construction was led by chief engineer {ARTICLE_FACTS['engineer']}, who had "
        "to take the line across three mountain ranges.",
        f"The line opened in {ARTICLE_FACTS['opened']} and ran for {ARTICLE_FACTS['length']} between Midway "
        "and Hope. Its Othello Tunnels through the Coquihalla Canyon are now a provincial park.",
        "Snow and rock slides made the Coquihalla section expensive to run. After a washout it was "
        "abandoned, and the remaining traffic moved to other routes.",
        f"The last section of the railway closed in {ARTICLE_FACTS['closed']}. Much of the grade is now a "
        "rail trail used by cyclists and hikers, part of the Trans Canada Trail.",
        "Historians note that the railway's trestles, such as the Myra Canyon trestles near Kelowna, are "
        "among the most photographed structures of the region; several were rebuilt after a 2003 forest fire.",
    ]
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Kettle Valley Railway - Rail History Weekly</title>
<style>body {{ font-family: sans-serif; }} .ad {{ border: 1px solid #ccc; }} nav li {{ display: inline; }}</style>
<script>window.dataLayer = window.dataLayer || []; function gtag() {{ dataLayer.push(arguments); }}
gtag('js', new Date()); gtag('config', 'UA-000000-1');</script>
<script>var cookieBanner = {{ shown: true, text: "We use cookies to improve your experience." }};</script>
</head><body>
<div id="cookie-banner">We use cookies to improve your experience. <button>Accept all</button></div>
<header><div class="logo">Rail History Weekly</div><nav><ul>{_NAV}</ul></nav>
<form action="/search"><input name="q" placeholder="Search the archive"></form></header>
<aside class="sidebar">{_SIDEBAR}<h3>Most read</h3><ul>
<li><a href="/x1">Ten stations you must visit</a></li><li><a href="/x2">Steam engines ranked</a></li></ul></aside>
<main><article><h1>Kettle Valley Railway</h1><p class="byline">By Staff Writer, 3 March 2024</p>
{body}</article>
<section class="comments"><h3>Comments (2)</h3><div class="comment">Great article!!! Visit my site.</div></section>
</main>
<footer>{_FOOTER}<p>Copyright 2024 Rail History Weekly. All rights reserved.</p></footer>
<script>document.querySelectorAll('a').forEach(function (a) {{ a.rel = 'noopener'; }});</script>
</body></html>"""


def long_article(paragraphs: int = 60) -> str:
    """A long page whose one key fact sits near the end (for splitting and merging extracts)."""
    filler = [
        f"<p>Section {n}. The survey crews measured grades, curves and snow depths along the route, "
        f"filling notebook {n} with tables of elevations and comments about the weather that week.</p>"
        for n in range(1, paragraphs + 1)
    ]
    filler.insert(
        paragraphs - 3, "<p>The record snowfall at Coquihalla summit was 14.6 metres in the winter of 1935.</p>"
    )
    return (
        "<!DOCTYPE html><html><head><title>Survey notebooks</title></head><body><article><h1>Survey notebooks</h1>"
        + "".join(filler)
        + "</article></body></html>"
    )


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str]], title: str = "Test document") -> bytes:
    """A small valid PDF with one text line per entry, Helvetica, one content stream per page."""
    objects: list[bytes] = []
    n_pages = len(pages)
    font_id = 3
    page_ids = [4 + 2 * i for i in range(n_pages)]
    info_id = 4 + 2 * n_pages
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for i, lines in enumerate(pages):
        stream = "BT /F1 11 Tf 14 TL 56 780 Td " + " ".join(f"({_pdf_escape(line)}) '" for line in lines) + " ET"
        data = stream.encode("cp1252")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 {font_id} 0 R >> >> "
            f"/Contents {page_ids[i] + 1} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(data)} >>\nstream\n".encode() + data + b"\nendstream")
    objects.append(f"<< /Title ({_pdf_escape(title)}) /Producer (appliance tests) >>".encode())
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {info_id} 0 R >>\n".encode())
    out.write(f"startxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def report_pdf() -> bytes:
    return make_pdf(
        [
            [
                "Annual Water Quality Report 2023",
                "Prepared by the Lakeside Utility District.",
                "Summary: all samples met the drinking water standards.",
                "Nitrate levels averaged 2.1 mg/L, below the 10 mg/L limit.",
            ],
            [
                "Section 2: Lead and copper",
                "The 90th percentile lead level was 3.4 ppb (action level 15 ppb).",
                "Copper was measured at 0.21 ppm.",
            ],
        ],
        title="Annual Water Quality Report 2023",
    )


LATIN1_PAGE = (
    '<html><head><meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">'
    "<title>Caf\xe9 cr\xe8me</title></head><body><article><h1>Caf\xe9 cr\xe8me</h1>"
    "<p>Le caf\xe9 cr\xe8me co\xfbte 3,50 \u20ac \xe0 la brasserie du coin, na\xefvement servi avec deux "
    "sucres. La cr\xe8me fra\xeeche vient de Normandie et le caf\xe9 est torr\xe9fi\xe9 sur place chaque matin "
    "par le patron, qui r\xe9p\xe8te que la qualit\xe9 tient \xe0 la fra\xeecheur des grains.</p></article>"
    "</body></html>"
).encode("cp1252")

SJIS_TEXT = "東京の天気は晴れ、最高気温は二十五度です。明日は曇りのち雨の予報で、傘を持って出かけるのが良いでしょう。"
SJIS_PAGE = (
    f"<html><head><title>天気予報</title></head><body><article><h1>天気予報</h1><p>{SJIS_TEXT}</p>"
    f"<p>{SJIS_TEXT}</p></article></body></html>"
).encode("shift_jis")


# ------------------------------------------------------------------ the server


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Send the body in pieces with a pause between them (a slow server).
    drip_seconds: float = 0.0
    # Omit Content-Length (the fetcher must count the bytes itself).
    chunked: bool = False


Route = Response | Callable[[], Response]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up mid-response (size cap, timeouts) are what several tests do on purpose.
        pass


class PageServer:
    """A threaded HTTP server on 127.0.0.1 serving `routes`; `hits` counts requests per path.

    `port` reuses a known port (a tripwire where an earlier server stood); 0 picks a free one.
    """

    def __init__(self, routes: dict[str, Route], port: int = 0) -> None:
        self.routes = routes
        self.hits: collections.Counter[str] = collections.Counter()
        self.requests: list[str] = []  # every request target, query string included, in order
        self.last_headers: dict[str, dict[str, str]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                server.hits[path] += 1
                server.requests.append(self.path)
                server.last_headers[path] = {k.lower(): v for k, v in self.headers.items()}
                route = server.routes.get(path)
                response = route() if callable(route) else route
                if response is None:
                    response = Response(
                        404, b"<html><body><h1>Not found</h1></body></html>", {"Content-Type": "text/html"}
                    )
                try:
                    self._send(response)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, response: Response) -> None:
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if response.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                pieces = [response.body] if not response.drip_seconds else _pieces(response.body, 10)
                for piece in pieces:
                    if response.drip_seconds:
                        time.sleep(response.drip_seconds)
                    if response.chunked:
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    else:
                        self.wfile.write(piece)
                    self.wfile.flush()
                if response.chunked:
                    self.wfile.write(b"0\r\n\r\n")

        self.httpd = _QuietServer(("127.0.0.1", port), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _pieces(body: bytes, count: int) -> list[bytes]:
    size = max(1, len(body) // count)
    return [body[i : i + size] for i in range(0, len(body), size)] or [b""]


def html(body: str | bytes, status: int = 200, charset: str | None = "utf-8") -> Response:
    ctype = "text/html" + (f"; charset={charset}" if charset else "")
    data = body.encode("utf-8") if isinstance(body, str) else body
    return Response(status, data, {"Content-Type": ctype})


def redirect(location: str, status: int = 302) -> Response:
    return Response(status, b"", {"Location": location})


def standard_routes(other_port: int | None = None) -> dict[str, Route]:
    """The pages the scrape and fetcher tests use; `other_port` is a second local server (must not be reached)."""
    routes: dict[str, Route] = {
        "/article": html(boilerplate_article()),
        "/long": html(long_article()),
        "/report.pdf": Response(200, report_pdf(), {"Content-Type": "application/pdf"}),
        "/report-octet": Response(200, report_pdf(), {"Content-Type": "application/octet-stream"}),
        "/latin1": html(LATIN1_PAGE, charset=None),
        "/sjis": html(SJIS_PAGE, charset="shift_jis"),
        "/image.png": Response(200, b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000, {"Content-Type": "image/png"}),
        "/archive.zip": Response(200, b"PK\x03\x04" + b"\x00" * 100, {"Content-Type": "application/zip"}),
        "/js-only": html("<html><head><script>document.write('hi')</script></head><body></body></html>"),
        "/missing": Response(404, b"<html><body>Not here</body></html>", {"Content-Type": "text/html"}),
        "/plain.txt": Response(200, b"Plain text notes.\nLine two of the notes.\n", {"Content-Type": "text/plain"}),
        "/loop-a": redirect("/loop-b"),
        "/loop-b": redirect("/loop-a"),
        "/to-article": redirect("/article", 301),
        "/to-private": redirect("http://10.255.255.1/admin"),
        "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-ipv6-loopback": redirect("http://[::1]:9/"),
        "/to-file": redirect("file:///etc/passwd"),
        "/huge": Response(200, b"<html><body>" + b"x" * 300_000 + b"</body></html>", {"Content-Type": "text/html"}),
        "/huge-chunked": Response(
            200, b"<html><body>" + b"y" * 300_000 + b"</body></html>", {"Content-Type": "text/html"}, chunked=True
        ),
        "/slow": Response(200, b"<html><body>" + b"z" * 1000 + b"</body></html>", {"Content-Type": "text/html"}, 0.5),
    }
    bomb = gzip.compress(b"<html><body>" + b"0" * 5_000_000 + b"</body></html>")
    routes["/gzip-bomb"] = Response(200, bomb, {"Content-Type": "text/html", "Content-Encoding": "gzip"})
    for n in range(8):
        routes[f"/chain/{n}"] = redirect(f"/chain/{n + 1}")
    routes["/chain/8"] = html("<html><body><p>End of the chain.</p></body></html>")
    if other_port is not None:
        routes["/to-loopback"] = redirect(f"http://127.0.0.1:{other_port}/secret")
        routes["/to-localhost"] = redirect(f"http://localhost:{other_port}/secret")
        routes["/to-decimal-ip"] = redirect(f"http://2130706433:{other_port}/secret")
        routes["/to-mapped-ipv6"] = redirect(f"http://[::ffff:127.0.0.1]:{other_port}/secret")
        routes["/to-scheme-relative"] = redirect(f"//127.0.0.1:{other_port}/secret")
        routes["/to-userinfo"] = redirect(f"http://example.org@127.0.0.1:{other_port}/secret")
    return routes


@contextmanager
def serving(routes: dict[str, Route]) -> Iterator[PageServer]:
    server = PageServer(routes)
    try:
        yield server
    finally:
        server.close()
