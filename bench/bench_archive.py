"""Benchmark the web archive; prints ratios measured side by side in one run.

1. Overhead per fetched page: the guarded fetcher alone against the same fetch
   (from a local server with Nagle's algorithm off, so a fetch takes ~1-2 ms:
   the least flattering denominator a real page can have)
   through a run's web (fetch, then the request and response records gzipped
   and appended to the run's WARC file), interleaved page by page, on the test
   fixture pages served from 127.0.0.1. The ratio is (archived - plain) / plain
   of the medians; "write" is the archive's own time (the records built and
   appended) over the plain fetch, measured on the same calls.
2. Overhead per run: a run's reading of all the fixture pages, with and without
   the archive, interleaved run by run.
3. Archive size per run: the research run of (2), and the offline sample eval
   (`appliance eval --sample`, whose tasks search the local corpus only).
4. A replayed eval pass against a live one: two tasks that read local pages
   (the server answering after --latency seconds, as a web server would),
   recorded into a web archive by the first pass and replayed by the second;
   wall time of each pass, replay backend, in process.

Run: python bench/bench_archive.py [--rounds 30] [--latency 0.2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.config import load_settings  # noqa: E402
from appliance.eval.dataset import EvalTask  # noqa: E402
from appliance.eval.runner import EvalRunner  # noqa: E402
from appliance.tools.archive import ArchiveWriter, RunWeb, archive_dir, warc_files  # noqa: E402
from appliance.tools.fetcher import AddressPolicy, Exchange, Fetcher  # noqa: E402
from tests.conftest import cli_env, tool_call, write_replay  # noqa: E402
from tests.pagefixtures import PageServer, Response, standard_routes  # noqa: E402

PAGES = ["/article", "/long", "/report.pdf", "/latin1", "/sjis", "/plain.txt", "/to-article"]


def fast_server(latency: float = 0.0) -> PageServer:
    """The fixture server with Nagle's algorithm off (otherwise its header and body writes meet the
    client's delayed ACK and every response takes about 40 ms); `latency` seconds before each answer
    stands in for a web server's round trip and work."""
    routes = standard_routes()
    if latency:
        for path in PAGES:
            route = routes[path]
            assert isinstance(route, Response)

            def slow(response: Response = route) -> Response:
                time.sleep(latency)
                return response

            routes[path] = slow
    server = PageServer(routes)
    server.httpd.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    return server


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def per_page(server: PageServer, rounds: int, workdir: Path) -> dict[str, Any]:
    fetcher = Fetcher(allow_hosts=[f"127.0.0.1:{server.port}"])
    writer = ArchiveWriter(workdir / "per-page", "bench", max_bytes=10**12)
    web = RunWeb(writer=writer, policy=AddressPolicy())
    plain: list[float] = []
    archived: list[float] = []
    writes: list[float] = []
    fetches: list[float] = []  # the fetch part of the archived calls

    def plain_fetch(url: str) -> None:
        started = time.perf_counter()
        fetcher.fetch(url)
        plain.append(time.perf_counter() - started)

    def archived_fetch(url: str) -> None:
        exchanges: list[Exchange] = []
        started = time.perf_counter()
        fetcher.fetch(url, exchanges=exchanges)
        fetched = time.perf_counter()
        web.call().record(exchanges, "fetch")
        done = time.perf_counter()
        archived.append(done - started)
        writes.append(done - fetched)
        fetches.append(fetched - started)

    for n in range(rounds):
        for path in PAGES:
            # Which goes first alternates, so neither pays for the other's warm-up.
            first, second = (plain_fetch, archived_fetch) if n % 2 else (archived_fetch, plain_fetch)
            first(server.url(path))
            second(server.url(path))
    fetcher.close()
    p, a, w, f = median_ms(plain), median_ms(archived), median_ms(writes), median_ms(fetches)
    return {"plain_ms": p, "archived_ms": a, "write_ms": w, "ratio": (a - p) / p, "fetch_ms": f, "write_ratio": w / f}


def per_run(server: PageServer, rounds: int, workdir: Path) -> dict[str, Any]:
    fetcher = Fetcher(allow_hosts=[f"127.0.0.1:{server.port}"])
    plain: list[float] = []
    archived: list[float] = []
    sizes: list[int] = []

    def plain_run(n: int) -> None:
        started = time.perf_counter()
        for path in PAGES:
            fetcher.fetch(server.url(path))
        plain.append(time.perf_counter() - started)

    def archived_run(n: int) -> None:
        run_dir = workdir / f"run-{n}"
        web = RunWeb(writer=ArchiveWriter(archive_dir(run_dir), f"run-{n}", max_bytes=10**12), policy=AddressPolicy())
        started = time.perf_counter()
        for path in PAGES:
            web.call().fetch_live(lambda: fetcher, server.url(path), None, None)
        archived.append(time.perf_counter() - started)
        sizes.append(sum(p.stat().st_size for p in warc_files(archive_dir(run_dir))))

    for n in range(rounds):
        first, second = (plain_run, archived_run) if n % 2 else (archived_run, plain_run)
        first(n)
        second(n)
    fetcher.close()
    p, a = median_ms(plain), median_ms(archived)
    return {
        "pages": len(PAGES),
        "plain_ms": p,
        "archived_ms": a,
        "ratio": (a - p) / p,
        "bytes": statistics.median(sizes),
    }


def sample_eval_size(workdir: Path) -> dict[str, Any]:
    home = workdir / "sample-home"
    env = cli_env({"APPLIANCE_HOME": str(home)})
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "eval", "--sample", "--backend", "replay"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    runs = [d for d in (home / "runs").iterdir() if d.is_dir()]
    sizes = [sum(p.stat().st_size for p in warc_files(archive_dir(d))) for d in runs]
    return {"runs": len(runs), "bytes_max": max(sizes), "bytes_total": sum(sizes)}


def eval_passes(latency: float, rounds: int, workdir: Path) -> dict[str, Any]:
    routes = standard_routes()
    for path in ("/article", "/report.pdf", "/long"):
        original = routes[path]
        assert isinstance(original, Response)

        def slow(response: Response = original) -> Response:
            time.sleep(latency)
            return response

        routes[path] = slow
    live_times: list[float] = []
    replay_times: list[float] = []
    server = PageServer(routes)
    try:
        for n in range(rounds):
            base = workdir / f"eval-{n}"
            scripts = base / "replays"
            scripts.mkdir(parents=True)
            tasks = []
            for index, path in enumerate(("/article", "/report.pdf", "/long")):
                task_id = f"t{index}"
                write_replay(
                    scripts / f"{task_id}.jsonl",
                    [
                        tool_call(
                            "jina_scrape_llm_summary",
                            "scrape_and_extract_info",
                            {"url": server.url(path), "info_to_extract": "what it says"},
                        ),
                        "It says what it says.",
                        "Done.",
                        "\\boxed{x}",
                    ],
                )
                tasks.append(EvalTask(task_id, f"Question {index}", "x", "1"))
            settings = load_settings(
                overrides={
                    "model.backend": "replay",
                    "model.replay": str(scripts / "t0.jsonl"),
                    "tools.enabled": ["jina_scrape_llm_summary"],
                    "scrape.allow_hosts": [f"127.0.0.1:{server.port}"],
                    "scrape.cache_ttl_hours": 0.0,
                },
                environ={"APPLIANCE_HOME": str(base / "home")},
            )
            for name, times in (("live", live_times), ("replay", replay_times)):
                runner = EvalRunner(
                    settings,
                    name=name,
                    out_dir=base / name,
                    db_path=base / "history.db",
                    replay=scripts,
                    web_archive=base / "web",
                )
                started = time.perf_counter()
                assert runner.run(tasks)
                times.append(time.perf_counter() - started)
    finally:
        server.close()
    live, replay = statistics.median(live_times), statistics.median(replay_times)
    return {"tasks": 3, "latency_s": latency, "live_s": live, "replay_s": replay, "saved": 1 - replay / live}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.2, help="page latency for the eval passes (s)")
    parser.add_argument("--web-latency", type=float, default=0.05, help="page latency for the web-like overhead (s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = fast_server()
        try:
            page = per_page(server, args.rounds, workdir)
            run = per_run(server, max(5, args.rounds // 3), workdir)
        finally:
            server.close()
        server = fast_server(args.web_latency)
        try:
            web_page = per_page(server, max(3, args.rounds // 4), workdir / "web")
            web_run = per_run(server, 5, workdir / "web")
        finally:
            server.close()
        sample = sample_eval_size(workdir)
        passes = eval_passes(args.latency, 3, workdir)
        no_latency = eval_passes(0.0, 3, workdir / "fast")
    results = {
        "per_page": page,
        "per_run": run,
        "per_page_web": web_page,
        "per_run_web": web_run,
        "sample_eval": sample,
        "eval": passes,
        "eval_no_latency": no_latency,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for label, p, r in (
        ("loopback, no latency", page, run),
        (f"pages answering after {args.web_latency * 1000:g} ms, like a web server", web_page, web_run),
    ):
        print(f"Archive overhead ({label}; medians):")
        print(
            f"  per page: fetch {p['plain_ms']:.2f} ms, fetch + archive {p['archived_ms']:.2f} ms: "
            f"{p['ratio'] * 100:+.1f}%; in the same calls the write took {p['write_ms']:.2f} ms after a "
            f"{p['fetch_ms']:.2f} ms fetch: {p['write_ratio'] * 100:.1f}% of it"
        )
        print(
            f"  per run of {r['pages']} pages: {r['plain_ms']:.1f} ms without, {r['archived_ms']:.1f} ms with: "
            f"{r['ratio'] * 100:+.1f}%; archive {r['bytes'] / 1024:.1f} KiB"
        )
    print(
        f"Sample eval ({sample['runs']} runs): archive at most {sample['bytes_max']} bytes a run "
        f"({sample['bytes_total']} in all; its tasks search the local corpus, which is not archived)"
    )
    for label, figures in (("latency", passes), ("no added latency", no_latency)):
        print(
            f"Eval pass, {figures['tasks']} tasks, pages answering after {figures['latency_s']:g} s ({label}): "
            f"live {figures['live_s']:.2f} s, replayed {figures['replay_s']:.2f} s: "
            f"{figures['saved'] * 100:.0f}% saved"
        )


if __name__ == "__main__":
    main()
