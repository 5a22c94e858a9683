"""What a backend request can fail with before or besides the backend's own answer, and how a failure reads
in one line (a backend's `last_error`, its health reason, `vmcp backends`)."""

from __future__ import annotations

import errno
import os
import re
import signal
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from vmcp_opt.backends.secrets import redact
from vmcp_opt.display import printable, shorten
from vmcp_opt.logs import masked_userinfo


class BackendUnavailable(Exception):
    """The backend cannot take requests now; the message names it and says why."""


class NotReady(BackendUnavailable):
    """A request for a backend that is not ready. Its client is told the state; `detail` adds the backend's last
    error (exception text, its last stderr line: hosts, paths, DSNs) for the log, the breaker and /readyz, which
    read it through `describe_error`."""

    def __init__(self, backend: str, state: str, last_error: str | None) -> None:
        super().__init__(f"backend '{backend}' is {state}")
        self.detail = f"{self}: {last_error}" if last_error else str(self)


class CredentialError(BackendUnavailable):
    """The gateway could not authenticate to a backend: the message names the backend and the failing step
    (token endpoint refused, exchange refused, backend refused the token), never a token or secret."""

    def __init__(self, backend: str, step: str, reason: str) -> None:
        super().__init__(f"backend '{backend}': {step}: {reason}")
        self.backend = backend
        self.step = step


class ProcessExited(BackendUnavailable):
    """A stdio backend's process exited before the session ended: the reason says with what status."""

    def __init__(self, returncode: int) -> None:
        if returncode < 0:
            try:
                how = f"was killed by signal {-returncode} ({signal.Signals(-returncode).name})"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with code {returncode}"
        super().__init__(f"the process {how}")
        self.returncode = returncode


def launch_failure(exc: OSError, command: str, cwd: str | Path | None) -> OSError | BackendUnavailable:
    """Why a stdio backend could not be started, naming the setting at fault. A missing command stays a
    `FileNotFoundError`, which `failure_reason` words."""
    if cwd is not None and exc.filename is not None and str(exc.filename) == str(cwd):
        what = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be entered ({exc.strerror})"
        return BackendUnavailable(f"its cwd {cwd} {what}")
    if exc.filename != command:
        return exc
    if isinstance(exc, PermissionError):
        return BackendUnavailable(
            f"command is not executable: {command} (chmod +x it, or run it with its interpreter: "
            "command: python, args: [it])"
        )
    if exc.errno == errno.ENOEXEC:
        return BackendUnavailable(f"command is not a program this system can run: {command} (a script needs a #! line)")
    return exc


def connection_closed(exc: BaseException) -> bool:
    """Whether `exc` is (or wraps, in task groups) the SDK's "Connection closed": the read stream ended."""
    inner = _innermost(exc)
    return isinstance(inner, MCPError) and inner.code == types.CONNECTION_CLOSED


REASON_SHOWN = 1000  # characters of a failure's reason kept (its last_error, health reason, logs)
# pydantic's validation errors end each item with a line pointing at its docs: noise in a one-line reason.
_DOCS_LINE = "For further information visit"


def describe_error(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """A one-line reason of at most about `REASON_SHOWN` characters, with `secrets` and any URL's credentials
    (`://user:password@`) masked, unwrapping exception groups from task groups. One line and bounded: the text can
    be a backend's (an error message of megabytes, full of newlines), and it is logged at every reconnection
    attempt and kept in `/readyz`. An error whose client is told less (`NotReady`, `ProcessLost`) says its
    `detail` here."""
    exc = _innermost(exc)
    text = (exc.detail if isinstance(exc, NotReady | ProcessLost) else str(exc)) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}" if not isinstance(exc, MCPError | BackendUnavailable) else text
    return one_line(masked_userinfo(redact(unquoted(text), secrets)))


def one_line(text: str, limit: int = REASON_SHOWN) -> str:
    """`text`'s lines joined with "; " and cut at `limit` characters (the cut says the whole's length)."""
    head = text[: limit * 2]  # what a cut can keep, before splitting: the whole may be megabytes
    lines = (line.strip() for line in head.splitlines())
    joined = "; ".join(line for line in lines if line and not line.startswith(_DOCS_LINE))
    if len(head) < len(text) or len(joined) > limit:
        return printable(f"{joined[:limit]}… ({len(text):,} characters)")
    return printable(joined)


def failure_reason(exc: BaseException, command: str | None, secrets: Iterable[str] = ()) -> str:
    """Why a session failed; a stdio `command` that does not exist says so plainly, and a certificate no trusted
    CA signed says how to trust its CA."""
    missing = _innermost(exc)
    if isinstance(missing, FileNotFoundError) and command and missing.filename:
        if missing.filename == command and "/" not in command:  # a bare name: looked up on PATH
            return f"command not found on PATH: {command!r}"
        if Path(str(missing.filename)).name == Path(command).name:  # a path, resolved from the config's directory
            return f"command not found: {missing.filename}"
    reason = describe_error(exc, secrets)
    if command is None and (unusable := _unusable_ca_bundle(missing)) is not None:
        return f"{unusable}: {reason}"
    return f"{reason}; {TRUST_HINT}" if _UNKNOWN_ISSUER.search(reason) else reason


def _unusable_ca_bundle(exc: BaseException) -> str | None:
    """The file SSL_CERT_FILE names, when httpx could not load it: every HTTPS connection then fails with an error
    that names neither the variable nor the file ("[Errno 2] No such file or directory"). Read at each connection
    attempt, as httpx reads it."""
    bundle = os.environ.get("SSL_CERT_FILE")
    if not bundle:
        return None
    if isinstance(exc, FileNotFoundError) and exc.filename is None:  # a missing command names its file
        return f"SSL_CERT_FILE names a file that does not exist ({bundle})"
    if isinstance(exc, ssl.SSLError):  # a failed handshake is httpx's ConnectError: this is the loading
        return f"SSL_CERT_FILE names a file that holds no usable PEM certificate ({bundle})"
    return None


# OpenSSL's words for a chain that ends at no trusted CA (a self-signed certificate, a private CA's): not for an
# expired certificate or a name mismatch, which no trust store fixes.
_UNKNOWN_ISSUER = re.compile(
    r"CERTIFICATE_VERIFY_FAILED.*(?:self[- ]signed certificate|unable to get (?:local )?issuer certificate)"
)
# httpx (every HTTP backend, SSE too) reads SSL_CERT_FILE (unset: SSL_CERT_DIR) for each client it makes; the
# file replaces the default CAs rather than adding to them.
TRUST_HINT = (
    "to trust a private CA or a self-signed certificate, point SSL_CERT_FILE at a PEM bundle holding it (with "
    "the public CAs, if other HTTPS backends need them) and restart the gateway"
)


STDERR_LINE_SHOWN = 300  # characters of the last stderr line a reason shows
# How the stderr relay marks a line it already cut (backends/transports.py, display.shorten): its length there
# is the true one (or a lower bound), which a second cut must keep rather than count the cut text's length.
_CUT_MARK = re.compile(r"… \((?:a line longer than [\d,]+ bytes, cut|[\d,]+ characters)\)\Z")


def with_stderr_line(reason: str, line: str | None) -> str:
    """A stdio process's last stderr line beside the protocol's reason ("Connection closed" alone says nothing
    of a crash at start), with any URL's `user:password@` masked (a DSN the process failed to reach)."""
    if line is None:
        return reason
    line = masked_userinfo(line)
    return reason if line in reason else f"{reason}; its last stderr line: {_cut(line)}"


class ProcessLost(MCPError):
    """A call's "Connection closed" when its stdio process exited. The client is told the exit status (`message`);
    the breaker, the log and /readyz also its last stderr line (`detail`, which `describe_error` says): a process's
    last words name hosts, paths and DSNs."""

    def __init__(self, code: int, message: str, data: Any = None, detail: str = "") -> None:
        super().__init__(code, message, data)
        self.detail = detail or message


def closed_by_exit(exc: MCPError, status: int | None, stderr_line: str | None, secrets: Iterable[str] = ()) -> MCPError:
    """A stdio backend's "Connection closed" with why: for its client the status its process exited with; for the
    breaker, the log and /readyz also its last stderr line (masked where it was read; masked again with
    `secrets`), as its `last_error` says them. `exc` as it is when no exit status is known (the process was
    stopped, or its exit not seen yet)."""
    if status is None:
        return exc
    secrets = list(secrets)  # masks two texts
    told = f"{exc.error.message}: {ProcessExited(status)}"
    detail = with_stderr_line(told, stderr_line)
    message, detail = (one_line(masked_userinfo(redact(text, secrets))) for text in (told, detail))
    return ProcessLost(exc.error.code, message, exc.error.data, detail)


# Seconds a call that lost its stdio backend ("Connection closed") waits for the process's exit to be seen: the
# request fails a moment before the transport sees the exit, and only then is its status known.
EXIT_WAIT = 0.5


class ExitTail(Protocol):
    """What is known of a stdio backend's process once its session ended (backends/transports.py, `StderrTail`)."""

    @property
    def exit_status(self) -> int | None: ...

    @property
    def line(self) -> str | None: ...


async def closed_by_exit_when_seen(
    exc: MCPError, tail: ExitTail, ended: anyio.Event, secrets: Iterable[str] = ()
) -> MCPError:
    """`closed_by_exit` once the session's transport has ended (`ended`: the exit status and the last stderr line
    are known then), waiting at most `EXIT_WAIT` seconds for it; for every session on a stdio process, the shared
    one (backends/connection.py) and a client's own (backends/session_pool.py) alike."""
    with anyio.move_on_after(EXIT_WAIT):
        await ended.wait()
    return closed_by_exit(exc, tail.exit_status, tail.line, secrets)


def _cut(line: str) -> str:
    if len(line) <= STDERR_LINE_SHOWN:
        return line
    mark = _CUT_MARK.search(line)
    if mark is None:
        return shorten(line, STDERR_LINE_SHOWN)
    return line[: min(STDERR_LINE_SHOWN, mark.start())] + mark.group()


# The data of the JSON-RPC error an HTTP backend's error status becomes (backends/http_bodies.py).
HTTP_STATUS = "http_status"
# The data of `invalid_result`'s error, which says the backend's answer failed validation.
INVALID_RESULT = "invalid_result"
# How the message of an answer refused for its size ends (backends/http_bodies.py, `BodyTooLarge`).
NOT_READ = "the answer was not read further"
# The SDK's message for an HTTP answer it could not parse; pydantic's text after it quotes the body's start.
SDK_PARSE_PREFIX = "Failed to parse JSON response: "
UNQUOTED_PARSE_ERROR = SDK_PARSE_PREFIX + "the body is not JSON-RPC (not shown: it may echo anything)"


def unquoted(message: str) -> str:
    """`message` without the body the SDK's parse error quotes (a debug page echoing the gateway's credential,
    say): in a call's error, the log and `/readyz` alike. Our own reasons (`backend '...'`) pass as they are."""
    at = message.find(SDK_PARSE_PREFIX)
    if at < 0:
        return message
    rest = message[at + len(SDK_PARSE_PREFIX) :]
    if rest.startswith("backend '") or rest.endswith(NOT_READ):
        return message
    return message[:at] + UNQUOTED_PARSE_ERROR


# The data of the error an answer cut off for its size while it arrived becomes (backends/stdio.py, `_refusal`;
# backends/http_bodies.py, `as_internal_error`): a tools/call makes it an error result (routing/router.py).
OVER_RESULT_CAP = "over_max_result_bytes"
_UNEXPECTED_TYPE = "Unexpected content type:"  # the SDK's, for a POST answered with neither JSON nor SSE


def broken_answer(exc: MCPError) -> bool:
    """Whether `exc` stands for an answer the backend failed to give, rather than an error it answered with:
    one that does not parse (-32700: the stdio reader's and the SDK's over HTTP, JSON and SSE alike), an HTTP
    server error (5xx), a body of another type than JSON or SSE. The circuit breaker counts these as failures:
    a backend that answers only garbage is as unusable as one that does not answer.

    An answer over `limits.max_result_bytes` is not one. The size is the tool's output for those arguments (a
    big file, a long query), the gateway's policy, not the backend's health: it answered, in time, correctly;
    counting it would open the circuit for every caller and every tool of the backend because one caller asked
    for too much, and the cap already bounds what such an answer costs."""
    message = exc.error.message
    if exc.code == types.PARSE_ERROR:
        return not message.endswith(NOT_READ)
    if exc.code == types.INVALID_REQUEST and message.startswith(_UNEXPECTED_TYPE):
        return True
    data = exc.error.data
    status = data.get(HTTP_STATUS) if isinstance(data, dict) else None
    return isinstance(status, int) and status >= 500


def naming_backend(backend: str, exc: MCPError) -> MCPError:
    """`exc` with its message naming the backend, once (the SDK's "Failed to parse JSON response: ..." does not)."""
    if f"backend '{backend}'" in exc.error.message:
        return exc
    error = exc.error.model_copy(update={"message": one_line(f"backend '{backend}': {exc.error.message}")})
    return MCPError.from_error_data(error)


def invalid_result(backend: str, exc: ValidationError, secrets: Iterable[str] = ()) -> MCPError:
    """A result that fails the SDK's validation, as the caller's error: the SDK's own exception became -32602
    "Invalid request parameters" at the client, which blamed the client's arguments."""
    reason = describe_error(exc, secrets).removeprefix("ValidationError: ")
    message = f"backend '{backend}' answered with an invalid result: {reason}"
    return MCPError(types.INTERNAL_ERROR, message, {INVALID_RESULT: True})


def over_result_cap(exc: MCPError) -> bool:
    """Whether `exc` stands for an answer cut off while it arrived for passing `limits.max_result_bytes`: the
    transport refused it before it was parsed (a parsed one is measured by backends/results.py instead)."""
    data = exc.error.data
    return exc.code == types.INTERNAL_ERROR and isinstance(data, dict) and data.get(OVER_RESULT_CAP) is True


def failed_to_answer(exc: MCPError) -> bool:
    """`broken_answer`, or a result that failed validation (`invalid_result`): no usable answer came."""
    data = exc.error.data
    return broken_answer(exc) or (isinstance(data, dict) and data.get(INVALID_RESULT) is True)


def _innermost(exc: BaseException) -> BaseException:
    """The first exception inside task groups' exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
