"""Ask the extraction model for only what `info_to_extract` asks, with the reference's prompt.

A page longer than the extractor's context is split on paragraph boundaries
into parts that fit; each part is asked the same question, and the partial
extracts are then given to the same prompt as the content to analyse, which
merges them (recursively when the extracts themselves do not fit). The
reference instead cut 40,960 characters off the end per retry until the page
fit; nothing is lost here, at the price of one model call per part plus one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import ApplianceError
from appliance.llm.base import Backend, ChatMessage
from appliance.protocol.parsing import is_degenerate
from appliance.tools.documents import pack_paragraphs

# Verbatim from the reference (jina_scrape_llm_summary.py): the model was trained with tool results made this way.
EXTRACT_INFO_PROMPT = (
    "You are given a piece of content and the requirement of information to extract. "
    "Your task is to extract the information specifically requested. "
    "Be precise and focus exclusively on the requested information."
    """

INFORMATION TO EXTRACT:
{}

INSTRUCTIONS:
1. Extract the information relevant to the focus above.
2. If the exact information is not found, extract the most closely related details.
3. Be specific and include exact details when available.
4. Clearly organize the extracted information for easy understanding.
5. Do not include general summaries or unrelated content.

CONTENT TO ANALYZE:
{}

EXTRACTED INFORMATION:"""
)

_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
_MIN_CONTENT_TOKENS = 64
_SAFETY_TOKENS = 32
_MAX_MERGE_ROUNDS = 4


def build_prompt(info_to_extract: str, content: str) -> str:
    return EXTRACT_INFO_PROMPT.format(info_to_extract, content)


def clean_reply(text: str) -> str:
    """The answer without a reasoning block (thinking models such as MiroThinker write one first)."""
    text = _THINK.sub("", text)
    if text.lstrip().startswith("<think>"):  # ran out of tokens while thinking: keep what it wrote
        text = text.lstrip()[len("<think>") :]
    return text.replace("</think>", "").strip()


def split_to_fit(text: str, budget: int, count: Callable[[str], int]) -> list[str]:
    """Parts of `text` of at most `budget` tokens each, cut on paragraph, line or word boundaries."""
    total = count(text)
    if total <= budget or len(text) <= 16:
        return [text]
    # Aim a little under the budget by the text's own characters-per-token ratio.
    size = max(int(budget * len(text) / total * 0.9), 16)
    pieces = pack_paragraphs(text, size)
    if len(pieces) <= 1:
        pieces = [text[: len(text) // 2], text[len(text) // 2 :]]
    parts: list[str] = []
    for piece in pieces:
        parts.extend(split_to_fit(piece, budget, count))
    return parts


@dataclass
class Extraction:
    success: bool
    text: str = ""
    error: str = ""
    model: str = ""
    tokens_used: int = 0
    parts: int = 1
    calls: int = 0


class ExtractionFailed(Exception):
    pass


class Extractor:
    """One extraction model; `extract` may call it several times for a long page."""

    def __init__(self, backend: Backend, *, max_tokens: int = 4096) -> None:
        self.backend = backend
        self.max_tokens = max_tokens

    def output_tokens(self) -> int:
        context = self.backend.context_length or 32768
        return max(16, min(self.max_tokens, context // 4))

    def content_budget(self, info_to_extract: str) -> int:
        """Tokens of page content one prompt can carry, next to the instructions and the answer."""
        frame = self.backend.count_messages([ChatMessage("user", build_prompt(info_to_extract, ""))])
        context = self.backend.context_length or 32768
        return context - frame - self.output_tokens() - _SAFETY_TOKENS

    def extract(self, info_to_extract: str, content: str, cancel: threading.Event | None = None) -> Extraction:
        result = Extraction(success=False, model=self.backend.model or self.backend.name)
        if not content.strip():
            result.error = "Content cannot be empty"
            return result
        budget = self.content_budget(info_to_extract)
        if budget < _MIN_CONTENT_TOKENS:
            result.error = (
                f"the extraction model's context ({self.backend.context_length} tokens) is too small for the prompt; "
                "raise [model] context_length or [extraction] context_length"
            )
            return result
        try:
            parts = split_to_fit(content, budget, self.backend.count_tokens)
            result.parts = len(parts)
            answers = [self._ask(info_to_extract, part, result, cancel) for part in parts]
            rounds = 0
            while len(answers) > 1:
                rounds += 1
                if rounds > _MAX_MERGE_ROUNDS:
                    raise ExtractionFailed("the partial extracts did not merge into one answer")
                answers = self._merge(info_to_extract, answers, budget, result, cancel)
        except ExtractionFailed as exc:
            result.error = str(exc)
            return result
        except ApplianceError as exc:
            result.error = f"the extraction model failed: {exc.one_line()}"
            return result
        except Exception as exc:  # a backend bug or a dropped server must not end the run
            result.error = f"the extraction model failed: {type(exc).__name__}: {exc}"
            return result
        result.success = True
        result.text = answers[0]
        return result

    def _merge(
        self, info: str, answers: list[str], budget: int, result: Extraction, cancel: threading.Event | None
    ) -> list[str]:
        total = len(answers)
        labelled = [f"[Extract from part {i} of {total}]\n{answer}" for i, answer in enumerate(answers, 1)]
        groups: list[list[str]] = [[]]
        for block in labelled:
            candidate = "\n\n".join([*groups[-1], block])
            if groups[-1] and self.backend.count_tokens(candidate) > budget:
                groups.append([block])
            else:
                groups[-1].append(block)
        merged = []
        for group in groups:
            text = "\n\n".join(group)
            if self.backend.count_tokens(text) > budget:
                text = split_to_fit(text, budget, self.backend.count_tokens)[0]
            merged.append(self._ask(info, text, result, cancel))
        return merged

    def _ask(self, info: str, content: str, result: Extraction, cancel: threading.Event | None) -> str:
        messages = [ChatMessage("user", build_prompt(info, content))]
        text = ""
        for _attempt in range(2):
            if cancel is not None and cancel.is_set():
                raise ExtractionFailed("the extraction was cancelled")
            completion = self.backend.complete(
                messages, max_tokens=self.output_tokens(), purpose="extract", cancel=cancel
            )
            result.calls += 1
            result.tokens_used += completion.prompt_tokens + completion.completion_tokens
            text = clean_reply(completion.text)
            if text and not is_degenerate(text):
                return text
        if not text:
            raise ExtractionFailed("the extraction model returned an empty answer")
        raise ExtractionFailed("the extraction model kept repeating itself")
