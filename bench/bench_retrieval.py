"""Benchmark the retrieval tools; prints ratios measured side by side in one run.

1. Extraction: on the test fixture pages (served by a local HTTP server), how
   many tokens scrape_and_extract_info keeps out of the agent's context:
   page tokens / tokens of the tool result the agent reads. "raw" is the page
   as served (HTML, PDF bytes decoded), "text" the converted main text a tool
   without extraction would return. The extraction model is a scripted replay
   of faithful answers by default (no weights here); pass --model PATH.gguf to
   use a real model through llama.cpp (its tokenizer then counts too).
2. Search latency: google_search through the tool (argument checks, SearXNG
   request, mapping, fusion, JSON) against a direct SearXNG JSON request, both
   over a persistent connection, interleaved, distinct queries, the tool's page
   cache cleared before each call. Starts a SearXNG from ../shared unless
   --searxng-url is given.

Run: python bench/bench_retrieval.py [--rounds 40] [--model PATH.gguf] [--searxng-url URL] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from appliance.config import load_settings  # noqa: E402
from appliance.llm.base import Backend, approximate_tokens  # noqa: E402
from appliance.llm.replay import ReplayBackend, ReplayTurn  # noqa: E402
from appliance.tools.base import CallContext  # noqa: E402
from appliance.tools.scrape.server import ScrapeServer  # noqa: E402
from appliance.tools.search.results import SearchRequest  # noqa: E402
from appliance.tools.search.searxng import request_params  # noqa: E402
from appliance.tools.search.server import SearchServer  # noqa: E402
from tests.pagefixtures import PageServer, standard_routes  # noqa: E402

# (path, question, a faithful answer of the length a good extractor gives)
CASES = [
    (
        "/article",
        "When did the Kettle Valley Railway open, how long was it, and when did it close?",
        "The Kettle Valley Railway opened in 1915 and ran for 525 kilometres between Midway and Hope. "
        "Its last section closed in 1989.",
    ),
    (
        "/long",
        "What was the record snowfall at Coquihalla summit, and in which winter?",
        "The record snowfall at Coquihalla summit was 14.6 metres, in the winter of 1935.",
    ),
    (
        "/report.pdf",
        "What were the lead and copper levels in the 2023 water quality report?",
        "Lead: the 90th percentile level was 3.4 ppb (action level 15 ppb). Copper: 0.21 ppm.",
    ),
    (
        "/latin1",
        "Combien coûte le café crème ?",
        "Le café crème coûte 3,50 € à la brasserie du coin.",
    ),
]
QUERIES = ["tea", "sqlite", "bicycle", "zephyr", "bread", "orbit", "garden", "hike", "python", "star"]


def extraction_bench(model: str | None, workdir: Path) -> list[dict[str, Any]]:
    pages = PageServer(standard_routes())
    overrides: dict[str, Any] = {"scrape.allow_hosts": [f"127.0.0.1:{pages.port}"], "scrape.cache_ttl_hours": 0.0}
    backend: Backend
    if model:
        from appliance.llm.factory import build_backend

        overrides.update({"model.backend": "llamacpp", "model.path": model})
        settings = load_settings(overrides=overrides, environ={"APPLIANCE_HOME": str(workdir)})
        backend = build_backend(settings)
    else:
        settings = load_settings(overrides=overrides, environ={"APPLIANCE_HOME": str(workdir)})
        backend = ReplayBackend([ReplayTurn(answer) for _, _, answer in CASES], source="faithful-answers.jsonl")
    count = backend.count_tokens if model else approximate_tokens
    server = ScrapeServer(settings, lambda: backend)
    rows = []
    ctx = CallContext("bench", workdir, workdir, workdir)
    try:
        for path, question, _ in CASES:
            raw = httpx.get(pages.url(path)).content
            raw_text = raw.decode("utf-8", "replace") if not raw.startswith(b"%PDF") else raw.decode("latin-1")
            started = time.perf_counter()
            output = server.call("scrape_and_extract_info", {"url": pages.url(path), "info_to_extract": question}, ctx)
            elapsed = time.perf_counter() - started
            result = json.loads(output.text)
            text = server.reader.read(pages.url(path)).text
            rows.append(
                {
                    "page": path,
                    "raw_tokens": count(raw_text),
                    "text_tokens": count(text),
                    "result_tokens": count(output.text),
                    "extract_tokens": count(result["extracted_info"]),
                    "parts": output.meta.get("parts"),
                    "seconds": round(elapsed, 3),
                    "success": result["success"],
                }
            )
    finally:
        server.close()
        pages.close()
        backend.close()
    return rows


def start_searxng(workdir: Path) -> tuple[str, Any]:
    from tests.searxng_fixture import make_docs_db, start_searxng

    os.environ.setdefault("APPLIANCE_SHARED_DIR", str(ROOT.parent / "shared"))
    instance = start_searxng(make_docs_db(workdir / "docs.db"), workdir)
    return instance.url, instance


def latency_bench(url: str, rounds: int, workdir: Path) -> dict[str, Any]:
    settings = load_settings(
        overrides={"search.searxng_url": url, "search.sources": ["searxng"]},
        environ={"APPLIANCE_HOME": str(workdir / "home")},
    )
    server = SearchServer(settings)
    client = server.engine.searxng()
    assert client is not None
    direct_client = httpx.Client(timeout=20, trust_env=False)
    ctx = CallContext("bench", workdir, workdir, workdir)
    direct: list[float] = []
    tool: list[float] = []
    cached: list[float] = []
    # Warm both connections and SearXNG itself.
    for q in QUERIES[:3]:
        direct_client.get(f"{url}/search", params={"q": q, "format": "json"})
        server.call("google_search", {"q": q}, ctx)
    for i in range(rounds):
        q = QUERIES[i % len(QUERIES)]
        order = ("direct", "tool") if i % 2 == 0 else ("tool", "direct")
        for kind in order:
            if kind == "direct":
                started = time.perf_counter()
                # The same query string the tool sends (language, safesearch, pageno), so only the tool's work differs.
                response = direct_client.get(f"{url}/search", params=request_params(SearchRequest(q), 1))
                response.json()
                direct.append(time.perf_counter() - started)
            else:
                client.clear_cache()
                started = time.perf_counter()
                server.call("google_search", {"q": q}, ctx)
                tool.append(time.perf_counter() - started)
        started = time.perf_counter()
        server.call("google_search", {"q": q}, ctx)  # same query again: SearXNG page cache
        cached.append(time.perf_counter() - started)
    server.close()
    direct_client.close()
    med_direct, med_tool, med_cached = (statistics.median(x) for x in (direct, tool, cached))
    return {
        "rounds": rounds,
        "direct_ms_median": round(med_direct * 1000, 2),
        "tool_ms_median": round(med_tool * 1000, 2),
        "tool_cached_ms_median": round(med_cached * 1000, 3),
        "tool_over_direct": round(med_tool / med_direct, 3),
        "direct_ms_p90": round(statistics.quantiles(direct, n=10)[-1] * 1000, 2),
        "tool_ms_p90": round(statistics.quantiles(tool, n=10)[-1] * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--model", help="a GGUF extraction model (default: scripted faithful answers)")
    parser.add_argument("--searxng-url", help="use this SearXNG instead of starting one from ../shared")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        workdir = Path(tmp)
        rows = extraction_bench(args.model, workdir)
        instance = None
        url = args.searxng_url
        if not url:
            url, instance = start_searxng(workdir)
        try:
            latency = latency_bench(url, args.rounds, workdir)
        finally:
            if instance is not None:
                instance.stop()

    if args.json:
        print(json.dumps({"extraction": rows, "search_latency": latency}, indent=2))
        return 0
    model = args.model or "replay (scripted faithful answers)"
    print(f"Extraction: tokens kept out of the agent's context (extractor: {model})")
    print(f"{'page':<14}{'raw':>8}{'text':>8}{'result':>8}{'raw/result':>12}{'text/result':>13}{'parts':>7}")
    for row in rows:
        print(
            f"{row['page']:<14}{row['raw_tokens']:>8}{row['text_tokens']:>8}{row['result_tokens']:>8}"
            f"{row['raw_tokens'] / row['result_tokens']:>12.1f}{row['text_tokens'] / row['result_tokens']:>13.1f}"
            f"{row['parts']:>7}"
        )
    total = {k: sum(r[k] for r in rows) for k in ("raw_tokens", "text_tokens", "result_tokens")}
    print(
        f"{'all pages':<14}{total['raw_tokens']:>8}{total['text_tokens']:>8}{total['result_tokens']:>8}"
        f"{total['raw_tokens'] / total['result_tokens']:>12.1f}{total['text_tokens'] / total['result_tokens']:>13.1f}"
    )
    print()
    print(f"Search latency over {latency['rounds']} interleaved rounds (SearXNG at {url})")
    for label, key in (("direct SearXNG JSON request", "direct"), ("google_search tool", "tool")):
        print(f"  {label:<29}median {latency[key + '_ms_median']:.2f} ms  p90 {latency[key + '_ms_p90']:.2f} ms")
    print(f"  tool / direct                {latency['tool_over_direct']:.2f}x")
    print(f"  tool, repeated query (cache) median {latency['tool_cached_ms_median']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
