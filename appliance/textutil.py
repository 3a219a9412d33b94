"""Making untrusted text safe for the place it is shown."""

from __future__ import annotations

import re

# CSI, OSC (terminated by BEL or ST), other two-byte escapes, then lone C0/C1 controls.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")


def strip_control(text: str) -> str:
    """Remove terminal escape sequences and control characters, keeping newlines and tabs."""
    return _CONTROL.sub("", _ANSI.sub("", text.replace("\r\n", "\n")))


def one_line(text: str, limit: int = 120) -> str:
    flat = " ".join(strip_control(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
