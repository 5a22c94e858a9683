"""Open a backend's transport: stdio through our own client (backends/stdio.py, a bounded reader), streamable
HTTP and SSE through the official SDK's clients.

A stdio backend's stderr comes back through a pipe and is logged line by line (logger
`vmcp_opt.backends.stderr`) with the backend's secrets masked, control characters escaped, lines cut at
`STDERR_LINE_LIMIT`, rather than written straight to the gateway's own stderr. How many lines is bounded
twice: at most `STDERR_LINES_PER_SECOND` a second (a burst), and over time by `STDERR_BUDGET`: each backend
`STDERR_BURST` lines, then one a second, all backends together `STDERR_TOTAL_RATE` a second. The lines left
out are counted, and the counts of all backends logged in one line at most once a `STDERR_SUMMARY_SECONDS`
(the first a second after the first line left out); a backend's own count also when its process ends.

A streamable HTTP backend's GET streams (its own messages; a request's answer resumed) are paced by
`PacedGetClient`: the SDK reconnects one whenever it ends, after the backend's `retry`, and never counts a
normal end as a failure.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp.client._transport import TransportStreams
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from vmcp_opt.backends.courtesy_cancels import cancels_without_waiting
from vmcp_opt.backends.credentials import BackendAuth
from vmcp_opt.backends.http_bodies import cap_json_bodies, mend_sse_streams
from vmcp_opt.backends.launch import stdio_launch
from vmcp_opt.backends.open_answers import AnswerClient, CancelWatch, OpenAnswers
from vmcp_opt.backends.secrets import redact, secret_values
from vmcp_opt.backends.stdio import bounded_stdio_client, line_cap
from vmcp_opt.backends.tls import client_context
from vmcp_opt.config import BackendConfig
from vmcp_opt.config.limits import DEFAULT_MAX_RESULT_VALUES
from vmcp_opt.display import printable, shorten
from vmcp_opt.logs import LineBudget

logger = logging.getLogger(__name__)
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
    """`stdio_launch` (backends/launch.py) as the SDK's parameters, which the stdio client takes."""
    launch = stdio_launch(backend, base_dir, secret_env)
    return StdioServerParameters(command=launch.command, args=launch.args, env=launch.env, cwd=launch.cwd)


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
    max_result_values: int = DEFAULT_MAX_RESULT_VALUES,
    stderr_tail: StderrTail | None = None,
) -> AsyncIterator[TransportStreams]:
    """`credentials`: a stdio process's secret environment, or what an HTTP session adds to each request.
    `max_result_bytes` bounds a stdio backend's lines (backends/stdio.py), and a streamable HTTP backend's
    JSON answers (backends/http_bodies.py) and SSE events; over SSE (the 2024 transport) the SDK caps an
    event at 1 MiB. `max_result_values` bounds the values of a stdio line and of a streamable HTTP backend's JSON
    answer and SSE event, listing pages apart (backends/results.py); the 2024 SSE transport's events are not counted. `stderr_tail` keeps a stdio backend's last stderr line and exit status; complete once this exits."""
    if backend.transport == "stdio":
        secret_env = credentials.credentials.child_env() if credentials is not None else None
        tail = stderr_tail or StderrTail()
        async with (
            _stdio_with_masked_stderr(
                backend, base_dir, secret_env, max_result_bytes, max_result_values, tail
            ) as stdio,
            cancels_without_waiting(stdio, backend.name) as streams,
        ):
            yield streams
    elif backend.transport == "streamable-http":
        assert backend.url is not None
        timeout = httpx2.Timeout(connect_timeout, read=None)
        cap = line_cap(max_result_bytes)  # a JSON answer's bytes, and one SSE event's
        hooks = {"response": [cap_json_bodies(backend.name, cap, secret_values(backend), max_result_values)]}
        # A request's POST stops when its call does (http_bodies.py, `OpenAnswers`), not when the backend ends it.
        answers = OpenAnswers()
        client = PacedGetClient(
            headers=backend.headers,
            timeout=timeout,
            auth=credentials,
            event_hooks=hooks,
            verify=await client_context(),  # made once, off the event loop (backends/tls.py)
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
        factory = _sse_client_factory(await client_context(), backend.name)
        async with (
            sse_client(
                backend.url,
                headers=backend.headers,
                timeout=connect_timeout,
                auth=credentials,
                httpx_client_factory=factory,
            ) as sse,
            cancels_without_waiting(sse, backend.name) as streams,
        ):
            yield streams


def _sse_client_factory(tls: ssl.SSLContext, backend: str) -> Callable[..., httpx2.AsyncClient]:
    """The SDK's client for the 2024 SSE transport, with the shared TLS context (it made one per client), its event
    stream's lone surrogates mended (http_bodies.py `mend_sse_streams`)."""
    hooks = {"response": [mend_sse_streams(backend)]}

    def make(
        headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None, auth: httpx2.Auth | None = None
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, verify=tls, event_hooks=hooks)

    return make


# A backend answering each GET with `retry: 0` and closing had the gateway send ~300 GETs a second, for good.
GET_SPACING = 1.0  # seconds between two GETs of one stream, always
GET_BACKOFF_LIMIT = 30.0  # the wait doubles up to this while the stream keeps ending at once
GET_STREAM_LIVED = 5.0  # a stream open this long, or that carried a message, was no failure
GET_BACKOFF_LOG_SECONDS = 60.0  # one log line per backend at most this often while backing off
_LINE_START = 64  # bytes of an SSE line kept across chunks: enough to see a `data:` field with something in it
_backoff_logged: dict[str, float] = {}  # backend name -> when its backing off was last logged


class _GetStream:
    """The reconnections of one GET stream of a session: when its next GET may go, and how long to wait after
    another that ends at once, empty."""

    def __init__(self, owner: PacedGetClient) -> None:
        self.owner = owner
        self.next_at = -math.inf
        self.delay = 0.0
        self.quick_ends = 0

    def ended(self, started: float, carried: bool) -> None:
        now = anyio.current_time()
        if carried or now - started >= GET_STREAM_LIVED:
            self.delay, self.quick_ends = 0.0, 0
            self.next_at = started + GET_SPACING
            return
        self.quick_ends += 1
        self.delay = min(max(self.delay * 2, GET_SPACING), GET_BACKOFF_LIMIT)
        self.next_at = now + self.delay
        if self.quick_ends > 1:
            _log_backoff(self.owner.backend, self.quick_ends, self.delay)


# The GET stream of the task running: the SDK sends each stream's GETs from one task (its GET stream loop, or
# the task of the request whose answer it resumes), and a new task starts with no stream of this client.
_current_get_stream: ContextVar[_GetStream | None] = ContextVar("vmcp_current_get_stream", default=None)


def _log_backoff(backend: str, quick_ends: int, delay: float) -> None:
    now = time.monotonic()
    if now - _backoff_logged.get(backend, -math.inf) < GET_BACKOFF_LOG_SECONDS:
        return
    if len(_backoff_logged) > 1000:  # names of backends long gone
        _backoff_logged.clear()
    _backoff_logged[backend] = now
    logger.warning(
        "backend %s: its GET stream ended at once, empty, %d times in a row; the next GET in %.0f s "
        "(the wait doubles up to %.0f s while this goes on)",
        backend,
        quick_ends,
        delay,
        GET_BACKOFF_LIMIT,
    )


class PacedGetClient(AnswerClient):
    """A backend session's HTTP client whose GETs of one stream go at least `GET_SPACING` apart, further while
    the stream keeps ending at once with no message (up to `GET_BACKOFF_LIMIT`). POSTs are not delayed."""

    async def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        if request.method != "GET":
            return await super().send(request, **kwargs)
        stream = _current_get_stream.get()
        if stream is None or stream.owner is not self:
            stream = _GetStream(self)
            _current_get_stream.set(stream)
        await anyio.sleep_until(stream.next_at)
        started = anyio.current_time()
        try:
            response = await super().send(request, **kwargs)
        except Exception:
            stream.ended(started, carried=False)
            raise
        if isinstance(response.stream, httpx2.AsyncByteStream) and not response.is_closed:
            response.stream = _WatchedGetBody(response.stream, lambda carried: stream.ended(started, carried))
        else:
            stream.ended(started, carried=False)
        return response


class _WatchedGetBody(httpx2.AsyncByteStream):
    """A GET stream's body that tells `on_end`, when closed, whether it carried a message."""

    def __init__(self, inner: httpx2.AsyncByteStream, on_end: Callable[[bool], None]) -> None:
        self._inner = inner
        self._on_end: Callable[[bool], None] | None = on_end
        self._line = b""  # the start of the line being read
        self._carried = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            if not self._carried:
                self._carried = self._carries_message(chunk)
            yield chunk

    def _carries_message(self, chunk: bytes) -> bool:
        """Whether a line so far is a `data` field with something in it (a priming event's is empty)."""
        *complete, partial = (self._line + chunk).replace(b"\r", b"\n").split(b"\n")
        self._line = partial[:_LINE_START]
        return any(_is_data(line) for line in (*complete, self._line))

    async def aclose(self) -> None:
        if self._on_end is not None:
            self._on_end(self._carried)
            self._on_end = None
        await self._inner.aclose()


def _is_data(line: bytes) -> bool:
    return line.startswith(b"data:") and bool(line[5:].strip())


@asynccontextmanager
async def _stdio_with_masked_stderr(
    backend: BackendConfig,
    base_dir: Path,
    secret_env: dict[str, str] | None,
    max_result_bytes: int,
    max_result_values: int,
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
                    parameters,
                    errlog,
                    backend=backend.name,
                    max_result_bytes=max_result_bytes,
                    max_result_values=max_result_values,
                    on_exit=tail.exited,
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
