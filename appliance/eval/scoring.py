"""GAIA's official answer scorer (the normaliser of the benchmark's leaderboard), as pure functions.

Ground truths that parse as numbers compare numerically after dropping `$`, `%`
and thousands commas; ground truths with `,` or `;` compare element-wise (each
element as a number or as a whitespace-free, case-folded string); anything
else compares as a string with whitespace and punctuation removed and case
folded. The same rules as the reference agent's `verify_answer_gaia`.
"""

from __future__ import annotations

import re
import string

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_number_str(number_str: str) -> float | None:
    for char in ("$", "%", ","):
        number_str = number_str.replace(char, "")
    try:
        return float(number_str)
    except ValueError:
        return None


def normalize_str(input_str: str, remove_punct: bool = True) -> str:
    no_spaces = re.sub(r"\s", "", input_str)
    if remove_punct:
        return no_spaces.lower().translate(_PUNCTUATION)
    return no_spaces.lower()


def split_string(text: str, separators: str = ",;") -> list[str]:
    return re.split(f"[{re.escape(separators)}]", text)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def question_scorer(model_answer: str | None, ground_truth: str) -> bool:
    """True when `model_answer` matches `ground_truth` under GAIA's rules."""
    answer = "None" if model_answer is None else model_answer
    if _is_float(ground_truth):
        number = normalize_number_str(answer)
        return number is not None and number == float(ground_truth)
    if any(sep in ground_truth for sep in ",;"):
        truths, answers = split_string(ground_truth), split_string(answer)
        if len(truths) != len(answers):
            return False
        for given, truth in zip(answers, truths, strict=True):
            if _is_float(truth):
                number = normalize_number_str(given)
                if number is None or number != float(truth):
                    return False
            elif normalize_str(given, remove_punct=False) != normalize_str(truth, remove_punct=False):
                return False
        return True
    return normalize_str(answer) == normalize_str(ground_truth)


def kind_of(ground_truth: str) -> str:
    """Which rule applies: number, list or string (for reports)."""
    if _is_float(ground_truth):
        return "number"
    if any(sep in ground_truth for sep in ",;"):
        return "list"
    return "string"
