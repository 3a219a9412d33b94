r"""Final-answer extraction: the content of the last \boxed{...}."""

from __future__ import annotations

import re
from collections.abc import Iterator

_BOXED = re.compile(r"\\boxed\b")
# Placeholders the reference treats as "no answer".
_NOT_AN_ANSWER = frozenset({"?", "??", "???", "？", "……", "…", "...", "unknown"})


def _boxes(text: str) -> Iterator[tuple[int, int, str]]:
    r"""(start, end, content) of each `\boxed{...}` in order; an unclosed last box runs to the end of `text`."""
    pos, n = 0, len(text)
    while (match := _BOXED.search(text, pos)) is not None:
        j = match.end()
        while j < n and text[j].isspace():
            j += 1
        if j >= n or text[j] != "{":
            pos = j if j > match.start() else match.end()
            continue
        depth, k, escaped = 0, j, False
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
                    break
            k += 1
        if k < n:
            yield match.start(), k + 1, text[j + 1 : k]
            pos = k + 1
        else:
            yield match.start(), n, text[j + 1 : n]
            pos = n


def extract_boxed(text: str) -> str:
    r"""Return the content of the last `\boxed{...}` in `text`, or "" if there is none.

    Nested braces and escaped braces (`\{`, `\}`) are handled; whitespace between
    `\boxed` and `{` is allowed; an unclosed last box yields everything after its
    brace (the model may have been cut off). Mirrors the reference's extractor.
    """
    last: str | None = None
    for _start, _end, content in _boxes(text):
        last = content
    if last is None or last in _NOT_AN_ANSWER:
        return ""
    return last.strip()


def unbox(text: str) -> str:
    r"""A final reply for showing beside its answer: `\boxed{X}` in a sentence becomes X, one alone on its line goes.

    The answer itself is shown on its own (the TUI's answer panel), so a bare box would only repeat it.
    """
    parts, pos = [], 0
    for start, end, content in _boxes(text):
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", end)
        line_end = len(text) if line_end == -1 else line_end
        alone = not text[line_start:start].strip() and not text[end:line_end].strip()
        parts += [text[pos:start], "" if alone else content.strip()]
        pos = end
    parts.append(text[pos:])
    return "".join(parts).rstrip()
