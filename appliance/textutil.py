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


# Names that hold credentials ("api_key", "judge_api_key", "hf_token", "X-Api-Key",
# "Authorization"), not "max_tokens". Shared by the history's scrubber and the web archive.
SECRET_NAME = re.compile(
    r"^(?:.*[_-])?(?:api[_-]?key|key|token|access[_-]?token|secret|password|passwd|authorization|credentials?)$",
    re.IGNORECASE,
)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_URL_SECRET_PARAM = re.compile(r"([?&](?:api[_-]?key|key|token|access_token|secret|password)=)[^&#\s]+", re.IGNORECASE)


def redact_url_secrets(text: str) -> str:
    """`user:password@` and `?api_key=...`-style parameters in any URL in `text` become ***."""
    return _URL_SECRET_PARAM.sub(r"\1***", _URL_USERINFO.sub("***@", text))
