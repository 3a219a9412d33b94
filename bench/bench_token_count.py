"""What the loop's exact prompt count costs: the backend's own count against the per-message estimate it replaced.

Method: a growing conversation like a run's (a ~1,500-token system prompt and task, then per turn a
~300-character reply and a 2,000-character tool result, K=5 kept) on the tiny GGUF. At each size
the loop's two ways of counting a prompt are timed side by side, alternately, in one process:
  - estimate: the sum of each message's cached token count plus a fixed per-message overhead
    (what the loop did before: only new messages are tokenized);
  - exact: `LlamaCppBackend.count_messages`, the chat template rendered and tokenized whole
    (what the model is really fed, so the context checks are to the token).
The loop counts a prompt about twice a turn (before the turn, and whether the next turn fits).
As the scale for that cost, one incremental turn on the same prompt is timed too: the model
evaluates the new tokens (the prefix is in its KV cache) and generates 50 tokens. Both the
tiny model and its tokenizer are fast, so the share is an upper bound for a real model, whose
turn takes far longer while its tokenizer costs about the same.

    python bench/bench_token_count.py [--turns 10 40 80] [--repeats 5]
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
from appliance.llm.base import ChatMessage, TextChunk
from appliance.llm.llamacpp import LlamaCppBackend, clear_model_cache
from tests.tinygguf import write_tiny_gguf

SYSTEM = "You are a research agent. Use the tools one at a time and cite your sources. " * 20
TASK = "Find the number of moons of Mars and give the answer in \\boxed{}. " * 3
REPLY = "<think>\nI will look at the next source and check the figure it gives.\n</think>\n\n" + "step " * 40
RESULT = "A tool result line with numbers 12345 and words. " * 40  # ~2,000 characters


def conversation(turns: int) -> list[ChatMessage]:
    messages = [ChatMessage("user", TASK)]
    for turn in range(turns):
        messages += [ChatMessage("assistant", f"{REPLY} {turn}"), ChatMessage("user", f"{RESULT} {turn}")]
    return [ChatMessage("system", SYSTEM), *build_view(messages, 5, "exact", 5)]


def estimate(backend: LlamaCppBackend, view: list[ChatMessage], cache: dict[str, int]) -> int:
    total = 3
    for message in view:
        if message.content not in cache:
            cache[message.content] = backend.count_tokens(message.content)
        total += cache[message.content] + backend.message_overhead
    return total


def one_turn(backend: LlamaCppBackend, view: list[ChatMessage]) -> None:
    for event in backend.stream_chat(view, max_tokens=50):
        if not isinstance(event, TextChunk):
            return


def measure(backend: LlamaCppBackend, turns: int, repeats: int, cache: dict[str, int]) -> str:
    view = conversation(turns)
    one_turn(backend, view[:-1])  # the previous turn's prompt is in the KV cache, as in a run
    estimate(backend, view[:-1], cache)
    exact_n, estimate_n = backend.count_messages(view), estimate(backend, view, cache)
    # As in the loop: every message is counted already but the turn's new reply and result.
    new = {view[-1].content, view[-2].content}
    known = {text: n for text, n in cache.items() if text not in new}
    estimates, exacts = [], []
    for _ in range(repeats):  # alternately, so both meet the same machine load
        started = time.perf_counter()
        estimate(backend, view, dict(known))
        estimates.append(time.perf_counter() - started)
        started = time.perf_counter()
        backend.count_messages(view)
        exacts.append(time.perf_counter() - started)
    started = time.perf_counter()
    one_turn(backend, view)
    turn_s = time.perf_counter() - started
    est_s, exact_s = statistics.median(estimates), statistics.median(exacts)
    return (
        f"| {turns} | {exact_n:,} / {estimate_n:,} | {est_s * 1000:.2f} ms | {exact_s * 1000:.2f} ms "
        f"| {exact_s / est_s:.0f}x | {turn_s * 1000:.0f} ms | {2 * exact_s / turn_s:.1%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, nargs="+", default=[10, 40, 80])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_gguf(Path(tmp) / "tiny.gguf")
        clear_model_cache()
        backend = LlamaCppBackend(model, context_length=65536, temperature=0.0, seed=1)
        print(
            "| turns | prompt tokens (exact / estimate) | estimate (cached) | exact | exact / estimate "
            "| one incremental turn | 2 exact counts / turn |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        cache: dict[str, int] = {}
        for turns in args.turns:
            print(measure(backend, turns, args.repeats, cache), flush=True)


if __name__ == "__main__":
    main()
