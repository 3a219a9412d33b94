"""The two rules every layer must read the same way: where a run stands, and what is a secret.

Run status: a run is finished (answered, no_answer), resumable (interrupted,
error, or `running` with its process gone) or live (`running` in a process
that is still there). The store, the TUI's filters, eval and the CLI ask here.

Secrets: one function, `redact`, turns settings into what may be shown or
recorded, and says which values it hid. A recorded run keeps that list, so a
resume restores every recorded value except exactly those (it never guesses
from the "***" marker: a `base_url` with a harmless query parameter resumes
with it, and a secret still never reaches the database).
"""

from __future__ import annotations

import enum
import os
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- run status


class Standing(enum.Enum):
    FINISHED = "finished"
    RESUMABLE = "resumable"
    LIVE = "live"


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    ANSWERED = "answered"
    NO_ANSWER = "no_answer"
    ERROR = "error"
    INTERRUPTED = "interrupted"

    @classmethod
    def of(cls, status: str) -> RunStatus:
        """The status of a recorded or finished run; an unknown one (a newer version wrote it) counts as an error."""
        try:
            return cls(status)
        except ValueError:
            return cls.ERROR

    @property
    def standing(self) -> Standing:
        """Where a run with this status stands, when its owner is alive (see `standing`)."""
        if self is RunStatus.RUNNING:
            return Standing.LIVE
        if self in (RunStatus.ANSWERED, RunStatus.NO_ANSWER):
            return Standing.FINISHED
        return Standing.RESUMABLE

    @property
    def resumable(self) -> bool:
        return self.standing is Standing.RESUMABLE


STATUSES: tuple[str, ...] = tuple(status.value for status in RunStatus)
# The recorded statuses `appliance resume` continues without asking about an owner.
RESUMABLE: tuple[str, ...] = tuple(status.value for status in RunStatus if status.resumable)


def standing(status: str, pid: int | None, start: str | None, host: str | None) -> Standing:
    """Where a recorded run stands: a `running` run whose process is gone is resumable."""
    state = RunStatus.of(status)
    if state is RunStatus.RUNNING and not owner_alive(pid, start, host):
        return Standing.RESUMABLE
    return state.standing


def host_name() -> str:
    return socket.gethostname()


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def process_start(pid: int) -> str | None:
    """A token that tells this process apart from a later one that reuses its pid."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def process_alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: the pid exists, trust it
    state, started = stat
    if state in ("Z", "X"):
        return False
    return start is None or started == start


def owner_alive(pid: int | None, start: str | None, host: str | None) -> bool:
    """Whether the process recorded as running a run still runs it (a run on another host is assumed alive)."""
    if host and host != host_name():
        return True
    return process_alive(pid, start)


# ---------------------------------------------------------------- secrets

MASK = "***"
# Names that hold credentials ("api_key", "judge_api_key", "hf_token", "X-Api-Key",
# "Authorization"), not "max_tokens". Shared by settings, the history and the web archive.
SECRET_NAME = re.compile(
    r"^(?:.*[_-])?(?:api[_-]?key|key|token|access[_-]?token|secret|password|passwd|authorization|credentials?)$",
    re.IGNORECASE,
)
# Tables whose every value may be a credential: an MCP server's environment and HTTP headers.
_OPAQUE_TABLES = frozenset({"env", "headers"})
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_URL_SECRET_PARAM = re.compile(
    r"([?&](?:api[_-]?key|key|token|access_token|secret|password|sig|signature)=)[^&#\s]+", re.IGNORECASE
)


@dataclass(frozen=True)
class Redacted:
    value: Any
    # Dotted paths ("model.api_key", "mcp_servers.wiki.env.TOKEN") whose values were hidden.
    paths: tuple[str, ...]


def redact_url(url: str) -> str:
    """A URL without its credentials: the user and password, and the values of key/token/secret parameters."""
    return _URL_SECRET_PARAM.sub(rf"\1{MASK}", _URL_USERINFO.sub(f"{MASK}@", url))


def redact(value: Any) -> Redacted:
    """`value` (settings as plain data) with every credential replaced by ***, and where they were."""
    paths: list[str] = []
    cleaned = _redact(value, "", opaque=False, found=paths)
    return Redacted(cleaned, tuple(paths))


def _redact(value: Any, path: str, *, opaque: bool, found: list[str]) -> Any:
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            secret = opaque or (isinstance(key, str) and SECRET_NAME.match(key) is not None)
            if secret and item not in ("", None) and not isinstance(item, Mapping):
                out[key] = MASK
                found.append(where)
            else:
                out[key] = _redact(item, where, opaque=key in _OPAQUE_TABLES, found=found)
        return out
    if isinstance(value, (list, tuple)):
        return [_redact(item, f"{path}.{i}", opaque=opaque, found=found) for i, item in enumerate(value)]
    if isinstance(value, str) and "://" in value:
        hidden = redact_url(value)
        if hidden != value:
            found.append(path)
        return hidden
    return value


def redacted_snapshot(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as a run records them: redacted, with the paths hidden under "redacted".

    Applying it again changes nothing, so the recorder applies it to whatever it
    is given (defence in depth: no caller can forget).
    """
    hidden = redact({k: v for k, v in settings.items() if k != "redacted"})
    earlier = settings.get("redacted")
    paths = {*hidden.paths, *(str(p) for p in earlier)} if isinstance(earlier, list) else set(hidden.paths)
    return {**hidden.value, "redacted": sorted(paths)}


def redacted_paths(snapshot: Mapping[str, Any]) -> frozenset[str]:
    """The paths a recorded settings snapshot hid, from its own list.

    A run recorded before the list existed has only the marker to go by: its
    paths are those whose value shows ***.
    """
    recorded = snapshot.get("redacted")
    if isinstance(recorded, list):
        return frozenset(str(p) for p in recorded)
    return frozenset(_masked(snapshot, ""))


def _masked(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _masked(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, str) and MASK in value:
        yield path
