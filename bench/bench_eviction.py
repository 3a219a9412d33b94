"""Prompt tokens a prefix-caching engine evaluates over a fixed 100-turn trajectory, per eviction mode.

The trajectory is scripted (the same assistant turns and tool results for every mode): a
1,500-token task and system prompt, then 100 turns of ~300-token replies and ~2,000-token
tool results, K=5. For each mode the prompt of every turn is built exactly as the loop builds
it (appliance.agent.context.build_view) and sent to llama.cpp running the tiny GGUF; the backend
reports how many prompt tokens it really evaluated (the rest came from the KV cache). Modes:

- exact:  the reference's last-K (the faithful default): the oldest kept result turns into the
          placeholder every turn, so everything after it is evaluated again.
- blocks: results leave the context a block at a time (block K: K..2K-1 kept; block 2K: K..3K-1),
          so the prefix changes once per block of turns.
- shift:  the exact last-K view, with each evicted result spliced out of llama.cpp's KV cache and the
          tokens after it shifted back (appliance.llm.kvshift): each token is evaluated once.
- all:    nothing is evicted (K = -1): each token is evaluated once, but the prompt grows without bound.

Also reports wall time per turn for each mode, measured in the same run.

    python bench/bench_eviction.py [--turns 100] [--keep 5] [--skip-all] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.agent.context import build_view
from appliance.llm.base import ChatMessage, Completion
from appliance.llm.llamacpp import LlamaCppBackend, clear_model_cache
from tests.tinygguf import write_tiny_gguf

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
    "tau",
]


def text_of(tokens: int, seed: int, backend: LlamaCppBackend) -> str:
    """Deterministic filler of about `tokens` tokens, different for every seed."""
    words, i = [], seed
    text = ""
    while backend.count_tokens(text) < tokens:
        words.append(f"{WORDS[i % len(WORDS)]}{i % 97}")
        i = (i * 31 + 7) % 10007
        text = " ".join(words)
    return text


def trajectory(backend: LlamaCppBackend, turns: int) -> tuple[str, list[tuple[str, str]]]:
    system = "System prompt. " + text_of(1200, 1, backend)
    steps = []
    for t in range(turns):
        reply = f"<think>{text_of(280, 1000 + t, backend)}</think> call {t}"
        steps.append((reply, f"result {t}: {text_of(2000, 5000 + t, backend)}"))
    return system, steps


def run_mode(
    model: Path, system: str, steps: list[tuple[str, str]], keep: int, mode: str, block: int = 0, threads: int = 0
) -> tuple[int, int, float, int]:
    clear_model_cache()
    backend = LlamaCppBackend(
        model,
        context_length=262_144,
        n_batch=2048,
        n_threads=threads,
        temperature=0.0,
        seed=1,
        kv_shift=mode == "shift",
    )
    messages = [ChatMessage("user", "Task: " + "find the answer " * 60)]
    evaluated = prompt_total = largest = 0
    durations = []
    for reply, result in steps:
        view = [ChatMessage("system", system), *build_view(messages, keep, mode, block)]
        started = time.perf_counter()
        completion = None
        for event in backend.stream_chat(view, max_tokens=1):
            if isinstance(event, Completion):
                completion = event
        durations.append(time.perf_counter() - started)
        assert completion is not None and not completion.kv_shift_fallback
        evaluated += completion.evaluated_tokens
        prompt_total += completion.prompt_tokens
        largest = max(largest, completion.prompt_tokens)
        messages += [ChatMessage("assistant", reply), ChatMessage("user", result)]
    backend.close()
    return evaluated, prompt_total, statistics.mean(durations), largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--keep", type=int, default=5)
    parser.add_argument("--skip-all", action="store_true", help="leave out keep-everything (the slowest mode)")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (1 on a busy shared machine)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_gguf(Path(tmp) / "tiny.gguf", context_length=262_144)
        probe = LlamaCppBackend(model, context_length=4096)
        system, steps = trajectory(probe, args.turns)
        k = args.keep
        modes = [
            ("exact last-K", k, "exact", 0),
            (f"blocks {k}..{2 * k - 1}", k, "blocks", k),
            (f"blocks {k}..{3 * k - 1}", k, "blocks", 2 * k),
            ("shift", k, "shift", 0),
        ]
        if not args.skip_all:
            modes.append(("keep everything", -1, "exact", 0))
        results = {
            label: run_mode(model, system, steps, keep, mode, block, args.threads) for label, keep, mode, block in modes
        }
        base = results["exact last-K"][0]
        print(f"{args.turns} turns, K={args.keep}, ~300-token replies, ~2,000-token results, tiny GGUF on llama.cpp")
        print(f"{'mode':<18}{'evaluated':>12}{'vs exact':>10}{'largest prompt':>16}{'s/turn':>10}")
        for label, (evaluated, _total, per_turn, largest) in results.items():
            print(f"{label:<18}{evaluated:>12,}{base / evaluated:>9.2f}x{largest:>16,}{per_turn:>10.3f}")
        for label, _keep, mode, _block in modes:
            if mode in ("blocks", "shift"):
                evaluated, _total, per_turn, _largest = results[label]
                print(f"{label}: {base / evaluated:.2f}x fewer prompt tokens evaluated than exact last-K; "
                      f"wall time per turn exact/{label} = {results['exact last-K'][2] / per_turn:.2f}")  # fmt: skip
        shift = results["shift"]
        for label, _keep, mode, _block in modes:
            if mode == "blocks":
                print(f"shift vs {label}: {results[label][0] / shift[0]:.2f}x fewer tokens evaluated, "
                      f"wall time per turn {label}/shift = {results[label][2] / shift[2]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
