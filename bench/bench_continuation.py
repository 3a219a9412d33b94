"""A reply cut by max_tokens: continued where it stopped (the appliance) versus asked again with 10% more
tokens each time (the reference's client), side by side on the same model.

Method: a random-weight GGUF and a GBNF grammar that never lets a reply end, so every request
stops at its max_tokens. The reply the model wants is the reference's largest limit, N x 1.1^9
tokens (N = max_tokens). The appliance asks once with N and continues the cut reply up to that
limit (agent/calls.py over the llamacpp backend); the reference asks with N, then
int(N x 1.1^k) for k = 1..9, each time generating the reply again from its start. Both see the
same prompt, which the KV cache keeps between requests. Reported: tokens generated and
evaluated, seconds, and the ratios (median of alternating repeats). Absolute times vary with the
machine; the ratios are the figures.

    python bench/bench_continuation.py [--max-tokens 64] [--repeats 3] [--n-embd 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.agent.calls import LENGTH_GROWTH, call_model, reply_limit
from appliance.llm.base import ChatMessage, Completion
from appliance.llm.llamacpp import LlamaCppBackend, clear_model_cache
from tests.tinygguf import write_tiny_gguf

CHAT = [ChatMessage("system", "You are a careful research agent. " * 20), ChatMessage("user", "Think it through.")]


def continued(backend: LlamaCppBackend, max_tokens: int) -> tuple[int, int, float]:
    """(generated, evaluated, seconds) for the appliance's way."""
    started = time.perf_counter()
    steps = call_model(backend, CHAT, turn=1, kind="turn", prompt_tokens=0, max_tokens=max_tokens, purpose="turn")
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            reply = stop.value
            break
    return reply.completion_tokens, reply.evaluated_tokens, time.perf_counter() - started


def asked_again(backend: LlamaCppBackend, max_tokens: int) -> tuple[int, int, float]:
    """(generated, evaluated, seconds) for the reference's way: ten requests, each from the start."""
    generated = evaluated = 0
    started = time.perf_counter()
    for k in range(10):
        limit = int(max_tokens * 1.1**k)
        completion = next(e for e in backend.stream_chat(CHAT, max_tokens=limit) if isinstance(e, Completion))
        generated += completion.completion_tokens
        evaluated += completion.evaluated_tokens
    return generated, evaluated, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gguf = write_tiny_gguf(Path(tmp) / "bench.gguf", n_embd=args.n_embd, n_layer=args.layers, n_ff=args.n_embd * 2,
                               context_length=8192)  # fmt: skip
        grammar = Path(tmp) / "endless.gbnf"
        grammar.write_text("root ::= [a-z ]{1000}", encoding="utf-8")
        clear_model_cache()
        backend = LlamaCppBackend(gguf, context_length=8192, temperature=0.0, seed=1, grammar=str(grammar))
        target = reply_limit(args.max_tokens)
        print(f"max_tokens {args.max_tokens}; the reply reaches {target} tokens (x{LENGTH_GROWTH:.2f})")
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(continued(backend, args.max_tokens))
            theirs.append(asked_again(backend, args.max_tokens))
        for name, runs in (("continued (appliance)", ours), ("asked again (reference)", theirs)):
            gen, ev, sec = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"{name:24} generated {gen:6.0f}  prompt evaluated {ev:5.0f}  {sec:6.3f} s")
        tokens = statistics.median(t[0] / o[0] for o, t in zip(ours, theirs, strict=True))
        seconds = statistics.median(t[2] / o[2] for o, t in zip(ours, theirs, strict=True))
        print(f"reference / appliance: {tokens:.1f}x the tokens generated, {seconds:.1f}x the time")


if __name__ == "__main__":
    main()
