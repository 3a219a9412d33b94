r"""Final-answer extraction: the content of the last \boxed{...}."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\b")
# Placeholders the reference treats as "no answer".
_NOT_AN_ANSWER = frozenset({"?", "??", "???", "？", "……", "…", "...", "unknown"})


def extract_boxed(text: str) -> str:
    r"""Return the content of the last `\boxed{...}` in `text`, or "" if there is none.

    Nested braces and escaped braces (`\{`, `\}`) are handled; whitespace between
    `\boxed` and `{` is allowed; an unclosed last box yields everything after its
    brace (the model may have been cut off). Mirrors the reference's extractor.
    """
    last: str | None = None
    pos, n = 0, len(text)
    while (match := _BOXED.search(text, pos)) is not None:
        j = match.end()
        while j < n and text[j].isspace():
            j += 1
        if j >= n or text[j] != "{":
            pos = j if j > match.start() else match.end()
            continue
        depth, k, escaped, closed = 0, j, False, False
        while k < n:
            ch = text[k]
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    last = text[j + 1 : k]
                    pos = k + 1
                    closed = True
                    break
            k += 1
        if not closed:
            last = text[j + 1 : n]
            pos = n
    if last is None or last in _NOT_AN_ANSWER:
        return ""
    return last.strip()
