"""A stdio backend's transport: the SDK's `stdio_client` contract, with a reader that a backend cannot stall.

Why not the SDK's reader: it joins each chunk onto the pending text and splits the whole again (quadratic
in a long line: a 50 MB result cost ~17 s of CPU on the event loop), keeps a line of any length, and
parses every line on the event loop. Here
- lines are assembled from byte chunks joined once, at their newline (`LineAssembler`);
- a line longer than `line_cap` is read through and dropped, keeping only its first and last `EDGE`
  bytes; if those show it is a response (the SDK's servers write `id` first, the TypeScript SDK's last),
  the waiting request gets a JSON-RPC error naming the backend and the cap (with `id` first, as soon as the cap
  is passed: a backend dripping a line that never ends held the call ~45 s), otherwise that
  request ends by its timeout; either way one warning; so is a line that is not valid JSON-RPC (its text is
  never logged nor handed to the session, whose handler would log it); past `WARNED_LINES` such lines a process's
  warnings become one a minute counting the rest (`LineWarnings`), so a backend writing garbage as fast as it can
  costs the log a line a minute, not one (or, through the session's handler, dozens) a line; past
  `UNUSABLE_RATE` such lines a second for `UNUSABLE_SECONDS` the process is broken (`UnusableLines`): one warning,
  its session ends with a `BrokenOutput` (the shared one's process is restarted, a client's own session ends and its
  calls are told why: backends/inbound.py `CountedReadStream` hands it on for both). The event loop gets a turn every
  `LINES_PER_TURN` lines: a pipe that always has data never made the reader wait;
- a line with more values than `limits.max_result_values` (counted at C speed chunk by chunk as it arrives:
  backends/results.py, `ValueCounter`; a second pass over a whole 10 MB line held the event loop 200-350 ms) is not
  parsed: parsing and validating it would hold the event loop, even from a worker thread (pydantic and `json` hold
  the GIL). An answer gets a JSON-RPC error naming the backend, the count and the setting, marked as over the result
  cap (not the backend failing); a notification or request is dropped with a warning. An answer to a listing
  (whose ids the writer notes: `ListingIds`) is held to a listing page's budget instead (`page_values`): its items
  are bounded by the listing's own budgets (backends/listing.py), and a page past it ends its list as an
  over-long page does;
- a line over `PARSE_INLINE_BYTES` is parsed in a worker thread, and one over `PARSE_STDLIB_BYTES` by the
  stdlib's JSON parser, then validated;
- a line within `limits.max_result_bytes` bytes carries a result within it (decoding only shrinks JSON text), so
  only an answer between that and `line_cap` has its result measured (backends/results.py), in the worker thread
  that parsed it; past the cap it becomes the same error. What this transport passes on is within the cap
  (`measures_results`): the connection does not measure it again on the event loop.
Kept from the SDK: the `(read_stream, write_stream)` pair of `SessionMessage | Exception` the SDK's
`ClientSession` consumes, the inherited environment (`get_default_environment`), the process in a session
of its own, and the shutdown of its whole process group (close stdin, wait, SIGTERM, SIGKILL), every
wait bounded and shielded. What a backend leaves behind (its group, descendants that left it, adopted orphans, their
zombies; and the pdeathsig launcher) is backends/leftover_processes.py's, called at the spawn and by `_stop`. A
backend that exits while a process it started holds its stdout open is seen by its exit (`_watch_exit`), not only
by its stdout's end. On Windows the SDK's client runs instead (its Job Objects); there only the result check
(`backends/results.py`) bounds a result.

Past ~450 lines on purpose: the reader, the writer and the shutdown share one process and what was seen of it
(its stdout's end, its exit, its stray descendants); apart, each would need the others' state passed around.
What outlives a backend is backends/leftover_processes.py; the line handling (`LineAssembler` to `LineWarnings`,
pure, no process state) is the seam to split next if this grows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import TextIO

import anyio
import anyio.lowlevel
import anyio.to_thread
import mcp_types as types
from anyio.abc import AsyncResource, ByteReceiveStream, Process
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client._transport import TransportStreams
from mcp.client.stdio import StdioServerParameters, get_default_environment, stdio_client
from mcp.shared.message import SessionMessage

from vmcp_opt.backends.errors import OVER_RESULT_CAP, ProcessExited, connection_closed, launch_failure
from vmcp_opt.backends.leftover_processes import (
    MARK_VARIABLE,
    REAP_SECONDS,
    SPAWNS,
    adopt_orphans,
    end_group,
    end_left_behind,
    end_processes,
    group_may_be_ours,
    killed_with_gateway,
    outside_group,
)
from vmcp_opt.backends.lone_surrogates import note_line
from vmcp_opt.backends.results import ListingIds, ValueCounter, json_size, page_values, too_many_values
from vmcp_opt.config.limits import DEFAULT_MAX_RESULT_VALUES

logger = logging.getLogger(__name__)

CHUNK_BYTES = 65536
EDGE = 4096  # what is kept of each end of a dropped line, to find its id
PARSE_INLINE_BYTES = 256 * 1024  # longer lines are parsed off the event loop
# Longer lines are parsed by `json.loads`, then validated: three times faster than pydantic's JSON parser for the
# `Any`-typed result of a big answer (3.9 MB, 10k tools: ~50 against ~150 ms, all of it holding the GIL,
# so the event loop waits for it even from a worker thread).
PARSE_STDLIB_BYTES = 8 * 1024
EXIT_GRACE_SECONDS = 2.0  # for the backend to exit by itself once its stdin is closed
FLUSH_SECONDS = 0.5  # for messages already accepted to reach stdin at shutdown
EXIT_SEEN_SECONDS = 0.5  # for the exit of a backend whose stdout ended to be seen, for its exit status
EXITED_READ_SECONDS = 0.5  # after the backend's exit, for what it wrote to be read while another holds its stdout
EXIT_POLL_SECONDS = 0.25  # where there is no pidfd to wait on: how often a backend's exit is looked for
WARNED_LINES = 10  # unusable stdout lines of one process warned one by one; past them, one warning a minute
WARNING_INTERVAL = 60.0
# Lines handled between two turns given to the rest of the event loop: the pipe's `receive` does not yield while
# it has data, and a backend writing junk at full speed held the loop ~43 ms a 64 KiB chunk (a healthy backend's
# calls, p50 4.7 -> 353 ms); a turn every 64 lines brought them to 25-33 ms (one a chunk did not help).
LINES_PER_TURN = 64
# A process writing more unusable lines (not JSON-RPC, blank) than this a second, second after second, for
# `UNUSABLE_SECONDS` is broken, not chatty: each line still costs the loop ~20 us, and a server that prints its
# logs to stdout corrupts the protocol anyway. Its session ends and the connection restarts it (with backoff).
UNUSABLE_RATE = 1000
UNUSABLE_SECONDS = 10.0


def measures_results(transport: str) -> bool:
    """Whether a backend's transport passes on only results within `limits.max_result_bytes` (this reader, not the
    SDK's Windows one), so that the connection need not measure them again."""
    return transport == "stdio" and sys.platform != "win32"


def line_cap(max_result_bytes: int) -> int:
    """The longest line read from a stdio backend: the result cap plus room for the JSON-RPC envelope,
    escapes and multi-byte characters (the result cap counts characters; the line is bytes)."""
    return max_result_bytes + max(max_result_bytes // 4, 1024 * 1024)


@dataclass(frozen=True)
class DroppedLine:
    """A line past the cap: its length and its two ends. `coming`: handed out as soon as the cap was passed, the
    line still coming (its head shows the answer it is, `_ID_FIRST`): its request is refused now, not once a backend
    that drips the line for ever ends it; `size` is what came so far, and the line's end is not handed out."""

    size: int
    head: bytes
    tail: bytes
    coming: bool = False


class LineAssembler:
    """Bytes in, complete lines out, in time linear in the bytes; a line past `cap` as a `DroppedLine`. Each line's
    values are counted as its pieces come (`ValueCounter`), not in a pass over the whole line once it ends; exactly
    only past `most` (`limits.max_result_values`), the limit a line is held to."""

    def __init__(self, cap: int, most: int | None = None) -> None:
        self.cap = cap
        self.most = most
        self._pieces: list[bytes] = []
        self._size = 0
        self._dropping = False
        self._told = False  # this line's answer was refused while it was coming: its end is not handed out
        self._head = self._tail = b""
        self._values = ValueCounter(most)

    def feed(self, chunk: bytes) -> list[bytes | DroppedLine]:
        return [line for line, _ in self.feed_counted(chunk)]

    def feed_counted(self, chunk: bytes) -> list[tuple[bytes | DroppedLine, int]]:
        """The lines `chunk` completes, each with its values (0 for a `DroppedLine`: not counted)."""
        lines: list[tuple[bytes | DroppedLine, int]] = []
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self._add(chunk[start:end], lines)
            if not self._told:
                lines.append(self._finish())
            self._reset()
            start = end + 1
        self._add(chunk[start:], lines)
        return lines

    def _add(self, piece: bytes, lines: list[tuple[bytes | DroppedLine, int]]) -> None:
        if not piece:
            return
        self._size += len(piece)
        if self._dropping:
            self._tail = (self._tail + piece[-EDGE:])[-EDGE:]
            return
        self._pieces.append(piece)
        self._values.feed(piece)
        if self._size > self.cap:  # once per dropped line: at most cap + one chunk is held
            whole = b"".join(self._pieces)
            self._head, self._tail = whole[:EDGE], whole[-EDGE:]
            self._pieces = []
            self._dropping = True
            if _ID_FIRST.match(self._head):
                self._told = True
                lines.append((DroppedLine(self._size, self._head, b"", coming=True), 0))

    def _finish(self) -> tuple[bytes | DroppedLine, int]:
        line = DroppedLine(self._size, self._head, self._tail) if self._dropping else b"".join(self._pieces)
        return line, 0 if self._dropping else self._values.values

    def _reset(self) -> None:
        self._pieces, self._size, self._dropping, self._told = [], 0, False, False
        self._head = self._tail = b""
        self._values = ValueCounter(self.most)


_ID = rb'(-?\d{1,19}|"(?:[^"\\]|\\.){0,256}")'
_ID_FIRST = re.compile(
    rb'\A\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*' + _ID + rb'\s*,\s*"(?:result|error)"'
)
_RESULT_FIRST = re.compile(rb'\A\s*\{\s*"(?:result|error)"\s*:')
_ID_LAST = re.compile(rb'"id"\s*:\s*' + _ID + rb"\s*\}\s*\Z")


def response_id(line: DroppedLine) -> types.RequestId | None:
    """The id of the response a dropped (or unreadable) line was, when one of its ends shows it; else None (a
    request or notification from the backend, or an id somewhere in the middle)."""
    found = _ID_FIRST.match(line.head)
    if found is None and _RESULT_FIRST.match(line.head):
        found = _ID_LAST.search(line.tail)
    if found is None:
        return None
    try:
        value = json.loads(found.group(1))
    except ValueError:
        return None
    return value if isinstance(value, int | str) else None


class LineWarnings:
    """The warnings about one process's unusable stdout lines (not JSON-RPC, over the cap): the first
    `WARNED_LINES` one by one, then one every `WARNING_INTERVAL` seconds counting the lines left out, and a last
    count when the process ends (`flush`)."""

    def __init__(self, backend: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.clock = clock
        self.warned = 0
        self.left_out = 0
        self._next_count = 0.0

    def warn(self, message: str) -> None:
        if self.warned < WARNED_LINES:
            self.warned += 1
            logger.warning("%s", message)
            if self.warned == WARNED_LINES:
                self._next_count = self.clock() + WARNING_INTERVAL
            return
        self.left_out += 1
        if self.clock() >= self._next_count:
            self.flush()

    def flush(self) -> None:
        """Say how many lines were left out since the last warning, if any."""
        if self.left_out:
            logger.warning(
                "backend %s wrote %d more stdout lines that were dropped (not JSON-RPC, or over the cap), not logged "
                "one by one (the first %d of each process are)",
                self.backend,
                self.left_out,
                WARNED_LINES,
            )
        self.left_out = 0
        self._next_count = self.clock() + WARNING_INTERVAL


class BrokenOutput(Exception):
    """Handed to the session in place of a message: the backend's stdout is unusable (`UnusableLines`) and its
    reading ended. Its text names the backend and the count, never the lines; what follows is the session's to say
    (backends/inbound.py `CountedReadStream`): the shared connection restarts the backend with it as the reason, a
    client's own session ends, its calls failing with `told`."""

    told = "its output was not JSON-RPC"  # what a client whose call the session's end cut off is told


class UnusableLines:
    """One process's unusable stdout lines (not JSON-RPC, blank) against their budget: `over` once it has written
    more than `UNUSABLE_RATE` of them a second, in every second (each judged as it ends), for `UNUSABLE_SECONDS`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.count = 0
        self._second = clock()  # when the current second began
        self._in_second = 0
        self._over_since: float | None = None  # the start of the run of seconds over the rate, if in one

    @property
    def over(self) -> bool:
        return self._over_since is not None and self._second - self._over_since >= UNUSABLE_SECONDS

    def add(self) -> None:
        """Count one line (`over` says whether that passed the budget)."""
        self.count += 1
        self._in_second += 1
        now = self.clock()
        if now - self._second >= 1.0:
            # The second that ended, if over the rate and right after the last one, extends the run.
            over = self._in_second > UNUSABLE_RATE and now - self._second < 2.0
            if not over:
                self._over_since = None
            elif self._over_since is None:
                self._over_since = self._second
            self._second, self._in_second = now, 0


@dataclass(frozen=True)
class _Reading:
    backend: str
    cap: int
    result_cap: int
    warnings: LineWarnings
    stdout_ended: anyio.Event  # the backend ended its stdout (it exited, most likely) before the shutdown
    values: int = DEFAULT_MAX_RESULT_VALUES  # `limits.max_result_values`
    listings: ListingIds = field(default_factory=ListingIds)
    relay: anyio.CancelScope = field(default_factory=anyio.CancelScope)  # cancelled: as if stdout had ended
    unusable: UnusableLines = field(default_factory=UnusableLines)

    @property
    def page_values(self) -> int:
        return page_values(self.values)


@asynccontextmanager
async def bounded_stdio_client(
    server: StdioServerParameters,
    errlog: TextIO,
    *,
    backend: str,
    max_result_bytes: int,
    max_result_values: int = DEFAULT_MAX_RESULT_VALUES,
    on_exit: Callable[[int], None] | None = None,
) -> AsyncIterator[TransportStreams]:
    """Start the backend and yield its `(read_stream, write_stream)`, as `mcp.client.stdio.stdio_client`.
    `on_exit` is told the exit status of a backend that exited by itself (not stopped by the shutdown)."""
    if sys.platform == "win32":  # pragma: no cover
        async with stdio_client(server, errlog=errlog) as streams:
            yield streams
        return
    adopt_orphans()
    mark = SPAWNS.mark()
    env = get_default_environment() | (server.env or {}) | {MARK_VARIABLE: mark}
    command = await anyio.to_thread.run_sync(killed_with_gateway, [server.command, *server.args], env, server.cwd)
    SPAWNS.begin()
    process = None
    try:
        process = await anyio.open_process(
            command,
            env=env,
            stderr=errlog,
            cwd=server.cwd,
            start_new_session=True,  # its own process group, which the shutdown kills as a whole
        )
    except OSError as exc:
        raise launch_failure(exc, server.command, server.cwd) from exc
    finally:
        SPAWNS.end(process)
    # No await between the spawn and the task group: a cancellation there would leak the process.
    exit_fd = _pidfd(process)
    read_sink, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_source = anyio.create_memory_object_stream[SessionMessage](0)
    reading = _Reading(
        backend, line_cap(max_result_bytes), max_result_bytes, LineWarnings(backend), anyio.Event(), max_result_values
    )
    writer_done = anyio.Event()
    failure: Exception | None = None
    watch = anyio.CancelScope()
    async with anyio.create_task_group() as pipes:
        pipes.start_soon(_read_stdout, process, read_sink, reading)
        pipes.start_soon(_write_stdin, process, write_source, read_sink, writer_done, reading.listings)
        pipes.start_soon(_watch_exit, process, exit_fd, reading, watch)
        try:
            yield read_stream, write_stream
        except Exception as exc:
            failure = exc
            raise
        finally:
            with anyio.CancelScope(shield=True):  # the process must not outlive us, even when cancelled
                watch.cancel()  # the exits from here on are the shutdown's doing
                # Whether or not the session failed: a backend that dies after its handshake ends the session
                # quietly (the stream's end), and its exit status is all that says why.
                exit_code = await _exit_by_itself(process, reading)
                if exit_code is not None and on_exit is not None:
                    on_exit(exit_code)  # now: a call that lost the session waits for it only briefly (errors.EXIT_WAIT)
                read_stream.close()  # the reader drains stdout from now on, so a blocked backend can exit
                write_stream.close()
                with anyio.move_on_after(FLUSH_SECONDS):
                    await writer_done.wait()
                await _stop(process, mark)
                reading.warnings.flush()
                for stream in (read_stream, write_stream, read_sink, write_source):
                    await stream.aclose()
                await anyio.lowlevel.checkpoint()
            pipes.cancel_scope.cancel()
            if exit_fd is not None:  # no longer waited on: its watcher was cancelled when the stop began
                os.close(exit_fd)
            if failure is not None and exit_code is not None and connection_closed(failure):
                # "Connection closed" alone does not say that the backend died, nor how.
                raise ProcessExited(exit_code) from failure


async def _exit_by_itself(process: Process, reading: _Reading) -> int | None:
    """The exit status of a backend that ended its stdout and exited before the shutdown began, else None."""
    if not reading.stdout_ended.is_set():
        return None
    with anyio.move_on_after(EXIT_SEEN_SECONDS):  # the end of stdout can come a moment before the exit is seen
        await _exit_of(process)
    return process.returncode


async def _read_stdout(
    process: Process, sink: MemoryObjectSendStream[SessionMessage | Exception], reading: _Reading
) -> None:
    assert process.stdout is not None
    try:
        try:
            async with sink:  # closed before the drain: the session sees the end while a helper holds stdout
                with reading.relay:
                    await _relay_lines(process.stdout, sink, reading)
        finally:
            await _drain(process.stdout)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, ConnectionError, OSError):
        logger.debug("backend %s: stdout closed", reading.backend)


def _pidfd(process: Process) -> int | None:
    """A descriptor that becomes readable when the backend exits (Linux 5.3+), else None. Taken before any await:
    the process is not reaped before then, so its pid cannot be another's yet."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(process.pid)
    except OSError:  # an old kernel; or the backend already exited and was reaped
        return None


async def _watch_exit(process: Process, exit_fd: int | None, reading: _Reading, scope: anyio.CancelScope) -> None:
    """When the backend exits but its stdout does not end (a process it started holds it: `Popen`'s default),
    end the reading after `EXITED_READ_SECONDS` as if it had: the session's calls fail at once, naming the
    exit status, and the stop ends the group (the helper with it), rather than the calls waiting for their
    timeouts and the backend counted ready until its health checks fail."""
    with scope:
        if exit_fd is not None and process.returncode is None:
            await anyio.wait_readable(exit_fd)
        else:
            while process.returncode is None:  # noqa: ASYNC110 (no pidfd: nothing to wait on)
                await anyio.sleep(EXIT_POLL_SECONDS)
        with anyio.move_on_after(EXITED_READ_SECONDS):
            await reading.stdout_ended.wait()  # the usual case: stdout ends with the process
        if not reading.stdout_ended.is_set():
            logger.info(
                "backend %s exited while another process holds its stdout open: ending its session", reading.backend
            )
            reading.stdout_ended.set()
            reading.relay.cancel()


async def _relay_lines(
    stdout: ByteReceiveStream, sink: MemoryObjectSendStream[SessionMessage | Exception], reading: _Reading
) -> None:
    lines = LineAssembler(reading.cap, reading.values)
    handled = 0
    while True:
        try:
            chunk = await stdout.receive(CHUNK_BYTES)
        except anyio.EndOfStream:
            reading.stdout_ended.set()
            return
        for line, values in lines.feed_counted(chunk):
            handled += 1
            if handled % LINES_PER_TURN == 0:
                await anyio.lowlevel.checkpoint()  # the other backends' callers get their turn
            message = await _message(line, values, reading)
            if message is not None and not await _give(sink, message):
                return  # the session is gone
            if reading.unusable.over:
                await _give(sink, _broken(reading))
                return  # the reading ends, and the session with it (the rest is drained by `_read_stdout`)


async def _give(sink: MemoryObjectSendStream[SessionMessage | Exception], message: SessionMessage | Exception) -> bool:
    """Hand `message` to the session; False once it is gone."""
    try:
        # One line at a time: no read-ahead while the session is busy. Handed over at once when the
        # session waits for it (the usual case): `send` would first yield one event-loop turn.
        try:
            sink.send_nowait(message)
        except anyio.WouldBlock:
            await sink.send(message)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        return False
    return True


def _broken(reading: _Reading) -> BrokenOutput:
    """The end of a process whose stdout is junk (`UnusableLines`): one warning, and why, for the session."""
    reason = (
        f"backend {reading.backend} wrote {reading.unusable.count:,} stdout lines that are not JSON-RPC, more than "
        f"{UNUSABLE_RATE:,} a second for {UNUSABLE_SECONDS:g} s: its output is unusable, its session ends"
    )
    logger.warning("%s", reason)
    return BrokenOutput(reason)


async def _message(line: bytes | DroppedLine, values: int, reading: _Reading) -> SessionMessage | None:
    """`line` (with its `values`, counted as it came) as the message to hand to the session, or its refusal."""
    if isinstance(line, DroppedLine):
        return _refusal(line, reading)
    if not line.strip():
        reading.unusable.add()
        return None
    listing = False
    if values > reading.values:
        request_id = response_id(DroppedLine(len(line), line[:EDGE], line[-EDGE:]))
        listing = reading.listings.answered(request_id)
        if not listing or values > reading.page_values:
            return _too_many_values(request_id, values, reading, listing=listing)
    off_loop = len(line) > PARSE_INLINE_BYTES
    parsed = (
        await anyio.to_thread.run_sync(_parse, line, reading.backend) if off_loop else _parse(line, reading.backend)
    )
    if not isinstance(parsed, SessionMessage):
        return _unparsable(line, parsed, reading)
    message = parsed.message
    if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
        listing = reading.listings.answered(message.id) or listing
    if isinstance(message, types.JSONRPCResponse) and not listing and len(line) > reading.result_cap:
        # Only a line longer than the cap can carry a result past it; measured where it was parsed.
        measure = partial(json_size, message.result, reading.result_cap)
        if (await anyio.to_thread.run_sync(measure) if off_loop else measure()) is None:
            return _over_result_cap(message.id, reading)
    return parsed


def _parse(line: bytes, backend: str) -> SessionMessage | ValueError | RecursionError:
    """`line` as a message; a backend whose line may hold a lone surrogate has its messages mended from now on
    (backends/lone_surrogates.py `note_line`)."""
    note_line(backend, line)
    try:
        if len(line) > PARSE_STDLIB_BYTES:
            message = types.jsonrpc_message_adapter.validate_python(json.loads(line), by_name=False)
        else:
            message = _validated_json(line)
        return SessionMessage(message)
    except (ValueError, RecursionError) as exc:  # `json.loads` gives up on deep nesting with a RecursionError
        return exc


def _validated_json(line: bytes) -> types.JSONRPCMessage:
    """A short line through pydantic's JSON parser, which refuses a lone surrogate escape (`"\\ud800"`) that `json`
    takes: such a line is read by `json` instead, the surrogate mended later (backends/lone_surrogates.py), so a
    backend's one odd character does not make its answers unreadable."""
    try:
        return types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValueError:
        if b"\\u" not in line:
            raise
        return types.jsonrpc_message_adapter.validate_python(json.loads(line), by_name=False)


def _too_many_values(
    request_id: types.RequestId | None, values: int, reading: _Reading, *, listing: bool
) -> SessionMessage | None:
    """A line with more values than `limits.max_result_values` (`listing`: a listing page's, more than
    `page_values`), not parsed: an error for the request it answers, if its ends show one; else nothing (a
    notification, a request of the backend's). One warning either way."""
    if listing:
        reading.warnings.warn(
            f"{too_many_values(reading.backend, values, reading.page_values, listing=True)}: dropped unparsed "
            f"(the answer to request {request_id!r}); the list ends before it"
        )
    else:
        what = f"the answer to request {request_id!r}" if request_id is not None else "no response id at either end"
        reading.warnings.warn(
            f"backend {reading.backend} wrote a message of about {values:,} values, more than "
            f"limits.max_result_values ({reading.values:,}): dropped unparsed ({what})"
        )
    if request_id is None:
        return None
    most = reading.page_values if listing else reading.values
    message = f"{too_many_values(reading.backend, values, most, listing=listing)}; the answer was not parsed"
    return _marked_refusal(request_id, message)


def _over_result_cap(request_id: types.RequestId, reading: _Reading) -> SessionMessage:
    """An answer whose parsed result passed `limits.max_result_bytes` (measured as backends/results.py does)."""
    message = (
        f"backend '{reading.backend}' returned a result larger than {reading.result_cap:,} bytes "
        "(limits.max_result_bytes); it was not passed on"
    )
    reading.warnings.warn(message)
    return _marked_refusal(request_id, message)


def _marked_refusal(request_id: types.RequestId, message: str) -> SessionMessage:
    """-32603, not a parse error: an answer too big is the tool's output, not the backend failing (its circuit
    breaker does not count it; backends/errors.py, `broken_answer`). Marked, so that a tools/call's becomes an
    error result the agent reads (routing/router.py), as a parsed result over the cap does."""
    error = types.ErrorData(code=types.INTERNAL_ERROR, message=message, data={OVER_RESULT_CAP: True})
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))


def _unparsable(line: bytes, exc: ValueError | RecursionError, reading: _Reading) -> SessionMessage | None:
    """A line that is not a JSON-RPC message: an error for the request it answers, if its ends show one; else
    nothing. The exception is not handed to the session as the SDK's reader does: pydantic's text quotes the
    line (a secret a backend prints, on every line it prints), and the session's handler logs each at warning."""
    deep = " (nested too deeply)" if isinstance(exc, RecursionError) else ""
    reading.unusable.add()
    reading.warnings.warn(
        f"backend {reading.backend} wrote a line of {len(line)} bytes that is not a JSON-RPC message{deep}"
    )
    request_id = response_id(DroppedLine(len(line), line[:EDGE], line[-EDGE:]))
    if request_id is None:
        return None
    # An answer, by its ends: its request is told now rather than left to its timeout. A parse error, as the
    # SDK answers an HTTP backend's garbled body: the circuit breaker counts it against the backend.
    why = f"backend '{reading.backend}' answered with a message of {len(line):,} bytes that is not valid JSON-RPC{deep}"
    error = types.ErrorData(code=types.PARSE_ERROR, message=why)
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))


def _refusal(line: DroppedLine, reading: _Reading) -> SessionMessage | None:
    request_id = response_id(line)
    size = f"more than {reading.cap:,}" if line.coming else f"{line.size:,}"
    reading.warnings.warn(
        f"backend {reading.backend} wrote a message of {size} bytes, over its cap of {reading.cap} bytes: dropped"
        + (
            f" (the answer to request {request_id!r}{', refused before its end came' if line.coming else ''})"
            if request_id is not None
            else " (no response id at either end: a notification, or an answer whose request will time out)"
        )
    )
    if request_id is None:
        return None
    reading.listings.answered(request_id)  # a listing's page too: its list ends there (backends/listing.py)
    message = (
        f"backend '{reading.backend}' answered with {size} bytes, more than limits.max_result_bytes "
        f"({reading.result_cap:,} bytes) allows over stdio ({reading.cap:,} with the envelope); the answer was dropped"
    )
    return _marked_refusal(request_id, message)


async def _write_stdin(
    process: Process,
    source: MemoryObjectReceiveStream[SessionMessage],
    read_sink: MemoryObjectSendStream[SessionMessage | Exception],
    done: anyio.Event,
    listings: ListingIds,
) -> None:
    assert process.stdin is not None
    try:
        async with source:
            async for session_message in source:
                listings.sent(session_message.message)
                line = session_message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                await process.stdin.send(line.encode())
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        await read_sink.aclose()  # the backend stopped reading: the session sees the end, not a hang
    finally:
        done.set()


async def _drain(stdout: ByteReceiveStream) -> None:
    """Read and discard the rest of stdout, so a backend blocked writing it can still exit."""
    with (
        anyio.CancelScope(shield=True),
        suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError),
    ):
        while True:
            await stdout.receive(CHUNK_BYTES)


async def _stop(process: Process, mark: str | None = None) -> None:
    """Close stdin, give the backend time to exit, then end its process group (MCP's shutdown order), and the
    descendants that left the group (and, by its `mark`, those orphaned: adopted by the gateway)."""
    assert process.stdin is not None and process.stdout is not None
    # Taken while the backend still runs: once it exits, its children are the gateway's (its subreaper; found by
    # their mark below) or the init process's, and once it is reaped its pid may be another process's, whose
    # descendants are none of ours.
    strays = await anyio.to_thread.run_sync(outside_group, process.pid) if process.returncode is None else []
    await _close_quietly(process.stdin)
    with anyio.move_on_after(EXIT_GRACE_SECONDS):
        await _exit_of(process)
    # Whether or not the backend exited by itself: what it started in its group (a wrapper's server, a helper
    # that ignores stdin's end) would outlive it. Returns at once when the group is gone.
    if group_may_be_ours(process):
        await end_group(process)
    if strays:
        await anyio.to_thread.run_sync(end_processes, strays)
    if process.returncode is None:
        with anyio.move_on_after(REAP_SECONDS):
            await _exit_of(process)
        if process.returncode is None:
            logger.warning("backend process %d is still alive after SIGKILL; leaving it", process.pid)
    if process.returncode is not None:  # reaped by asyncio: no status left that a zombie sweep could take
        SPAWNS.reaped(process)
    if mark is not None:
        await anyio.to_thread.run_sync(end_left_behind, mark)
    await _close_quietly(process.stdout)  # a survivor may hold the pipe open: end the reader's drain
    # anyio's Process has no close that does not wait for the pipes (which a surviving child may hold), and
    # an unclosed asyncio transport warns when collected: close it as the SDK does, by duck typing.
    close = getattr(getattr(getattr(process, "_process", None), "_transport", None), "close", None)
    if callable(close):
        with suppress(PermissionError):
            close()


async def _exit_of(process: Process) -> None:
    """Poll `returncode`: `process.wait()` also waits for the pipes' end, which a child may hold."""
    while process.returncode is None:  # noqa: ASYNC110 (nothing to wait on but the exit itself)
        await anyio.sleep(0.01)


async def _close_quietly(stream: AsyncResource) -> None:
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.aclose()
