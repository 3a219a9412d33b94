"""llama-cpp-python in process: the default backend.

One `Llama` object is loaded per process and reused across turns, so the KV
cache keeps the prompt prefix and each turn evaluates only what is new. The
prompt is rendered with the chat template stored in the GGUF (what a server
would do with the same weights) and passed to llama.cpp as tokens, which lets
us report how many prompt tokens were really evaluated.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from appliance.errors import ComponentUnavailable, ConfigError
from appliance.llm.base import Backend, ChatMessage, Completion, Purpose, StreamEvent, TextChunk
from appliance.llm.factory import read_grammar

CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# (path, n_ctx, n_gpu_layers) -> (Llama, lock): backends sharing weights share the lock.
_MODELS: dict[tuple[str, int, int], tuple[Any, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(
        self,
        model_path: Path,
        *,
        context_length: int = 32768,
        n_gpu_layers: int = 0,
        n_threads: int = 0,
        n_batch: int = 512,
        temperature: float = 1.0,
        top_p: float = 0.95,
        repeat_penalty: float = 1.05,
        seed: int = -1,
        grammar: str = "",
        summary_grammar: str = "",
        extract_grammar: str = "",
    ) -> None:
        if not model_path.is_file():
            raise ComponentUnavailable(
                "model",
                f"model file {model_path} not found",
                "run `appliance install` to download the weights, or set [model] path / --model to a GGUF file",
            )
        try:
            import llama_cpp
        except ImportError as exc:  # pragma: no cover - a broken install
            raise ComponentUnavailable(
                "model", "llama-cpp-python is not installed", "run installer/install.sh or pip install llama-cpp-python"
            ) from exc
        self._llama_cpp = llama_cpp
        self.model = model_path.name
        self.model_path = model_path
        self.temperature = temperature
        self.top_p = top_p
        self.repeat_penalty = repeat_penalty
        self.seed = seed
        self.llm, self._lock = self._load(model_path, context_length, n_gpu_layers, n_threads, n_batch, seed)
        self.context_length = int(self.llm.n_ctx())
        metadata: dict[str, str] = dict(self.llm.metadata)
        template = metadata.get("tokenizer.chat_template") or CHATML_FALLBACK
        self.template_source = "gguf" if "tokenizer.chat_template" in metadata else "chatml-fallback"
        vocab = self.llm._model
        eos_id, bos_id = self.llm.token_eos(), self.llm.token_bos()
        self.eos_token = vocab.token_get_text(eos_id) if eos_id >= 0 else ""
        bos_token = vocab.token_get_text(bos_id) if bos_id >= 0 else ""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._formatter = Jinja2ChatFormatter(template=template, eos_token=self.eos_token, bos_token=bos_token)
        self._grammars = {
            "turn": read_grammar(grammar, "grammar"),
            "summary": read_grammar(summary_grammar, "summary_grammar"),
            "extract": read_grammar(extract_grammar, "output_grammar"),
        }
        self.message_overhead = max(
            0, len(self.render_tokens([ChatMessage("user", "x")], generation_prompt=False)) - self.count_tokens("x")
        )

    def _load(
        self, path: Path, n_ctx: int, n_gpu_layers: int, n_threads: int, n_batch: int, seed: int
    ) -> tuple[Any, threading.Lock]:
        # One model per (file, context, offload) per process: a second run in the
        # same process (TUI, eval) reuses the weights and the KV cache.
        key = (str(path.resolve()), n_ctx, n_gpu_layers)
        with _MODELS_LOCK:
            if key in _MODELS:
                return _MODELS[key]
            try:
                llm = self._llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    # The repetition penalty's window: the whole context, not llama-cpp-python's
                    # 64 tokens (vLLM/SGLang, where the reference was evaluated, see the whole sequence).
                    last_n_tokens_size=n_ctx,
                    n_gpu_layers=n_gpu_layers,
                    n_threads=n_threads or None,
                    n_batch=n_batch,
                    seed=seed if seed >= 0 else self._llama_cpp.LLAMA_DEFAULT_SEED,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise ComponentUnavailable(
                    "model",
                    f"llama.cpp could not load {path}: {exc}",
                    "check that the file is a complete GGUF (appliance install verifies sha256) "
                    "and that it fits in memory (appliance doctor)",
                ) from exc
            _MODELS[key] = (llm, threading.Lock())
            return _MODELS[key]

    def render_tokens(self, messages: Sequence[ChatMessage], *, generation_prompt: bool = True) -> list[int]:
        self._formatter.add_generation_prompt = generation_prompt
        rendered = self._formatter(messages=[{"role": m.role, "content": m.content} for m in messages])  # type: ignore[misc]
        tokens: list[int] = self.llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
        return tokens

    def continuation_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The prompt that continues the last (assistant) message: the conversation rendered without
        the generation prompt and cut right after that message, before its end-of-turn token.

        The message is found in the rendering as transformers' continue_final_message finds it
        (its last occurrence; its stripped form when the template trims it, the trimmed
        whitespace put back). When the KV cache holds this reply's own tokens (it was generated
        here and cut), they are kept as they were sampled, so only the rest is evaluated.
        """
        self._formatter.add_generation_prompt = False
        rendered = self._formatter(messages=[{"role": m.role, "content": m.content} for m in messages])  # type: ignore[misc]
        text: str = rendered.prompt
        content = messages[-1].content
        at = text.rfind(content) if content else -1
        if at < 0 and content.strip():
            stripped = content.strip()
            at = text.rfind(stripped)
            if at >= 0:
                # The template trimmed the message: keep what it kept before the content, then all of it.
                at -= len(content) - len(content.lstrip())
        if at < 0:
            raise ConfigError(
                "the model's chat template drops the assistant message to continue",
                "use a GGUF whose chat template keeps assistant text (ChatML does)",
            )
        head: list[int] = self.llm.tokenize(text[:at].encode("utf-8"), add_bos=False, special=True)
        data = content.encode("utf-8")
        cached = [int(t) for t in self.llm._input_ids[: self.llm.n_tokens]]
        if cached[: len(head)] != head:
            whole: list[int] = self.llm.tokenize((text[:at] + content).encode("utf-8"), add_bos=False, special=True)
            return whole
        kept: list[int] = []
        used = 0
        for token in cached[len(head) :]:
            piece = self.llm.detokenize([token], special=True)
            if not data.startswith(piece, used):
                break
            kept.append(token)
            used += len(piece)
        rest: list[int] = self.llm.tokenize(data[used:], add_bos=False, special=True) if used < len(data) else []
        return head + kept + rest

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.render_tokens(messages))

    def cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` are already in the KV cache."""
        cached = self.llm._input_ids[: self.llm.n_tokens]
        n = 0
        for a, b in zip(cached, tokens, strict=False):
            if int(a) != b:
                break
            n += 1
        return n

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        purpose: Purpose = "turn",
        cancel: threading.Event | None = None,
    ) -> Iterator[StreamEvent]:
        from llama_cpp.llama_grammar import LlamaGrammar

        with self._lock:
            continuing = len(messages) > 1 and messages[-1].role == "assistant"
            prompt = self.continuation_tokens(messages) if continuing else self.render_tokens(messages)
            reused = self.cached_prefix(prompt)
            grammar_text = self._grammars.get(purpose)
            grammar = LlamaGrammar.from_string(grammar_text, verbose=False) if grammar_text else None
            stream = self.llm.create_completion(
                prompt,
                max_tokens=max(1, max_tokens),
                temperature=self.temperature,
                top_p=self.top_p,
                # As the reference was evaluated (vLLM/SGLang): no top-k, no min-p, no typical sampling.
                top_k=0,
                min_p=0.0,
                typical_p=1.0,
                repeat_penalty=self.repeat_penalty,
                stop=[self.eos_token] if self.eos_token else [],
                grammar=grammar,
                stream=True,
            )
            parts: list[str] = []
            finish = "stop"
            completion_tokens = 0
            try:
                for chunk in stream:
                    choice = chunk["choices"][0]
                    text = choice.get("text") or ""
                    completion_tokens += 1
                    if text:
                        parts.append(text)
                        yield TextChunk(text)
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
                    if cancel is not None and cancel.is_set():
                        finish = "cancelled"
                        break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            # A prefix hit that consumes the whole prompt re-evaluates one token.
            evaluated = max(len(prompt) - reused, 1 if reused == len(prompt) else 0)
            # Every generated token but the last is evaluated into the cache.
            generated = max(completion_tokens, int(self.llm.n_tokens) - len(prompt) + 1)
            yield Completion("".join(parts), finish, len(prompt), generated, evaluated)

    # ------------------------------------------------------------ KV checkpoints

    def save_checkpoint(self, path: Path, max_bytes: int) -> bool:
        """Write the KV cache and its tokens, so a resumed run skips re-evaluating its prefix.

        Written only when the state is at most `max_bytes` (a long context on a big
        model is gigabytes); the file is replaced atomically. Returns whether it was written.
        """
        llama_cpp = self._llama_cpp
        with self._lock:
            n_tokens = int(self.llm.n_tokens)
            ctx = self.llm._ctx.ctx
            if n_tokens == 0 or int(llama_cpp.llama_state_get_size(ctx)) > max_bytes:
                return False
            tokens = (llama_cpp.llama_token * n_tokens)(*[int(t) for t in self.llm.input_ids[:n_tokens]])
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            if not llama_cpp.llama_state_save_file(ctx, str(partial).encode(), tokens, n_tokens):
                partial.unlink(missing_ok=True)
                return False
            meta = {"model": str(self.model_path.resolve()), "size": self.model_path.stat().st_size,
                    "n_ctx": self.context_length, "tokens": n_tokens}  # fmt: skip
            path.with_name(path.name + ".json").write_text(json.dumps(meta), encoding="utf-8")
            partial.replace(path)
            return True

    def load_checkpoint(self, path: Path) -> int:
        """Restore a checkpoint written by the same model and context size; returns the tokens restored.

        A missing, foreign or unreadable checkpoint restores nothing (the run just
        evaluates its prompt again), and leaves the cache empty rather than half-loaded.
        """
        llama_cpp = self._llama_cpp
        try:
            meta = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        same_model = meta.get("model") == str(self.model_path.resolve()) and meta.get("size") == (
            self.model_path.stat().st_size
        )
        if not same_model or meta.get("n_ctx") != self.context_length or not path.is_file():
            return 0
        with self._lock:
            capacity = self.context_length
            tokens = (llama_cpp.llama_token * capacity)()
            count = ctypes.c_size_t(0)
            ctx = self.llm._ctx.ctx
            if not llama_cpp.llama_state_load_file(ctx, str(path).encode(), tokens, capacity, ctypes.byref(count)):
                self.llm.reset()
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                return 0
            n_tokens = int(count.value)
            self.llm.input_ids[:n_tokens] = tokens[:n_tokens]
            self.llm.n_tokens = n_tokens
            # The logits of the last token are not part of the file: evaluate it again.
            self.llm._requires_eval = True
            return n_tokens

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({"path": str(self.model_path), "template": self.template_source})
        return info


def clear_model_cache() -> None:
    """Forget loaded models (tests that load several files)."""
    with _MODELS_LOCK:
        _MODELS.clear()
