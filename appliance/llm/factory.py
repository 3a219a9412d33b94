"""Build a backend from settings: the agent's model, or a separate extraction model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance.config import Settings
from appliance.errors import ApplianceError, ComponentUnavailable, ConfigError
from appliance.llm.base import Backend


def read_grammar(path: str, what: str) -> str | None:
    """The text of a GBNF grammar file named in [model], or None when unset."""
    if not path:
        return None
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}", f"fix [model] {what}") from exc


def backend_problem(settings: Settings) -> ApplianceError | None:
    """Why the agent's model cannot be built from `settings`, found without loading it; None when it may be.

    Instant checks only (a file that is gone, an address nobody gives): a server
    that does not answer is found when the run asks it.
    """
    model = settings.model
    if model.backend == "replay":
        if not model.replay:
            return ConfigError("the replay backend needs a script", "pass --replay FILE.jsonl")
        script = Path(model.replay).expanduser()
        if not script.exists():  # a directory or unreadable file: load_replay says exactly what
            return ConfigError(
                f"cannot read replay file {script}: it does not exist", "pass an existing JSONL file with --replay"
            )
        return None
    if model.backend == "openai":
        if not model.base_url.strip():
            return ConfigError("the openai backend has no base_url", "pass --base-url URL or set [model] base_url")
        return None
    path = settings.model_path()
    if path is None:
        return ConfigError(
            f"profile '{settings.profile}' names no model file",
            "run `appliance install`, or pass --model PATH.gguf, or use --backend openai",
        )
    return missing_model(path)


def missing_model(path: Path) -> ComponentUnavailable | None:
    """The error for a GGUF file that is not there, or None when it is."""
    if path.is_file():
        return None
    return ComponentUnavailable(
        "model",
        f"model file {path} not found",
        "run `appliance install` to download the weights, or set [model] path / --model to a GGUF file",
    )


def build_backend(settings: Settings, *, replay_start: int = 0) -> Backend:
    """The agent's model. `replay_start` skips script lines already used (a resumed replay run)."""
    problem = backend_problem(settings)
    if problem is not None:
        raise problem
    model = settings.model
    if model.backend == "replay":
        from appliance.llm.replay import ReplayBackend

        return ReplayBackend.from_file(
            Path(model.replay).expanduser(), context_length=model.context_length, start_at=replay_start
        )
    if model.backend == "openai":
        from appliance.llm.openai import OpenAIBackend

        return OpenAIBackend(
            model.base_url,
            model=model.name,
            api_key=model.api_key,
            context_length=model.context_length,
            temperature=model.temperature,
            top_p=model.top_p,
            repeat_penalty=model.repeat_penalty,
            seed=model.seed,
            timeout=model.request_timeout,
            retries=model.retries,
            grammar=read_grammar(model.grammar, "grammar") or "",
            summary_grammar=read_grammar(model.summary_grammar, "summary_grammar") or "",
            continuation=model.continuation,
        )
    from appliance.llm.llamacpp import LlamaCppBackend

    path = settings.model_path()
    assert path is not None  # backend_problem said so
    return LlamaCppBackend(
        path,
        context_length=model.context_length,
        n_gpu_layers=model.n_gpu_layers,
        n_threads=model.n_threads,
        n_batch=model.n_batch,
        temperature=model.temperature,
        top_p=model.top_p,
        repeat_penalty=model.repeat_penalty,
        seed=model.seed,
        grammar=model.grammar,
        summary_grammar=model.summary_grammar,
        extract_grammar=settings.extraction.output_grammar,
        kv_cache_type=model.kv_cache_type,
        flash_attn=model.flash_attn,
        kv_shift=settings.agent.eviction == "shift",
        prompt_lookup=model.prompt_lookup,
    )


def build_extraction_backend(settings: Settings, get_agent_backend: Callable[[], Backend]) -> Backend:
    """The model that reads pages for the scrape tool: the agent's own unless [extraction] names one."""
    ext = settings.extraction
    if ext.backend == "same":
        return get_agent_backend()
    if ext.backend == "openai":
        from appliance.llm.openai import OpenAIBackend

        return OpenAIBackend(
            ext.base_url or settings.model.base_url,
            model=ext.name,
            api_key=ext.api_key,
            context_length=ext.context_length or settings.model.context_length,
            temperature=0.7,
            top_p=0.95,
            repeat_penalty=1.0,
            timeout=settings.model.request_timeout,
            retries=settings.model.retries,
        )
    if ext.backend == "llamacpp":
        from appliance.llm.llamacpp import LlamaCppBackend

        if not ext.path:
            raise ConfigError("[extraction] backend = llamacpp needs a path", "set [extraction] path to a GGUF file")
        return LlamaCppBackend(
            Path(ext.path).expanduser(),
            context_length=ext.context_length or 16384,
            n_gpu_layers=settings.model.n_gpu_layers,
            n_threads=settings.model.n_threads,
            temperature=0.7,
            top_p=0.95,
            repeat_penalty=1.0,
            extract_grammar=ext.output_grammar,
            kv_cache_type=settings.model.kv_cache_type,
            flash_attn=settings.model.flash_attn,
        )
    raise ConfigError(f"unknown [extraction] backend '{ext.backend}'", "use same, llamacpp or openai")
