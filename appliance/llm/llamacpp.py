"""llama-cpp-python in process: the default backend.

One `Llama` object is loaded per process and reused across turns, so the KV
cache keeps the prompt prefix and each turn evaluates only what is new. The
prompt is rendered with the chat template stored in the GGUF (what a server
would do with the same weights) and passed to llama.cpp as tokens, which lets
us report how many prompt tokens were really evaluated.

With `kv_shift` (the `shift` eviction mode), a change in the middle of the
prompt (an old tool result becoming the placeholder) is spliced into the KV
cache instead of re-evaluating everything after it (appliance.llm.kvshift).
`kv_cache_type` stores the cache quantized (q8_0 halves it), with flash
attention, which llama.cpp needs for a quantized V cache. `prompt_lookup`
drafts the next tokens from the prompt itself (replies quote URLs, names and
numbers from tool results) and verifies the draft in one batch: the output is
sampled exactly as without it.
"""

from __future__ import annotations

import ctypes
import json
import threading
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from appliance.config import KV_CACHE_TYPES
from appliance.errors import ComponentUnavailable, ConfigError
from appliance.llm.base import Backend, ChatMessage, Completion, Purpose, StreamEvent, TextChunk
from appliance.llm.factory import missing_model, read_grammar
from appliance.llm.kvshift import Splice, apply_splice, common_prefix, plan_splices

CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# (path, n_ctx, n_gpu_layers, cache type, flash attention, draft tokens) -> (Llama, lock):
# backends sharing weights share the lock.
_MODELS: dict[tuple[str, int, int, str, bool, int], tuple[Any, threading.Lock]] = {}
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
        kv_cache_type: str = "f16",
        flash_attn: str = "auto",
        kv_shift: bool = False,
        prompt_lookup: int = 0,
    ) -> None:
        missing = missing_model(model_path)
        if missing is not None:
            raise missing
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
        if kv_cache_type not in KV_CACHE_TYPES:
            raise ConfigError(f"unknown kv_cache_type '{kv_cache_type}'", f"use one of {', '.join(KV_CACHE_TYPES)}")
        self.kv_cache_type = kv_cache_type
        self.flash_attn = use_flash_attn(kv_cache_type, flash_attn)
        self.kv_shift = kv_shift
        self.prompt_lookup = max(0, prompt_lookup)
        self.llm, self._lock = self._load(model_path, context_length, n_gpu_layers, n_threads, n_batch, seed)
        if kv_shift and not llama_cpp.llama_memory_can_shift(llama_cpp.llama_get_memory(self.llm._ctx.ctx)):
            # llama.cpp aborts the process on a shift this model's cache cannot do.
            raise ConfigError(
                f"{model_path.name}: llama.cpp cannot shift this model's KV cache ([agent] eviction = shift needs it)",
                "set [agent] eviction = exact or blocks",
            )
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
        # Splices end at control tokens (<|im_end|> and the like): message boundaries in any template.
        self._control_tokens = (
            frozenset(t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_control(vocab.vocab, t))
            if kv_shift
            else frozenset()
        )

    def _load(
        self, path: Path, n_ctx: int, n_gpu_layers: int, n_threads: int, n_batch: int, seed: int
    ) -> tuple[Any, threading.Lock]:
        # One model per (file, context, offload) per process: a second run in the
        # same process (TUI, eval) reuses the weights and the KV cache.
        key = (str(path.resolve()), n_ctx, n_gpu_layers, self.kv_cache_type, self.flash_attn, self.prompt_lookup)
        with _MODELS_LOCK:
            if key in _MODELS:
                return _MODELS[key]
            cache_type = getattr(self._llama_cpp, f"GGML_TYPE_{self.kv_cache_type.upper()}")
            try:
                llm = self._llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    # The repetition penalty's window: the whole context, not llama-cpp-python's
                    # 64 tokens (vLLM/SGLang, where the reference was evaluated, see the whole sequence).
                    last_n_tokens_size=n_ctx,
                    n_gpu_layers=n_gpu_layers,
                    n_threads=n_threads or None,
                    # Prompt batches too: llama-cpp-python would use every core there, whatever n_threads says.
                    n_threads_batch=n_threads or None,
                    n_batch=n_batch,
                    seed=seed if seed >= 0 else self._llama_cpp.LLAMA_DEFAULT_SEED,
                    type_k=cache_type,
                    type_v=cache_type,
                    flash_attn=self.flash_attn,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                if "context" in str(exc) and (self.kv_cache_type != "f16" or self.flash_attn):
                    # The weights loaded; the cache type or flash attention is what this build or model refuses.
                    raise ConfigError(
                        f"llama.cpp could not create a context for {path.name} with kv_cache_type "
                        f"{self.kv_cache_type} and flash attention {'on' if self.flash_attn else 'off'}: {exc}",
                        "set [model] kv_cache_type = f16 and flash_attn = off (a quantized cache needs flash "
                        "attention and head sizes that are multiples of 32), or reinstall llama-cpp-python "
                        "built for this hardware (installer/install.sh)",
                    ) from exc
                raise ComponentUnavailable(
                    "model",
                    f"llama.cpp could not load {path}: {exc}",
                    "check that the file is a complete GGUF (appliance install verifies sha256) "
                    "and that it fits in memory (appliance doctor)",
                ) from exc
            if self.prompt_lookup:
                from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

                # Set after loading, not passed to Llama(): passed, it forces logits_all, an n_ctx x vocabulary
                # array of floats (tens of GB for a 256K window); _eval_with_draft_logits needs none of it.
                llm.draft_model = LlamaPromptLookupDecoding(num_pred_tokens=self.prompt_lookup)
                llm.eval = types.MethodType(_eval_with_draft_logits, llm)  # type: ignore[method-assign]
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
            spliced, fell_back = self._splice_cache(prompt) if self.kv_shift else (0, False)
            reused = self.cached_prefix(prompt) - spliced
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
            # Every generated token but the last is evaluated into the cache (with a draft, also
            # draft tokens past the end: then the stream's count is the one to trust).
            cached = int(self.llm.n_tokens) - len(prompt) + 1
            generated = completion_tokens if self.prompt_lookup else max(completion_tokens, cached)
            yield Completion("".join(parts), finish, len(prompt), generated, evaluated, kv_shift_fallback=fell_back)

    # ------------------------------------------------------------ the shift eviction mode

    def _splice_cache(self, prompt: list[int]) -> tuple[int, bool]:
        """Splice the KV cache toward `prompt` (kvshift.plan_splices); returns (tokens evaluated, fell back).

        llama.cpp only appends at the end of a sequence, so each replacement is
        evaluated after the cached tokens and moved into place: the old span is
        removed, the replacement is evaluated at the end, then the tokens after
        the old span shift back to their new positions and the replacement
        before them.
        Afterwards the record (what llama-cpp-python believes is cached) must
        agree with the fresh render and llama.cpp's positions with the record;
        if not, the cache is cleared and the prompt evaluated again.
        """
        llama_cpp, llm = self._llama_cpp, self.llm
        record = [int(t) for t in llm.input_ids[: llm.n_tokens]]
        splices = plan_splices(record, prompt, self._control_tokens.__contains__)
        if not splices:
            return 0, False
        memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
        evaluated = 0
        try:
            for splice in splices:
                self._apply_splice(memory, len(record), splice)
                record = apply_splice(record, splice)
                evaluated += len(splice.inserted)
        except RuntimeError:
            record = []
        consistent = (
            bool(record)
            and common_prefix(record, prompt) >= splices[-1].end
            and llama_cpp.llama_memory_seq_pos_min(memory, 0) == 0
            and llama_cpp.llama_memory_seq_pos_max(memory, 0) == len(record) - 1
        )
        if not consistent:
            llm.reset()
            llama_cpp.llama_memory_clear(memory, True)
            return 0, True
        llm.input_ids[: len(record)] = record
        llm.n_tokens = len(record)
        # The logits of the last decode belong to the moved replacement, not to the end of the record.
        llm._requires_eval = True
        return evaluated, False

    def _apply_splice(self, memory: Any, length: int, splice: Splice) -> None:
        llama_cpp, llm = self._llama_cpp, self.llm
        removed_end = splice.start + splice.removed
        llama_cpp.llama_memory_seq_rm(memory, 0, splice.start, removed_end)
        # The replacement is evaluated before anything moves: a move only marks the cells, and the
        # next decode rotates every cell of the cache (a K-shift, as costly as the whole cache is
        # large), so both moves below share the one K-shift of the next decode.
        tokens = list(splice.inserted)
        for offset in range(0, len(tokens), llm.n_batch):
            llm._batch.set_batch(batch=tokens[offset : offset + llm.n_batch], n_past=length + offset, logits_all=False)
            llm._ctx.decode(llm._batch)
        llama_cpp.llama_memory_seq_add(memory, 0, removed_end, length, splice.shift)
        llama_cpp.llama_memory_seq_add(memory, 0, length, -1, splice.start - length)

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
        info.update({"path": str(self.model_path), "template": self.template_source,
                     "kv_cache_type": self.kv_cache_type, "flash_attn": self.flash_attn,
                     "kv_shift": self.kv_shift, "prompt_lookup": self.prompt_lookup})  # fmt: skip
        return info


def _eval_with_draft_logits(llm: Any, tokens: Sequence[int]) -> None:
    """`Llama.eval` for prompt-lookup decoding, bound to one Llama.

    llama-cpp-python's generate() verifies a draft by sampling at every token of
    the batch [sampled token, draft...], so those batches need logits for every
    token; prompt batches only for their last. Nothing is copied to `llm.scores`.
    """
    llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
    draft_batch = llm.draft_model.num_pred_tokens + 1
    for start in range(0, len(tokens), llm.n_batch):
        batch = list(tokens[start : start + llm.n_batch])
        n_past = llm.n_tokens
        llm._batch.set_batch(batch=batch, n_past=n_past, logits_all=len(batch) <= draft_batch)
        llm._ctx.decode(llm._batch)
        llm.input_ids[n_past : n_past + len(batch)] = batch
        llm.n_tokens += len(batch)
        llm._requires_eval = False


def use_flash_attn(kv_cache_type: str, flash_attn: str) -> bool:
    """Whether llama.cpp runs with flash attention: "auto" turns it on where a quantized cache needs it."""
    if flash_attn == "auto":
        return kv_cache_type != "f16"
    return flash_attn == "on"


def clear_model_cache() -> None:
    """Forget loaded models (tests that load several files)."""
    with _MODELS_LOCK:
        _MODELS.clear()
