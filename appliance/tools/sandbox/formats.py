"""Result texts in the shapes the model was trained on (E2B), capped, with guidance for known mistakes.

The reference returns `str(CommandResult(...))` for run_command, a dataclass
repr: `CommandResult(stderr='...', stdout='...', exit_code=0, error=None)`,
and `str(Execution)` of e2b_code_interpreter for run_python_code:
`Execution(Results: [Result(42)], Logs: Logs(stdout: ['hi\\n'], stderr: []),
Error: ExecutionError(name='...', value='...', traceback='...'))`. A `Result`
shows its text/plain form unquoted, the rest are Python reprs, which also
makes any control characters in the output visible instead of active.
Everything here is a pure function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from appliance.textutil import strip_control

NOTE_PREFIX = "[Sandbox note]"
_MARK = "[Result truncated: {shown:,} of about {total:,} characters shown]"
_MARK_ROOM = 80

# Messages of programs and libraries that tried the network (the sandbox has none).
OFFLINE_SIGNS = (
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Name or service not known",
    "No address associated with hostname",
    "nodename nor servname provided",
    "Could not resolve host",
    "unable to resolve host address",
    "Failed to establish a new connection",
    "NameResolutionError",
    "getaddrinfo failed",
    "Max retries exceeded with url",
    "urlopen error",
)
PIP_OFFLINE_SIGNS = (
    "Could not find a version that satisfies the requirement",
    "No matching distribution found",
)
# The tools that reach the web for the model, by the server that offers them.
WEB_TOOLS = (
    ("search_and_scrape_webpage", "google_search", "to search the web"),
    ("jina_scrape_llm_summary", "scrape_and_extract_info", "to read a web page"),
)


def looks_binary(text: str) -> bool:
    """NUL bytes, or many undecodable bytes or control characters: not text a model can read."""
    sample = text[:8192]
    if not sample:
        return False
    if "\x00" in sample:
        return True
    odd = sum(1 for ch in sample if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\n\r\t\x1b"))
    return odd > len(sample) // 10


def readable(text: str, total_bytes: int) -> str:
    """Output as the model should see it: binary replaced by a description, terminal codes removed."""
    if looks_binary(text):
        return (
            f"[binary output of {total_bytes:,} bytes not shown: write it to a file and inspect it with "
            "`xxd FILE | head` or Python]"
        )
    return strip_control(text)


@dataclass
class Piece:
    """One string of a result: `total` is its full size (the capture may have kept only a head)."""

    text: str
    total: int
    keep_tail: bool = False  # a traceback's end says the most
    quoted: bool = True  # printed as a repr (escapes count towards the size)


def _size(text: str, quoted: bool) -> int:
    return len(repr(text)) if quoted else len(text)


def _level(sizes: Sequence[int], budget: int) -> int:
    """The largest L with sum(min(size, L)) <= budget: every piece keeps up to L characters."""
    low, high = 0, max(sizes, default=0)
    while low < high:
        middle = (low + high + 1) // 2
        if sum(min(size, middle) for size in sizes) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _cut(text: str, size: int, piece: Piece) -> str:
    """`text` shortened until its printed form is at most `size` characters."""

    def part(keep: int) -> str:
        return text[len(text) - keep :] if piece.keep_tail else text[:keep]

    whole = max(1, _size(text, piece.quoted))
    keep = len(text)
    while keep and (over := _size(part(keep), piece.quoted) - size) > 0:
        keep = max(0, keep - max(1, over * len(text) // whole))
    return part(keep) if keep else ""


def fit(pieces: Sequence[Piece], budget: int) -> list[str]:
    """Share `budget` characters fairly: small pieces stay whole, the large ones are cut to one level.

    A cut piece (here, or already when its output was captured) carries the mark.
    """
    sizes = [_size(p.text, p.quoted) for p in pieces]
    cut = [p.total > len(p.text) for p in pieces]
    marks = sum(_MARK_ROOM for c in cut if c)
    if sum(sizes) + marks > budget:
        over = [i for i, size in enumerate(sizes) if size > budget // max(1, len(pieces))]
        level = _level(sizes, budget - _MARK_ROOM * len(set(over) | {i for i, c in enumerate(cut) if c}))
        for i, size in enumerate(sizes):
            if size > level:
                cut[i] = True
    else:
        level = max(sizes, default=0)
    out = []
    for text, piece, was_cut in zip([p.text for p in pieces], pieces, cut, strict=True):
        if was_cut:
            text = _cut(text, level, piece)
            mark = _MARK.format(shown=len(text), total=max(piece.total, len(piece.text)))
            text = f"{mark}\n{text}" if piece.keep_tail else f"{text}\n{mark}"
        out.append(text)
    return out


def command_result(stdout: Piece, stderr: Piece, exit_code: int, error: str | None, cap: int) -> str:
    """E2B's CommandResult repr, at most about `cap` characters."""
    frame = f"CommandResult(stderr=, stdout=, exit_code={exit_code}, error={error!r})"
    out, err = fit([stdout, stderr], max(200, cap - len(frame)))
    return f"CommandResult(stderr={err!r}, stdout={out!r}, exit_code={exit_code}, error={error!r})"


def execution(
    result: Piece | None, stdout: Piece, stderr: Piece, error: tuple[str, str, Piece] | None, cap: int
) -> str:
    """e2b_code_interpreter's Execution text, at most about `cap` characters."""
    pieces = [result or Piece("", 0, quoted=False), stdout, stderr, error[2] if error else Piece("", 0)]
    name, value = (error[0], error[1]) if error else ("", "")
    frame = (
        "Execution(Results: [Result()], Logs: Logs(stdout: [], stderr: []), "
        "Error: ExecutionError(name=, value=, traceback=))"
    )
    budget = max(400, cap - len(frame) - len(repr(name)) - min(len(repr(value)), 2000))
    value = value if len(value) <= 2000 else value[:1950] + " [truncated]"
    result_text, out, err, trace = fit(pieces, budget)
    results = f"[Result({result_text})]" if result is not None else "[]"
    logs = f"Logs(stdout: {[out] if out else []}, stderr: {[err] if err else []})"
    failure = f"ExecutionError(name={name!r}, value={value!r}, traceback={trace!r})" if error else "None"
    return f"Execution(Results: {results}, Logs: {logs}, Error: {failure})"


# ------------------------------------------------------------------ guidance


def offline_note(texts: Iterable[str], enabled_servers: Sequence[str]) -> str | None:
    """For code that tried the network: say the sandbox is offline and which tools reach the web."""
    joined = "\n".join(texts)
    if any(sign in joined for sign in PIP_OFFLINE_SIGNS):
        return (
            f"{NOTE_PREFIX} The sandbox has no internet access, so pip cannot download packages. "
            "Use the packages that are already installed (`pip list` shows them)."
        )
    if not any(sign in joined for sign in OFFLINE_SIGNS):
        return None
    ways = [f"{tool} (server {server}) {purpose}" for server, tool, purpose in WEB_TOOLS if server in enabled_servers]
    ways.append("download_file_from_internet_to_sandbox (server tool-python) to put a file from a URL into the sandbox")
    return (
        f"{NOTE_PREFIX} The sandbox has no internet access: code and commands in it cannot reach the network "
        f"(no HTTP, DNS or downloads). Use the tools instead: {'; '.join(ways)}."
    )


def timeout_note(seconds: float, *, python: bool) -> str:
    if python:
        return (
            f"{NOTE_PREFIX} The code was stopped after {seconds:g} seconds, the sandbox's time limit for one call, "
            "and the Python process was restarted: the Python state was lost (variables, imports and functions "
            "from earlier calls are gone; files in /home/user remain). Re-run the imports you need, and split "
            "the work into smaller steps that each finish quickly (less data or fewer iterations per call, "
            "intermediate results saved to files)."
        )
    return (
        f"{NOTE_PREFIX} The command was stopped after {seconds:g} seconds, the sandbox's time limit for one call. "
        "Split the work into smaller steps that each finish quickly, and save intermediate results to files "
        "in /home/user."
    )


def state_lost_note(reason: str) -> str:
    return (
        f"{NOTE_PREFIX} The Python state of this sandbox was lost ({reason}): variables, imports and "
        "functions from earlier calls are gone; files in /home/user remain. The code below ran in a fresh "
        "Python process."
    )


def with_notes(text: str, notes: Iterable[str | None]) -> str:
    extra = [note for note in notes if note]
    return "\n\n".join([text, *extra]) if extra else text
