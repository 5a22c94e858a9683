"""The gateway over stdio, so a desktop client can launch it as a subprocess.

The SDK's stdio reader (server/stdio_pipes.py `client_transport` keeps it) turns a line it cannot read into an
exception on the read stream, which the server only logs at debug level: the client waits for an answer that never
comes. `AnswerMalformed` answers such a line the way the HTTP endpoint does (`server/bad_input.py`): -32700 Parse
error for text that is not JSON, -32600 Invalid Request for JSON that is not a JSON-RPC message.

A line longer than `server.max_body_bytes` (the cap on an HTTP body) is not held: `CheckedLines` reads the rest
of it in small pieces and drops it, and the client gets -32600 naming the cap, under the request's id when the
line starts with it (as the SDKs write requests), so that the caller fails at once rather than waits. A line of
more than `limits.max_request_values` JSON values (a batch counted whole) is refused the same way, unparsed
(`bad_input.values_past`, on the reading thread): the SDK parses and validates a message on the event loop.

A request whose `id` is not a string or an integer (`null`, `true`) is read by the SDK as a notification,
which gets no answer: the client would wait forever. `checked_stdin` hands the SDK the client's lines with
such a request replaced by a marker line, which the SDK cannot parse and `AnswerMalformed` answers -32600,
as HTTP does. An `initialize` the SDK cannot read is replaced the same way and answered -32602 naming its bad
fields (`bad_input.initialize_problem`), where the SDK says only "Invalid request parameters". The SDK diverts
fd 0 only when it reads stdin itself; `checked_stdin` does the same.

A JSON-RPC batch line (protocol 2025-03-26 has them) is read as its messages, one line each, and each is
answered on a line of its own (`batch_of`); clients match answers by id.

A signal must stop the gateway while the client keeps stdin open and reads no answer: stdin is read and stdout
written on daemon threads (server/stdio_pipes.py), which a stop leaves behind. SIGHUP (the launching app or terminal
hung up) ends the input as a signal does.

At the end of input the SDK cancels the requests still running and answers them "Connection closed": a
client that pipes its requests in and closes stdin (`cat requests | vmcp serve --stdio`) lost every answer
still being worked on. `AnswerMalformed` holds the end of input back until the requests it passed on are
answered (`InFlight`, told of each answer by `AnswerTracker` on the write side; a request the client
cancelled, or a 2026-07-28 `subscriptions/listen` stream, is not waited for), for at most `timeouts.shutdown`.
A client that exits closes stdout too: the writer then fails with a broken pipe, and the gateway stops
as at the end of input.

The SDK starts a task for every request it reads, however many are running: a client that wrote 50,000 slow calls
had them all held at once (the gateway's RSS past 700 MB in 30 s, 1,700 at the backend). `AnswerMalformed` hands
the SDK a request only while fewer than `limits.requests_in_flight.per_caller` are unanswered, and answers one
past it at once with the JSON-RPC error HTTP gives (server/in_flight.py). Reading goes on meanwhile: the client's
answers to the gateway's own questions (sampling, elicitation, roots, approvals), which the running calls wait
for, and its cancellations must get through; holding the pipe shut until a call ended would deadlock them.
Only once twice `per_caller` requests of any kind are unanswered (a flood of `ping`, which is not refused) does
reading wait (`InFlight.room`): the client is then not taking its answers, and nothing it writes is read anyway.
Those answers wait in their handlers' tasks, each holding its result (100 calls of a 9 MB tool held 1 GB): past
`limits.held_answer_bytes.per_caller` (`WaitingAnswers`, server/held_answers.py) they and new calls get its error.
A long list is measured by its shared JSON (`list_answers.measured_as`): walking 50,000 tools held the loop ~1 s.

A request with a usable id that the SDK cannot read (`"params": "x"`, no `"jsonrpc"`) is answered under its id.

Just past ~450 lines on purpose: every check above is made on the same line, on the reading thread, before the SDK
sees it, and answers through the same writer; the pipes themselves are server/stdio_pipes.py's already.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, TypeGuard

import anyio
import mcp_types as types
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from vmcp_opt.config.limits import DEFAULT_MAX_REQUEST_VALUES
from vmcp_opt.gateway import Gateway, StartupError
from vmcp_opt.routing.budget import LimitReached
from vmcp_opt.server.bad_input import initialize_problem, too_many_values_error, unusable_id, values_past
from vmcp_opt.server.diagnostics import DiagnosticsServer
from vmcp_opt.server.drain import CUT_OFF
from vmcp_opt.server.handlers import build_mcp_server
from vmcp_opt.server.held_answers import WaitingAnswers
from vmcp_opt.server.in_flight import PER_CALLER, RETRY_AFTER, UNCOUNTED, InFlight
from vmcp_opt.server.json_batch import MAX_BATCH, is_batch
from vmcp_opt.server.list_answers import measured_as
from vmcp_opt.server.stdio_pipes import ClientLines, checked_stdout, client_transport
from vmcp_opt.server.streams import OldClientContent, ReadStreamWrapper, WriteStreamWrapper

logger = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
# Starts the line that stands for a request with an unusable id; not JSON, so the SDK hands it back as an error.
_UNUSABLE_ID = "\0vmcp:unusable-id:"
# Starts the line that stands for an unreadable `initialize`: `[<its id>, <the error message>]` as JSON.
_BAD_INITIALIZE = "\0vmcp:bad-initialize:"
# Starts the line that stands for one over the cap: `<size>:<cap>:<the request's id as JSON, or null>`.
_TOO_LONG = "\0vmcp:too-long:"
# Starts the line that stands for one of too many values: `<count>:<bound>:<the request's id as JSON, or null>`.
_TOO_MANY_VALUES = "\0vmcp:too-many-values:"
# A request's id where the SDKs write it, first or after `"jsonrpc": "2.0"`: the only place it is looked for in a
# line too long to parse, so that an `"id"` nested deeper in it is never taken for the request's own.
_LEADING_ID = re.compile(
    rb'\A\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,18})\s*,'
)
_CHUNK = 64 * 1024  # the pieces in which a line over the cap is read and dropped
# Requests that are streams, not calls: open as long as the client wants (as `server/drain.py` treats them).
_STREAMS = frozenset({"subscriptions/listen"})


async def serve_stdio(
    gateway: Gateway,
    diagnostics: DiagnosticsServer | None = None,
    stop: anyio.Event | None = None,
    hurry: anyio.Event | None = None,
) -> None:
    """Serve the client on stdin/stdout until it closes stdin or `stop` is set; `diagnostics`
    (telemetry.metrics.listen) beside it, the only way to reach this gateway's metrics. Once `hurry` is set (a
    second signal) the requests still running are answered with an error at once, not after `timeouts.shutdown`."""
    async with anyio.create_task_group() as task_group:
        try:
            await gateway.start(task_group)
        except StartupError as exc:  # failure.mode: fail, already logged naming the backends
            # Caught here, inside the task group: out of it, it would come wrapped in an ExceptionGroup.
            gateway.fatal = exc
            task_group.cancel_scope.cancel()
            return
        if diagnostics is not None:
            task_group.start_soon(diagnostics.run_beside, name="diagnostics")
        if gateway.limiter is not None:
            # No HTTP gate here: the router refuses every call past a limit, and telemetry hears of it there.
            gateway.limiter.on_refused = gateway.telemetry.rate_limited
        server = build_mcp_server(gateway, "stdio")
        max_values = gateway.config.limits.max_request_values
        with checked_stdin(gateway.config.server.max_body_bytes, max_values) as stdin, checked_stdout() as stdout:
            watching, hangup_watch, hung_up = anyio.CancelScope(), anyio.CancelScope(), anyio.Event()
            hurrying = anyio.CancelScope()
            in_flight = InFlight(gateway.config.timeouts.shutdown, gateway.config.limits.requests_in_flight.per_caller)
            if stop is not None:
                task_group.start_soon(_end_on, stop, stdin, watching, name="stdio-stop")
            if hurry is not None:
                task_group.start_soon(_give_up_on, hurry, in_flight, hurrying, name="stdio-hurry")
            if sys.platform != "win32":
                task_group.start_soon(_end_on_hangup, stdin, hung_up, hangup_watch, name="stdio-hangup")
            client_gone = False
            try:
                async with client_transport(stdin, stdout) as (read, write):
                    waiting = WaitingAnswers(gateway.config.limits.held_answer_bytes.per_caller, lambda: stdout.unsent)
                    async with anyio.create_task_group() as refusals:
                        answers = AnswerTracker(OldClientContent(write), in_flight, waiting, refusals)
                        reads = AnswerMalformed(read, answers, in_flight)
                        await server.run(reads, answers, server.create_initialization_options())
                        refusals.cancel_scope.cancel()  # errors still waiting for a client that read none
            except* BrokenPipeError:
                # The writer found stdout closed: the client exited (or was killed) and nobody reads answers
                # any more. The gateway still stops as when stdin closes, its backends and state included.
                client_gone = True
            watching.cancel()  # the client closed stdin: nothing left to end
            hangup_watch.cancel()
            hurrying.cancel()
        if client_gone:
            logger.info("the client closed its end of stdout (it exited): stopping the gateway and its backends")
        elif not hung_up.is_set() and (stop is None or not stop.is_set()):
            logger.info("the client closed stdin: stopping the gateway and its backends")
        if diagnostics is not None:
            diagnostics.should_exit = True
        gateway.stop()


def malformed_line_error(exc: Exception) -> types.JSONRPCError:
    """The JSON-RPC error for a line the transport could not read as a message."""
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    line = errors[0].get("input") if errors else None
    if isinstance(line, str) and line.startswith(_TOO_LONG):
        return _too_long_error(line[len(_TOO_LONG) :])
    if isinstance(line, str) and line.startswith(_TOO_MANY_VALUES):
        return _too_many_values_error(line[len(_TOO_MANY_VALUES) :])
    if isinstance(line, str) and line.startswith(_BAD_INITIALIZE):
        request_id, message = json.loads(line[len(_BAD_INITIALIZE) :])
        return types.JSONRPCError(
            jsonrpc="2.0", id=request_id, error=types.ErrorData(code=types.INVALID_PARAMS, message=message)
        )
    if isinstance(line, str) and line.startswith(_UNUSABLE_ID):
        kind = line[len(_UNUSABLE_ID) :].strip()
        error = types.ErrorData(
            code=INVALID_REQUEST, message=f"Invalid Request: id must be a string or an integer, not {kind}"
        )
    elif not isinstance(exc, ValidationError) or any(e["type"] == "json_invalid" for e in errors):
        error = types.ErrorData(code=PARSE_ERROR, message="Parse error: the line is not JSON")
    else:
        error = types.ErrorData(
            code=INVALID_REQUEST, message="Invalid Request: not a JSON-RPC 2.0 request, notification or response"
        )
    return types.JSONRPCError(jsonrpc="2.0", id=_request_id(errors), error=error)


def _request_id(errors: list[Any]) -> types.RequestId | None:
    """The id of the request the SDK could not read, as its errors give the parsed line; None for anything but a
    request (a response's id is the gateway's own question's: an error under it would answer that)."""
    for error in errors:
        message = error.get("input")
        if isinstance(message, dict) and "method" in message and "result" not in message and "error" not in message:
            request_id = message.get("id")
            if isinstance(request_id, str | int) and not isinstance(request_id, bool):
                return request_id
    return None


def _too_long_error(marker: str) -> types.JSONRPCError:
    size, cap, request_id = marker.strip().split(":", 2)
    message = f"Request too large: a line of {int(size):,} bytes, over {int(cap):,} (server.max_body_bytes)"
    data = {"limit": "server.max_body_bytes", "max_bytes": int(cap)}
    error = types.ErrorData(code=INVALID_REQUEST, message=message, data=data)
    return types.JSONRPCError(jsonrpc="2.0", id=json.loads(request_id), error=error)


def _too_many_values_error(marker: str) -> types.JSONRPCError:
    values, most, request_id = marker.strip().split(":", 2)
    message, data = too_many_values_error(int(values), int(most))
    error = types.ErrorData(code=INVALID_REQUEST, message=message, data=data)
    return types.JSONRPCError(jsonrpc="2.0", id=json.loads(request_id), error=error)


class AnswerTracker(WriteStreamWrapper):
    """The write side: each answer sent ends its request in `in_flight`. An answer past
    `limits.held_answer_bytes.per_caller` (`WaitingAnswers`) is the error naming it, sent from a task of `refusals`:
    the handler's task, which holds the result until its send returns, ends at once and lets it go."""

    def __init__(
        self,
        inner: WriteStream[SessionMessage],
        in_flight: InFlight,
        waiting: WaitingAnswers,
        refusals: anyio.abc.TaskGroup,
    ) -> None:
        super().__init__(inner)
        self._in_flight = in_flight
        self.waiting = waiting
        self._refusals = refusals

    async def send_untracked(self, item: SessionMessage) -> None:
        """An answer to a request never handed to the SDK: it ends nothing in `in_flight` (its id may be another
        running request's, reused)."""
        await self._inner.send(item)

    async def send(self, item: SessionMessage, /) -> None:
        if self._in_flight.cut_off and _closed_answer(item.message):
            item = SessionMessage(_cut_off_error(item.message.id))  # type: ignore[union-attr]
        size = 0
        if isinstance(item.message, types.JSONRPCResponse):  # behind an answer the client has not taken: counted
            try:
                size = self.waiting.take(measured_as(item.message.result))
            except LimitReached as refused:  # the result dropped, not held: its error waits in a task of its own
                error = types.JSONRPCError(jsonrpc="2.0", id=item.message.id, error=refused.error)
                self._refusals.start_soon(self._send_refusal, SessionMessage(error))
                return
        try:
            await self._send_tracked(item)
        finally:
            self.waiting.done(size)

    async def _send_refusal(self, item: SessionMessage) -> None:
        # The SDK's server ended (a stop, or stdin closed) first: the client took none of it.
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._send_tracked(item)

    async def _send_tracked(self, item: SessionMessage) -> None:
        await self._inner.send(item)
        if isinstance(item.message, types.JSONRPCResponse | types.JSONRPCError):
            self._in_flight.ended(item.message.id)


def _closed_answer(message: types.JSONRPCMessage) -> bool:
    """The SDK's answer to a request it cancelled at the end of input: "Connection closed", which tells a client
    that is still reading nothing of why."""
    return (
        isinstance(message, types.JSONRPCError)
        and message.error.code == types.CONNECTION_CLOSED
        and message.error.message == "Connection closed"
    )


def _cut_off_error(request_id: types.RequestId | None) -> types.JSONRPCError:
    error = types.ErrorData(code=types.CONNECTION_CLOSED, message=CUT_OFF, data={"retry_after": 1})
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)


class AnswerMalformed(ReadStreamWrapper):
    """A read stream that answers the transport's read errors on `write`, passes messages on, and at the end
    of input waits for the requests it passed on to be answered (`InFlight`) before it says so."""

    def __init__(
        self, inner: ReadStream[SessionMessage | Exception], write: AnswerTracker, in_flight: InFlight
    ) -> None:
        super().__init__(inner)
        self._write = write
        self._in_flight = in_flight
        self._held_before = False

    async def receive(self) -> SessionMessage | Exception:
        while True:
            await self._hold_while_unanswered()
            try:
                item = await self._inner.receive()
            except anyio.EndOfStream:
                await self._in_flight.drained()
                raise
            if not isinstance(item, Exception):
                if self._in_flight.full() and _bounded(item.message):
                    await self._write.send_untracked(SessionMessage(_past_the_bound(item.message.id, self._in_flight)))
                    continue
                if _bounded(item.message) and (refusal := self._write.waiting.refusal(item.message.id)) is not None:
                    await self._write.send_untracked(SessionMessage(refusal))  # waits behind them: reading pauses
                    continue
                self._note(item.message)
                return item
            # Never handed to the SDK: its id may be a running request's, which this answer does not end.
            await self._write.send_untracked(SessionMessage(malformed_line_error(item)))

    async def _hold_while_unanswered(self) -> None:
        if len(self._in_flight) < self._in_flight.hold_at:
            return
        if not self._held_before:  # once: a client that reads slowly would be told of every pause
            self._held_before = True
            logger.info(
                "stdio: %d requests unanswered (twice limits.requests_in_flight.per_caller): not reading more until "
                "the client takes its answers",
                len(self._in_flight),
            )
        await self._in_flight.room()

    def _note(self, message: types.JSONRPCMessage) -> None:
        if _counted(message):
            self._in_flight.started(message.id, bounded=_bounded(message))
        elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
            cancelled = (message.params or {}).get("requestId")
            if isinstance(cancelled, str | int) and not isinstance(cancelled, bool):
                self._in_flight.ended_cancelled(cancelled)  # the SDK answers it no more: not waited for


def _counted(message: types.JSONRPCMessage) -> TypeGuard[types.JSONRPCRequest]:
    """A request `InFlight` counts: every one but a stream, answered only when it ends (waiting for it would hold
    every stop for timeouts.shutdown, and the reading of every request after it)."""
    return isinstance(message, types.JSONRPCRequest) and message.method not in _STREAMS


def _bounded(message: types.JSONRPCMessage) -> TypeGuard[types.JSONRPCRequest]:
    """A request `limits.requests_in_flight` bounds: every one HTTP's bound counts (server/in_flight.py)."""
    return isinstance(message, types.JSONRPCRequest) and message.method not in UNCOUNTED


def _past_the_bound(request_id: types.RequestId, in_flight: InFlight) -> types.JSONRPCError:
    refusal = LimitReached(f"this client already has {in_flight.most} requests in flight", PER_CALLER, RETRY_AFTER)
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=refusal.error)


class CheckedLines:
    """The client's lines as text (undecodable bytes replaced, as the SDK does), a request with an unusable id
    replaced by the `_UNUSABLE_ID` line, one over `max_bytes` by the `_TOO_LONG` line, one of more than `max_values`
    JSON values by the `_TOO_MANY_VALUES` line. Only `readline`: all `anyio.AsyncFile`'s line iteration calls."""

    def __init__(self, raw: BinaryIO, max_bytes: int, max_values: int = DEFAULT_MAX_REQUEST_VALUES) -> None:
        self._raw = raw
        self._max_bytes = max_bytes
        self._max_values = max_values
        self._first = True
        self._batched: deque[bytes] = deque()  # the rest of a JSON-RPC batch's messages, one line each

    def readline(self) -> str:
        if self._batched:
            return self._checked(self._batched.popleft())
        line = self._raw.readline(self._max_bytes + 1)
        if self._first:
            # A stream written as UTF-8 with a byte-order mark (a file piped in, some Windows tools): read past it,
            # or the first message, usually `initialize`, is not JSON.
            self._first = False
            line = line.removeprefix(b"\xef\xbb\xbf")
        if len(line) > self._max_bytes and not line.endswith(b"\n"):
            return self._too_long(line)
        values = values_past(line, self._max_values)
        if values is not None:  # before `batch_of` parses a batch
            return f"{_TOO_MANY_VALUES}{values}:{self._max_values}:{json.dumps(_leading_id(line))}\n"
        messages = batch_of(line)
        if messages:
            self._batched.extend(json.dumps(message).encode() + b"\n" for message in messages[1:])
            line = json.dumps(messages[0]).encode() + b"\n"
        return self._checked(line)

    def _checked(self, line: bytes) -> str:
        kind = unusable_id(line)
        if kind is not None:
            return f"{_UNUSABLE_ID}{kind}\n"  # the client's input is never repeated
        problem = initialize_problem(line)
        if problem is not None:
            return f"{_BAD_INITIALIZE}{json.dumps(list(problem))}\n"
        return line.decode("utf-8", errors="replace")

    def _too_long(self, head: bytes) -> str:
        """The marker line for a line over the cap, once the rest of it is read and dropped."""
        size = len(head)
        while True:
            piece = self._raw.readline(_CHUNK)
            size += len(piece)
            if not piece or piece.endswith(b"\n"):
                break
        return f"{_TOO_LONG}{size}:{self._max_bytes}:{json.dumps(_leading_id(head))}\n"


def batch_of(line: bytes) -> list[dict[str, object]]:
    """The messages of a JSON-RPC batch line (2025-03-26 clients may send them; the SDK reads none), to be
    read one line each and answered one line each, which clients match by id. Empty for any other line; a
    batch of more than `MAX_BATCH`, or with anything but objects in it, is left to be refused as it is."""
    if not is_batch(line):
        return []
    try:
        messages: object = json.loads(line)
    except (ValueError, RecursionError):
        return []
    if not isinstance(messages, list) or len(messages) > MAX_BATCH:
        return []
    return messages if all(isinstance(message, dict) for message in messages) else []


def _leading_id(head: bytes) -> str | int | None:
    found = _LEADING_ID.match(head)
    try:
        request_id = json.loads(found.group(1)) if found else None
    except ValueError:  # a bad escape, a control character: no id to answer under
        return None
    return request_id if isinstance(request_id, str | int) else None


async def _end_on_hangup(lines: ClientLines, hung_up: anyio.Event, scope: anyio.CancelScope) -> None:
    """SIGHUP (the terminal or the app that launched the gateway went away) ends the input, as a closed stdin
    does: its default would kill the gateway at once, leaving a backend that does not watch its stdin running."""
    with scope, anyio.open_signal_receiver(signal.SIGHUP) as hangups:
        async for _ in hangups:
            logger.info("SIGHUP: the client hung up; stopping the gateway and its backends")
            hung_up.set()
            lines.end()
            return


async def _give_up_on(hurry: anyio.Event, in_flight: InFlight, scope: anyio.CancelScope) -> None:
    with scope:
        await hurry.wait()
        in_flight.give_up()


async def _end_on(stop: anyio.Event, lines: ClientLines, scope: anyio.CancelScope) -> None:
    with scope:
        await stop.wait()
        lines.end()


@contextmanager
def checked_stdin(max_bytes: int, max_values: int = DEFAULT_MAX_REQUEST_VALUES) -> Iterator[ClientLines]:
    """stdin's lines through `CheckedLines`, read from a copy of fd 0 while fd 0 reads the null device: a
    handler or a child process that reads stdin gets nothing rather than the client's bytes."""
    private = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    try:
        # closefd=False: the reader thread may still block on it after the transport exits (so says the SDK too).
        raw = os.fdopen(private, "rb", closefd=False)
        yield ClientLines(CheckedLines(raw, max_bytes, max_values).readline)
    finally:
        os.dup2(private, 0)
