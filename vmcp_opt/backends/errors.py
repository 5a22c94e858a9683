"""What a backend request can fail with before or besides the backend's own answer, and how a failure reads
in one line (a backend's `last_error`, its health reason, `vmcp backends`)."""

from __future__ import annotations

import re
from pathlib import Path

from mcp.shared.exceptions import MCPError

from vmcp_opt.display import shorten


class BackendUnavailable(Exception):
    """The backend cannot take requests now; the message names it and says why."""


class CredentialError(BackendUnavailable):
    """The gateway could not authenticate to a backend: the message names the backend and the failing step
    (token endpoint refused, exchange refused, backend refused the token), never a token or secret."""

    def __init__(self, backend: str, step: str, reason: str) -> None:
        super().__init__(f"backend '{backend}': {step}: {reason}")
        self.backend = backend
        self.step = step


def describe_error(exc: BaseException) -> str:
    """A one-line reason, unwrapping exception groups from task groups."""
    exc = _innermost(exc)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, MCPError | BackendUnavailable) else text


def failure_reason(exc: BaseException, command: str | None) -> str:
    """Why a session failed; a stdio `command` that does not exist says so plainly."""
    missing = _innermost(exc)
    if isinstance(missing, FileNotFoundError) and command and missing.filename:
        if missing.filename == command:  # a bare name: looked up on PATH
            return f"command not found on PATH: {command!r}"
        if Path(str(missing.filename)).name == Path(command).name:  # a path, resolved from the config's directory
            return f"command not found: {missing.filename}"
    return describe_error(exc)


STDERR_LINE_SHOWN = 300  # characters of the last stderr line a reason shows
# How the stderr relay marks a line it already cut (backends/transports.py, display.shorten): its length there
# is the true one (or a lower bound), which a second cut must keep rather than count the cut text's length.
_CUT_MARK = re.compile(r"… \((?:a line longer than [\d,]+ bytes, cut|[\d,]+ characters)\)\Z")


def with_stderr_line(reason: str, line: str | None) -> str:
    """A stdio process's last stderr line beside the protocol's reason ("Connection closed" alone says nothing
    of a crash at start)."""
    return reason if line is None or line in reason else f"{reason}; its last stderr line: {_cut(line)}"


def _cut(line: str) -> str:
    if len(line) <= STDERR_LINE_SHOWN:
        return line
    mark = _CUT_MARK.search(line)
    if mark is None:
        return shorten(line, STDERR_LINE_SHOWN)
    return line[: min(STDERR_LINE_SHOWN, mark.start())] + mark.group()


def _innermost(exc: BaseException) -> BaseException:
    """The first exception inside task groups' exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
