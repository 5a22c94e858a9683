"""What a backend request can fail with before or besides the backend's own answer, and how a failure reads
in one line (a backend's `last_error`, its health reason, `vmcp backends`)."""

from __future__ import annotations

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


def with_stderr_line(reason: str, line: str | None) -> str:
    """A stdio process's last stderr line beside the protocol's reason ("Connection closed" alone says nothing
    of a crash at start)."""
    return reason if line is None or line in reason else f"{reason}; its last stderr line: {shorten(line, 300)}"


def _innermost(exc: BaseException) -> BaseException:
    """The first exception inside task groups' exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
