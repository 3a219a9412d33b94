"""An LLM judge over any OpenAI-compatible server, with the prompt the reference uses for GAIA."""

from __future__ import annotations

from appliance.llm.base import ChatMessage
from appliance.llm.openai import OpenAIBackend

# The reference's GAIA judge (apps/miroflow-agent/benchmarks/evaluators/eval_utils.py,
# GAIA_VALIDATION_TEXT_103_SCORER_PROMPT, after WebSailor's prompt).
JUDGE_PROMPT = """You are an evaluation assistant. Please determine if the predicted answer is equivalent to the labeled answer.

Question: {question}

Labeled Answer: {correct_answer}

Predicted Answer: {response}

Did the model give an answer **equivalent** to the labeled answer? Please respond with "Correct" if they are equivalent, or "Incorrect" if they are not equivalent. Do not include any other text.
"""  # noqa: E501


def parse_verdict(text: str) -> str:
    """CORRECT, INCORRECT, or NOT_ATTEMPTED when the judge's reply is neither word."""
    normalized = text.split("</think>")[-1].strip().rstrip(".").strip().lower()
    if normalized == "correct":
        return "CORRECT"
    if normalized == "incorrect":
        return "INCORRECT"
    return "NOT_ATTEMPTED"


class Judge:
    def __init__(self, backend: OpenAIBackend, *, attempts: int = 3) -> None:
        self.backend = backend
        self.attempts = attempts

    @property
    def name(self) -> str:
        return f"{self.backend.model}@{self.backend.base_url}"

    def grade(self, question: str, truth: str, answer: str | None) -> str:
        if not answer:
            return "NOT_ATTEMPTED"
        prompt = JUDGE_PROMPT.format(question=question, correct_answer=truth, response=answer)
        verdict = "NOT_ATTEMPTED"
        for _ in range(self.attempts):
            completion = self.backend.complete([ChatMessage("user", prompt)], max_tokens=64, purpose="turn")
            verdict = parse_verdict(completion.text)
            if verdict != "NOT_ATTEMPTED":
                break
        return verdict

    def close(self) -> None:
        self.backend.close()
