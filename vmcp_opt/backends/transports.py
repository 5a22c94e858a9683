"""Open a backend's transport: stdio through our own client (backends/stdio.py, a bounded reader), streamable
HTTP and SSE through the official SDK's clients.

A stdio backend's stderr comes back through a pipe and is logged line by line (logger
`vmcp_opt.backends.stderr`) with the backend's secrets masked, control characters escaped, lines cut at
`STDERR_LINE_LIMIT`, rather than written straight to the gateway's own stderr. How many lines is bounded
twice: at most `STDERR_LINES_PER_SECOND` a second (a burst), and over time by `STDERR_BUDGET`: each backend
`STDERR_BURST` lines, then one a second, all backends together `STDERR_TOTAL_RATE` a second. The lines left
out are counted, and the counts of all backends logged in one line at most once a `STDERR_SUMMARY_SECONDS`
(the first a second after the first line left out); a backend's own count also when its process ends.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import httpx2
from mcp.client._transport import TransportStreams
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from vmcp_opt.backends.courtesy_cancels import cancels_without_waiting
from vmcp_opt.backends.credentials import BackendAuth
from vmcp_opt.backends.http_bodies import cap_json_bodies
from vmcp_opt.backends.open_answers import AnswerClient, CancelWatch, OpenAnswers
from vmcp_opt.backends.secrets import redact, secret_values
from vmcp_opt.backends.stdio import bounded_stdio_client, line_cap
from vmcp_opt.config import BackendConfig
from vmcp_opt.display import printable, shorten
from vmcp_opt.logs import LineBudget

stderr_logger = logging.getLogger("vmcp_opt.backends.stderr")
STDERR_LINE_LIMIT = 2000
STDERR_LINES_PER_SECOND = 50
# A backend writing without pause logged 50 lines a second (180,000 an hour): over time each backend gets its
# burst, then a line a second; all of them together a few a second. A crash's traceback fits in the burst.
STDERR_BURST = 100
STDERR_RATE = 1.0
STDERR_TOTAL_BURST = 500
STDERR_TOTAL_RATE = 5.0
STDERR_SUMMARY_SECONDS = 60.0
STDERR_BUDGET = LineBudget(
    burst=STDERR_BURST,
    rate=STDERR_RATE,
    total_burst=STDERR_TOTAL_BURST,
    total_rate=STDERR_TOTAL_RATE,
    interval=STDERR_SUMMARY_SECONDS,
)
STDERR_DRAIN_SECONDS = 1.0  # after the process is stopped, for its last lines (a crash's traceback)


def stdio_parameters(
    backend: BackendConfig, base_dir: Path, secret_env: dict[str, str] | None = None
) -> StdioServerParameters:
    """Resolve command and cwd against the config file's directory; put our interpreter's bin first on PATH.

    A config that says `command: python` then runs the interpreter the gateway itself runs on, with the
    demo backends installed beside it, whether or not the virtualenv is activated.
    """
    assert backend.command is not None
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join([bin_dir, backend.env.get("PATH", os.environ.get("PATH", ""))])
    command = backend.command
    if ("/" in command or command.startswith(".")) and not Path(command).is_absolute():
        command = str((base_dir / command).resolve())
    else:
        command = shutil.which(command, path=path) or command
    # Backends run in the config file's directory unless told otherwise, so relative args resolve there too.
    cwd = str((base_dir / (backend.cwd or ".")).resolve())
    return StdioServerParameters(
        command=command, args=backend.args, env={**backend.env, **(secret_env or {}), "PATH": path}, cwd=cwd
    )


class StderrTail:
    """The last line a stdio backend wrote to stderr (masked, cut), for the reason a session failed: a
    process that exits at start says why there ("No module named ..."), not in the protocol. Kept whether or
    not the line was logged, and made readable only when read: a flood costs no masking of lines left out.
    `exit_status`: the process's, if it exited by itself (a crash after its handshake ends the session with no
    error at all: only the status says how)."""

    def __init__(self) -> None:
        self._text: str | None = None
        self._raw: tuple[bytes, bool, list[str]] | None = None
        self.exit_status: int | None = None

    def exited(self, status: int) -> None:
        self.exit_status = status

    @property
    def line(self) -> str | None:
        if self._raw is not None:
            self._text, self._raw = shown_line(*self._raw).strip(), None
        return self._text

    @line.setter
    def line(self, value: str | None) -> None:
        self._text, self._raw = value, None

    def note(self, raw: bytes, cut: bool, secrets: list[str]) -> None:
        if raw.strip():
            self._raw = (raw, cut, secrets)


@asynccontextmanager
async def open_transport(
    backend: BackendConfig,
    base_dir: Path,
    connect_timeout: float,
    credentials: BackendAuth | None = None,
    *,
    max_result_bytes: int,
    stderr_tail: StderrTail | None = None,
) -> AsyncIterator[TransportStreams]:
    """`credentials`: a stdio process's secret environment, or what an HTTP session adds to each request.
    `max_result_bytes` bounds a stdio backend's lines (backends/stdio.py), and a streamable HTTP backend's
    JSON answers (backends/http_bodies.py) and SSE events; over SSE (the 2024 transport) the SDK caps an
    event at 1 MiB. `stderr_tail` keeps a stdio backend's last stderr line and exit status; complete once this exits."""
    if backend.transport == "stdio":
        secret_env = credentials.credentials.child_env() if credentials is not None else None
        tail = stderr_tail or StderrTail()
        async with (
            _stdio_with_masked_stderr(backend, base_dir, secret_env, max_result_bytes, tail) as stdio,
            cancels_without_waiting(stdio, backend.name) as streams,
        ):
            yield streams
    elif backend.transport == "streamable-http":
        assert backend.url is not None
        timeout = httpx2.Timeout(connect_timeout, read=None)
        cap = line_cap(max_result_bytes)  # a JSON answer's bytes, and one SSE event's
        hooks = {"response": [cap_json_bodies(backend.name, cap, secret_values(backend))]}
        # A request's POST stops when its call does (http_bodies.py, `OpenAnswers`), not when the backend ends it.
        answers = OpenAnswers()
        client = AnswerClient(
            headers=backend.headers,
            timeout=timeout,
            auth=credentials,
            event_hooks=hooks,
            backend=backend.name,
            answers=answers,
        )
        async with (
            client,
            streamable_http_client(backend.url, http_client=client, max_sse_event_size=cap) as http,
            cancels_without_waiting(http, backend.name) as (read, write),
        ):
            yield read, CancelWatch(write, answers)
    else:
        assert backend.url is not None
        async with (
            sse_client(backend.url, headers=backend.headers, timeout=connect_timeout, auth=credentials) as sse,
            cancels_without_waiting(sse, backend.name) as streams,
        ):
            yield streams


@asynccontextmanager
async def _stdio_with_masked_stderr(
    backend: BackendConfig,
    base_dir: Path,
    secret_env: dict[str, str] | None,
    max_result_bytes: int,
    tail: StderrTail,
) -> AsyncIterator[TransportStreams]:
    read_fd, write_fd = os.pipe()
    errlog = os.fdopen(write_fd, "w")
    try:
        async with anyio.create_task_group() as relay:
            secrets = sorted({*secret_values(backend), *(secret_env or {}).values()}, key=len, reverse=True)
            relay.start_soon(_relay_stderr, read_fd, _StderrLines(backend.name, secrets, tail))
            try:
                parameters = stdio_parameters(backend, base_dir, secret_env)
                async with bounded_stdio_client(
                    parameters, errlog, backend=backend.name, max_result_bytes=max_result_bytes, on_exit=tail.exited
                ) as streams:
                    errlog.close()  # the backend has its own copy: the pipe ends when the backend's does
                    yield streams
            finally:
                errlog.close()
                relay.cancel_scope.deadline = anyio.current_time() + STDERR_DRAIN_SECONDS
    finally:
        errlog.close()


async def _relay_stderr(fd: int, lines: _StderrLines) -> None:
    os.set_blocking(fd, False)
    try:
        while True:
            # While lines are being left out, wake each second to log their count when it is due, even if none follow.
            with anyio.move_on_after(1.0 if lines.dropping() else math.inf):
                await anyio.wait_readable(fd)
            lines.tick()
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            lines.feed(chunk)
    finally:
        lines.flush()
        with suppress(OSError):
            os.close(fd)


def shown_line(raw: bytes, cut: bool, secrets: list[str]) -> str:
    """A stderr line as logged: masked, escaped, cut at `STDERR_LINE_LIMIT`."""
    text = redact(raw.decode("utf-8", "replace").rstrip("\r"), secrets)
    if cut:  # its end is not read yet: only a lower bound of its length is known
        return printable(f"{text[:STDERR_LINE_LIMIT]}… (a line longer than {len(raw):,} bytes, cut)")
    return shorten(text, STDERR_LINE_LIMIT)


def log_dropped(counts: dict[str, int]) -> None:
    """One line for the stderr lines left out of the log, of every backend that had some."""
    each = "; ".join(f"backend {backend}: {count} more stderr lines not logged" for backend, count in counts.items())
    stderr_logger.warning(
        "%s (each backend logs %d lines at once, then %g a second; all together %g a second)",
        each,
        STDERR_BURST,
        STDERR_RATE,
        STDERR_TOTAL_RATE,
    )


class _StderrLines:
    """Bytes from a backend's stderr as log lines: masked, escaped, cut, and rate-limited (`budget`)."""

    def __init__(
        self, backend: str, secrets: list[str], tail: StderrTail | None = None, budget: LineBudget = STDERR_BUDGET
    ) -> None:
        self.backend = backend
        self.secrets = secrets
        self.tail = tail or StderrTail()
        self.budget = budget
        self.pending = b""
        self.skipping = False
        self.window = 0
        self.in_window = 0

    def feed(self, chunk: bytes) -> None:
        if self.skipping:  # the rest of a line too long to show (a piece of it could be a secret's tail)
            _, newline, chunk = chunk.partition(b"\n")
            if not newline:
                return
            self.skipping = False
        *complete, self.pending = (self.pending + chunk).split(b"\n")
        for line in complete:
            self.emit(line)
        if len(self.pending) > STDERR_LINE_LIMIT * 4:  # a line without end: show its start now, skip the rest
            self.emit(self.pending, cut=True)
            self.pending = b""
            self.skipping = True

    def flush(self) -> None:
        """The process ended: its last line, and its count of lines left out, now."""
        if self.pending:
            self.emit(self.pending)
            self.pending = b""
        if dropped := self.budget.take_dropped(self.backend):
            log_dropped({self.backend: dropped})

    def emit(self, raw: bytes, cut: bool = False) -> None:
        self.tail.note(raw, cut, self.secrets)
        second = int(time.monotonic())
        if second != self.window:
            self.window, self.in_window = second, 0
        self.in_window += 1
        if self.in_window > STDERR_LINES_PER_SECOND:
            self.budget.drop(self.backend)
            return
        if not self.budget.allow(self.backend):
            return
        stderr_logger.info("backend %s stderr: %s", self.backend, shown_line(raw, cut, self.secrets))

    def dropping(self) -> bool:
        return self.budget.pending(self.backend)

    def tick(self) -> None:
        """Time passed: the lines left out are counted in the log when a summary is due."""
        if (counts := self.budget.summary()) is not None:
            log_dropped(counts)
