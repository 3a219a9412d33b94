"""The memory plan: weights + KV cache for the context + working buffers must fit.

Pure functions. The context is lowered, in steps of 1,024 tokens, until the
plan fits the budget: a smaller context now beats an out-of-memory crash
three hours into a research run. Below the profile's minimum context the
profile does not fit this machine at all. A quantized KV cache (q8_0 takes
about half of f16's memory) buys a longer context: the installer plans each
type and keeps the one with the largest context (best_cache_plan), q4_0 only
when q8_0 falls short of the profile's own window (cache_choice_reason says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from appliance.ggufmeta import KvShape
from appliance.install.hardware import GIB, Hardware

CONTEXT_STEP = 1024
# Bytes per cached element for llama.cpp's KV cache types (block-quantised types
# store 32 values plus their scales per block).
CACHE_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
}
# Compute buffers, the logits of a batch, the CUDA/Metal context: measured
# llama.cpp runs of 8B-72B models sit between 0.4 and 1 GiB at n_batch 512.
WORKING_OVERHEAD = 1 * GIB
# Left to the OS, the appliance itself, SearXNG and the sandbox's programs.
RAM_RESERVE_MIN = 2 * GIB
RAM_RESERVE_FRACTION = 0.15
# Per GPU: the driver's own context and fragmentation.
VRAM_RESERVE_PER_GPU = GIB // 2


def kv_bytes_per_token(shape: KvShape, cache_type: str = "f16") -> int:
    try:
        width = CACHE_TYPE_BYTES[cache_type]
    except KeyError:
        raise ValueError(f"unknown KV cache type {cache_type!r}; one of {', '.join(CACHE_TYPE_BYTES)}") from None
    return int(shape.elements_per_token() * width)


def memory_budget(hardware: Hardware, device: str) -> int:
    """Bytes a model may use: RAM less a reserve on the CPU, the GPUs' memory less theirs on a GPU."""
    if device == "cpu":
        reserve = max(RAM_RESERVE_MIN, int(hardware.ram_bytes * RAM_RESERVE_FRACTION))
        return max(0, hardware.ram_bytes - reserve)
    return max(0, hardware.vram_bytes - VRAM_RESERVE_PER_GPU * len(hardware.gpus))


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    budget_bytes: int
    weights_bytes: int
    kv_bytes_per_token: int
    overhead_bytes: int
    requested_context: int
    context: int
    min_context: int
    cache_type: str = "f16"

    @property
    def kv_bytes(self) -> int:
        return self.kv_bytes_per_token * self.context

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool:
        return self.context >= self.min_context and self.total_bytes <= self.budget_bytes

    @property
    def lowered(self) -> bool:
        return self.context < self.requested_context

    def shortfall_bytes(self) -> int:
        """How much more memory the profile needs at its minimum context (0 when it fits)."""
        need = self.weights_bytes + self.kv_bytes_per_token * self.min_context + self.overhead_bytes
        return max(0, need - self.budget_bytes)

    def describe(self) -> str:
        where = "RAM" if self.device == "cpu" else "GPU memory"
        text = (
            f"weights {self.weights_bytes / GIB:.1f} GiB + KV cache ({self.cache_type}) {self.kv_bytes / GIB:.1f} GiB "
            f"({self.context:,} tokens x {self.kv_bytes_per_token / 1024:.0f} KiB) + buffers "
            f"{self.overhead_bytes / GIB:.1f} GiB = {self.total_bytes / GIB:.1f} GiB of "
            f"{self.budget_bytes / GIB:.1f} GiB usable {where}"
        )
        if not self.fits:
            return text + f": does NOT fit (needs {self.shortfall_bytes() / GIB:.1f} GiB more at the minimum context)"
        if self.lowered:
            return text + f": context lowered from {self.requested_context:,} to fit"
        return text + ": fits"


def plan_memory(
    *,
    device: str,
    budget_bytes: int,
    weights_bytes: int,
    kv_per_token: int,
    requested_context: int,
    min_context: int,
    trained_context: int = 0,
    overhead_bytes: int = WORKING_OVERHEAD,
    cache_type: str = "f16",
) -> MemoryPlan:
    """The largest context (<= requested, a multiple of 1,024 unless it is the request itself) that fits."""
    wanted = min(requested_context, trained_context) if trained_context else requested_context
    free_for_kv = budget_bytes - weights_bytes - overhead_bytes
    if kv_per_token <= 0:
        context = wanted if free_for_kv >= 0 else 0
    elif free_for_kv >= kv_per_token * wanted:
        context = wanted
    else:
        context = max(0, free_for_kv // kv_per_token // CONTEXT_STEP * CONTEXT_STEP)
    return MemoryPlan(
        device=device,
        budget_bytes=budget_bytes,
        weights_bytes=weights_bytes,
        kv_bytes_per_token=kv_per_token,
        overhead_bytes=overhead_bytes,
        requested_context=requested_context,
        context=int(context),
        min_context=min(min_context, wanted),
        cache_type=cache_type,
    )


# Cache types that lose measurably (bench_kvcache.py on SmolLM2-135M: q4_0 raises perplexity ~5% and
# changes 3% of next-token choices; q8_0 neither): chosen only when nothing else gives the default window.
LAST_RESORT_CACHE_TYPES = ("q4_0",)


def best_cache_plan(plans: Sequence[MemoryPlan], default_window: int = 0) -> MemoryPlan:
    """The plan with the largest context; among equals the first (plans come most precise cache first).

    The rule (issue 16): f16 is kept while it gives the whole window and q8_0 is
    taken when f16 would cut it. q4_0 is not taken merely because q8_0 cuts the
    model's 256K window: it costs quality on every token of every run, while the
    window past the profile's own context length (`default_window`, the one its
    defaults are set for) only lengthens runs already past that budget. So q4_0
    only when neither precise type fits with `default_window` and q4_0 gives more.
    """
    precise = [p for p in plans if p.cache_type not in LAST_RESORT_CACHE_TYPES]
    enough = any(p.fits and p.context >= default_window for p in precise)
    pool = precise if precise and enough else list(plans)
    return max(pool, key=lambda plan: (plan.fits, plan.context, -pool.index(plan)))


def cache_choice_reason(plans: Sequence[MemoryPlan], default_window: int = 0) -> str:
    """Why best_cache_plan() chose its type, and how to take a longer window it passed over, in one line."""
    chosen = best_cache_plan(plans, default_window)
    if not chosen.fits:
        return "no cache type fits"
    at = plans.index(chosen)
    reasons = []
    if at:
        before = plans[at - 1]
        reasons.append(f"{before.cache_type} " + (f"would cut the window to {before.context:,}" if before.fits
                                                  else "does not fit"))  # fmt: skip
    if not chosen.lowered:
        reasons.append(f"{chosen.cache_type} gives the whole {chosen.requested_context:,}-token window")
    reason = "; ".join(reasons) or f"{chosen.cache_type} gives the longest window that fits"
    if chosen.cache_type in LAST_RESORT_CACHE_TYPES:
        return f"{reason}; no more precise type fits the profile's {default_window:,}-token window"
    longer = [p for p in plans if p.fits and p.context > chosen.context]
    if longer:
        best = max(longer, key=lambda p: p.context)
        reason += (
            f"; {best.cache_type} would give {best.context:,} at a cost in quality (~5% perplexity): not taken, "
            f"{chosen.cache_type} gives the profile's {default_window:,}-token window (to take it anyway, set "
            f'[model] kv_cache_type = "{best.cache_type}" and context_length = {best.context} in config.toml)'
        )
    return reason


def describe_cache_choices(plans: Sequence[MemoryPlan]) -> str:
    """One line: the context each KV cache type gives on this machine."""
    if not plans:
        return "context by KV cache type: unknown (no KV shape)"
    parts = [f"{p.cache_type} {p.context:,}" + ("" if p.fits else " (does not fit)") for p in plans]
    return "context by KV cache type: " + ", ".join(parts) + f" (of {plans[0].requested_context:,} requested)"
