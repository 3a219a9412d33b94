"""Making untrusted text safe for the place it is shown.

Two media, two functions, used by every face:
- `for_terminal` is what a terminal (or the TUI) shows: every character that
  moves the cursor, hides text or changes the terminal's state (CR, backspace,
  ESC and the rest of C0/C1, DEL, bidi overrides and isolates, lone surrogates)
  is written as a visible escape such as `\\r` or `\\u202e`, so nothing is
  dropped silently and nothing is hidden: `Wrong\\rRight` shows both words.
- `safe_json` is JSON for a terminal, a pipe or a file alike: the same
  characters become `\\u` escapes, which JSON decodes back to the exact text.

`strip_control` is for text handed back to the model (colour codes in a
command's output are noise there), never for what a person reads.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from typing import Any

# CSI, OSC (terminated by BEL or ST), other two-byte escapes, then lone C0/C1 controls.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")

# Characters a terminal acts on instead of showing: C0 but newline and tab, DEL, C1,
# the bidi embeddings/overrides (U+202A-202E) and isolates (U+2066-2069), which
# reorder what follows them on screen, and lone surrogates (undecodable bytes),
# which a UTF-8 terminal cannot even be sent.
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_TERMINAL_UNSAFE = re.compile(f"[{_UNSAFE}]")
# In JSON the C0 controls are escaped by json.dumps already; line and paragraph
# separators are added because JavaScript and some terminals treat them as line breaks.
_JSON_UNSAFE = re.compile(f"[{_UNSAFE}\u2028\u2029]")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\r":
        return "\\r"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text: str) -> str:
    """Untrusted text as a terminal may show it: controls written as visible escapes, newlines and tabs kept."""
    return _TERMINAL_UNSAFE.sub(_visible, text.replace("\r\n", "\n"))


def safe_json(value: Any, *, indent: int | None = None) -> str:
    """JSON that a terminal cannot interpret and that decodes to the exact text (controls as \\u escapes)."""
    return safe_json_text(json.dumps(value, ensure_ascii=False, indent=indent))


def safe_json_text(text: str) -> str:
    """JSON text made by someone else (a tool's result) escaped like safe_json; valid JSON stays the same value.

    Valid JSON has these characters only inside strings, where a \\u escape means the same character.
    """
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def strip_control(text: str) -> str:
    """Text for the model: terminal escape sequences and control characters removed, newlines and tabs kept."""
    return _CONTROL.sub("", _ANSI.sub("", text.replace("\r\n", "\n")))


def one_line(text: str, limit: int = 120) -> str:
    """Untrusted text flattened to one line for a terminal, cut at `limit` characters."""
    flat = " ".join(for_terminal(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def did_you_mean(word: str, choices: Iterable[str], form: str = "'{}'") -> str:
    """ " (did you mean 'x'?)" for the closest of `choices` (the names valid at that place), or ""."""
    hint = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {form.format(hint[0])}?)" if hint else ""
