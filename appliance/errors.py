"""Errors a user can meet: each one is typed, carries the fix, and maps to an exit code."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of every `appliance` entry point (see README)."""

    ANSWERED = 0
    NO_ANSWER = 1
    USAGE = 2
    UNAVAILABLE = 3
    # A bug in the appliance itself (EX_SOFTWARE from sysexits.h), never a mistake of the user's.
    INTERNAL = 70
    TIMEOUT = 124
    INTERRUPTED = 130


class ApplianceError(Exception):
    """An error with a one-line message and, where one exists, the fix."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.fix:
            text += f". Fix: {self.fix}"
        return " ".join(text.split())


class ConfigError(ApplianceError):
    """Bad flags, an unreadable profile or config file, an unknown backend."""

    exit_code = ExitCode.USAGE


class ComponentUnavailable(ApplianceError):
    """A required component (model, sandbox, search, server) cannot be used."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, component: str, message: str, fix: str | None = None) -> None:
        super().__init__(message, fix)
        self.component = component
