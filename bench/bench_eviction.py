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

Wall time per turn is measured in lockstep: each mode has its own llama.cpp instance in this
process, and turn i runs in every mode (in an order that rotates each turn) before turn i+1, so
the modes share the machine's noise; the ratios are what to read on a loaded machine. Where
shift's time goes is profiled and printed: the render, the splice planning, the replacement's
decode (which applies llama.cpp's pending K-shift), the bookkeeping check, the prompt evaluation
and the fallbacks; then the cost of one K-shift over the full cache, probed on its own.

    python bench/bench_eviction.py [--turns 100] [--keep 5] [--modes exact,blocks,shift] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import appliance.llm.llamacpp as llamacpp_module
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


# mode name -> (label, keep, eviction mode, block); blocks-2k is the `blocks` default (block of 2K).
def mode_table(keep: int) -> dict[str, tuple[str, int, str, int]]:
    return {
        "exact": ("exact last-K", keep, "exact", 0),
        "blocks-k": (f"blocks {keep}..{2 * keep - 1}", keep, "blocks", keep),
        "blocks": (f"blocks {keep}..{3 * keep - 1}", keep, "blocks", 2 * keep),
        "shift": ("shift", keep, "shift", 0),
        "all": ("keep everything", -1, "exact", 0),
    }


@dataclass
class ModeRun:
    label: str
    keep: int
    mode: str
    block: int
    backend: LlamaCppBackend
    messages: list[ChatMessage]
    evaluated: int = 0
    largest: int = 0
    fallbacks: int = 0
    durations: list[float] = field(default_factory=list)
    # phase -> seconds, summed over the run (filled by the profile wrappers)
    phases: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def timed(phases: dict[str, float], phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[phase] += time.perf_counter() - started

    return wrapper


def profile(run: ModeRun) -> None:
    """Wrap the backend's steps to sum where a turn's time goes (the same work, only timed)."""
    backend, llm, phases = run.backend, run.backend.llm, run.phases
    backend.render_tokens = timed(phases, "render + tokenize", backend.render_tokens)  # type: ignore[method-assign]
    llm.eval = timed(phases, "prompt evaluation", llm.eval)  # type: ignore[method-assign]
    if run.mode != "shift":
        return
    splice_cache, apply_one = backend._splice_cache, backend._apply_splice
    decode = llm._ctx.decode
    inner: dict[str, float] = defaultdict(float)

    def decode_replacement(*args: Any) -> Any:
        return timed(inner, "decode", decode)(*args)

    def apply_splice(*args: Any) -> None:
        llm._ctx.decode = decode_replacement
        try:
            timed(inner, "apply", apply_one)(*args)
        finally:
            llm._ctx.decode = decode

    def splice(prompt: list[int]) -> tuple[int, bool]:
        before = dict(inner)
        started = time.perf_counter()
        result = splice_cache(prompt)
        total = time.perf_counter() - started
        plan = inner["plan"] - before.get("plan", 0.0)
        applied = inner["apply"] - before.get("apply", 0.0)
        decoded = inner["decode"] - before.get("decode", 0.0)
        phases["splice: plan"] += plan
        phases["splice: replacement decode + K-shift"] += decoded
        phases["splice: memory seq_rm/seq_add"] += applied - decoded
        phases["splice: bookkeeping check + record"] += total - plan - applied
        return result

    backend._apply_splice = apply_splice  # type: ignore[method-assign]
    backend._splice_cache = splice  # type: ignore[method-assign]
    plan = llamacpp_module.plan_splices
    llamacpp_module.plan_splices = timed(inner, "plan", plan)  # type: ignore[assignment]


def run_turn(run: ModeRun, system: str, reply: str, result: str) -> None:
    view = [ChatMessage("system", system), *build_view(run.messages, run.keep, run.mode, run.block)]
    started = time.perf_counter()
    completion = None
    for event in run.backend.stream_chat(view, max_tokens=1):
        if isinstance(event, Completion):
            completion = event
    run.durations.append(time.perf_counter() - started)
    assert completion is not None
    run.fallbacks += completion.kv_shift_fallback
    run.evaluated += completion.evaluated_tokens
    run.largest = max(run.largest, completion.prompt_tokens)
    run.messages += [ChatMessage("assistant", reply), ChatMessage("user", result)]


def k_shift_probe(backend: LlamaCppBackend, rounds: int = 5) -> tuple[float, float, int]:
    """Median seconds of a 1-token decode after the cache is shifted by one, and without a shift.

    Run after the trajectory on the shift backend (its cache is full of the last turn); the
    cache is cleared afterwards, so the backend must not be used again."""
    llama_cpp, llm = backend._llama_cpp, backend.llm
    memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
    top = int(llama_cpp.llama_memory_seq_pos_max(memory, 0)) + 1
    cells = top
    token = int(llm.input_ids[0])
    shifted, plain = [], []
    for _ in range(rounds):
        for pending_shift, times in ((True, shifted), (False, plain)):
            if pending_shift:
                llama_cpp.llama_memory_seq_add(memory, 0, 0, -1, 1)
                top += 1
            llm._batch.set_batch(batch=[token], n_past=top, logits_all=False)
            started = time.perf_counter()
            llm._ctx.decode(llm._batch)
            times.append(time.perf_counter() - started)
            top += 1
    llm.reset()
    llama_cpp.llama_memory_clear(memory, True)
    return statistics.median(shifted), statistics.median(plain), cells


def lockstep(
    model: Path, system: str, steps: list[tuple[str, str]], modes: list[str], keep: int, threads: int
) -> dict[str, ModeRun]:
    runs: dict[str, ModeRun] = {}
    task = [ChatMessage("user", "Task: " + "find the answer " * 60)]
    for name in modes:
        label, mode_keep, mode, block = mode_table(keep)[name]
        clear_model_cache()  # each mode its own Llama (and KV cache), not the shared one
        backend = LlamaCppBackend(
            model,
            context_length=262_144,
            n_batch=2048,
            n_threads=threads,
            temperature=0.0,
            seed=1,
            kv_shift=mode == "shift",
        )
        runs[name] = ModeRun(label, mode_keep, mode, block, backend, list(task))
        profile(runs[name])
    for turn, (reply, result) in enumerate(steps):
        order = modes[turn % len(modes) :] + modes[: turn % len(modes)]  # rotate: no mode always runs first
        for name in order:
            run_turn(runs[name], system, reply, result)
        if (turn + 1) % 10 == 0:
            means = ", ".join(f"{name} {statistics.mean(runs[name].durations):.2f}" for name in modes)
            print(f"  turn {turn + 1}: s/turn so far {means}", file=sys.stderr, flush=True)
    return runs


def report(runs: dict[str, ModeRun], turns: int, keep: int) -> Iterator[str]:
    yield f"{turns} turns, K={keep}, ~300-token replies, ~2,000-token results, tiny GGUF on llama.cpp, lockstep"
    yield f"{'mode':<18}{'evaluated':>12}{'vs exact':>10}{'largest prompt':>16}{'s/turn':>9}{'median':>9}"
    exact = runs.get("exact")
    for run in runs.values():
        versus = f"{exact.evaluated / run.evaluated:>9.2f}x" if exact else f"{'-':>10}"
        yield (f"{run.label:<18}{run.evaluated:>12,}{versus}{run.largest:>16,}"
               f"{statistics.mean(run.durations):>9.3f}{statistics.median(run.durations):>9.3f}")  # fmt: skip
    shift = runs.get("shift")
    if shift is None:
        return
    for run in runs.values():
        if run is shift:
            continue
        # Per turn, the other mode's time over shift's in the same turn: the noise they shared cancels.
        ratios = [other / mine for other, mine in zip(run.durations, shift.durations, strict=True)]
        mean_ratio = statistics.mean(run.durations) / statistics.mean(shift.durations)
        yield (f"{run.label} / shift: wall time per turn {mean_ratio:.2f} "
               f"(median of per-turn ratios {statistics.median(ratios):.2f}), "
               f"{run.evaluated / shift.evaluated:.2f}x the tokens evaluated")  # fmt: skip
    yield f"shift fallbacks (bookkeeping disagreed, prompt re-evaluated): {shift.fallbacks}"
    for run in runs.values():
        total = sum(run.durations)
        parts = ", ".join(f"{phase} {seconds / turns:.3f}" for phase, seconds in sorted(run.phases.items()))
        yield f"{run.label} s/turn by phase: {parts}, other {(total - sum(run.phases.values())) / turns:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--keep", type=int, default=5)
    parser.add_argument("--modes", default="exact,blocks,shift", help=f"comma-separated, of {', '.join(mode_table(5))}")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (1 on a busy shared machine)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(mode_table(args.keep)))
    if unknown or not modes:
        parser.error(f"unknown mode(s) {', '.join(unknown) or '(none given)'}: use {', '.join(mode_table(args.keep))}")
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_gguf(Path(tmp) / "tiny.gguf", context_length=262_144)
        probe = LlamaCppBackend(model, context_length=4096)
        system, steps = trajectory(probe, args.turns)
        runs = lockstep(model, system, steps, modes, args.keep, args.threads)
        for line in report(runs, args.turns, args.keep):
            print(line)
        if "shift" in runs:
            shifted, plain, cells = k_shift_probe(runs["shift"].backend)
            print(f"one K-shift over {cells:,} cached tokens (262,144-token cache): a 1-token decode takes "
                  f"{shifted * 1000:.1f} ms after a shift, {plain * 1000:.1f} ms without")  # fmt: skip
        for run in runs.values():
            run.backend.close()


if __name__ == "__main__":
    main()
