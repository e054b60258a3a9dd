"""Errors the CLI prints as one plain line, with the exit status they map to (see README: exit codes)."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # the command failed; the message says why and what to do
    USAGE = 2  # wrong arguments
    NOT_FOUND = 3  # a model, file or server that is not there
    CHECK_FAILED = 4  # doctor found a problem
    INTERRUPTED = 130


class CliError(Exception):
    """Printed as ``pensieve: <message>`` on stderr; exits with ``status``."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
