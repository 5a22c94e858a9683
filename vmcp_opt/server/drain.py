"""Graceful shutdown under a load balancer: on SIGTERM a replica drains before it stops.

Draining (`Drain.begin`, from the runner's SIGTERM handler):
- `/readyz` answers 503 `{"status": "draining"}` at once; a replica (`sessions.store: redis`) also takes no new
  connection and closes its idle keep-alive connections (server/runner.py, `stop_accepting`): a load balancer
  that never reads `/readyz` (nginx OSS) finds its connect refused, which it may always retry on another replica
  since nothing was sent (`/readyz` is then read on `telemetry.metrics.listen`). A single gateway keeps its port:
  its clients' answers to questions asked mid-call, and their cancels, come through it;
- requests already read when the drain began (tool calls and every other POST) run to their end, up to
  `server.drain_timeout`; answers carry `Connection: close`, so no further request comes on their connection.
  A request whose head was read before the drain began is in flight, not new, and runs like the others: it has
  the whole drain ahead of it, and refusing it would turn a request that merely crossed the signal into an error
  the client must handle. Only one that would open a session is refused (503, `Retry-After: 1`, a JSON-RPC error
  saying to retry): a session opened now would be cut at once;
- with rounds shared between replicas (`sessions.store: redis`), the drain also waits for the 2026-07-28 rounds
  held here for their client's answer (routing/round_trips/owners.py `RoundOwners.waiting`): the answer lands
  on another replica and is relayed here. A single gateway does not wait for a round that only waits for its
  client, who may never come back (every restart would last the whole drain); an answer that comes through its
  port meanwhile is taken. It does wait for the backend calls a workflow run makes between its rounds (below);
- then the HTTP server stops as on any exit (open streams get `timeouts.shutdown`); a request still running
  then (past the drain, or on Ctrl-C) is answered with a JSON-RPC error telling the client to retry (the last
  event of its SSE stream, when its answer was already streaming), and a stream cut then ends as a complete
  HTTP response (`_cut_off`), never broken off mid-chunk. A call whose answer already went out as an event of
  its stream (`_AnswerWatch`) gets no second one: its stream only ends.

A call may run on past its POST: a 2025-11-25 request runs in its session's task group, so a client that leaves
while its answer streams (or a batch's client that leaves) leaves its call running, and a 2026-07-28 workflow run
that asked its client goes on in the background between rounds (workflows/rounds.py). Each is held apart from the POSTs (`working`): every client
request from its arrival at the session to its answer (server/in_flight.py, which finds the drain in its
scope, `drain_of`), and every workflow step's call (`DRAIN_HOLD`). Before, the drain said "drained in 0.0s"
while such calls ran at their backends, and the stop cut them.

Open streams (a session's standalone GET stream, a 2026-07-28 `subscriptions/listen`) are not calls: they do
not hold the drain, and end when it does (`end_streams`).

A 2025-03-26 JSON-RPC batch (server/json_batch.py) is one call for its whole life: it holds a slot (`holding`)
from its first message to its stream's end, and its messages, which come through here one by one, are not
counted again. A message the shutdown cuts off is answered here like any POST, then the batch is told (the
CancelledError goes on) so it answers its messages not started and ends its stream. A CancelledError from an
enclosing cancel scope (a batch whose client left) is no shutdown: it goes on, unanswered and unlogged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sse_starlette.sse import AppStatus
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmcp_opt.routing.round_trips import RoundOwners
from vmcp_opt.server.json_batch import BATCH_MESSAGE, enclosing_scope_cancelled
from vmcp_opt.server.post_body import GONE, PostBody, reading_body
from vmcp_opt.server.sessions import SERVER_BUSY, json_rpc_error, may_open_session

logger = logging.getLogger(__name__)

# The scope key under which a request finds the drain (`drain_of`).
SCOPE_KEY = "vmcp.drain"


def drain_of(scope: object) -> Drain | None:
    """The drain a request came through (HTTP), so that its call can hold it past its POST (`Drain.working`)."""
    drain = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    return drain if isinstance(drain, Drain) else None


class Drain:
    """ASGI around the MCP endpoint: counts the POSTs in flight; once draining, refuses new sessions."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.draining = False
        self.in_flight = 0
        self.working_calls = 0  # client requests and workflow step calls running (`working`), past their POST too
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[SCOPE_KEY] = self
        if scope["method"] != "POST":  # a session's GET stream, a DELETE: not calls
            await self._serve(scope, receive, send, None)
            return
        async with reading_body(scope, receive, self.max_body_bytes) as (receive, body):
            await self._post(scope, receive, send, body)

    async def _post(self, scope: Scope, receive: Receive, send: Send, body: PostBody | bytes | None) -> None:
        envelope = body.envelope() if isinstance(body, PostBody) else None
        if body is GONE or _is_listen(envelope):
            await self._serve(scope, receive, send, None)
            return
        if scope.get(BATCH_MESSAGE):  # its batch holds the slot, and never opens a session
            await self._serve(scope, receive, send, _Call(_request_id(envelope)))
            return
        if self.draining and may_open_session(scope):
            await json_rpc_error(
                send,
                503,
                SERVER_BUSY,
                "This gateway replica is shutting down and takes no new sessions; retry (another replica answers)",
                {"retry_after": 1},
                [(b"retry-after", b"1"), (b"connection", b"close")],
            )
            return
        with self.holding():
            await self._serve(scope, receive, send, _Call(_request_id(envelope)))

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """One call in flight while the context lasts: `drained` waits for it."""
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._settle()

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """A call running for a client while the context lasts, whether or not its POST is still open: `drained`
        waits for it."""
        self.working_calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.working_calls -= 1
            self._settle()

    def _settle(self) -> None:
        if self.in_flight == 0 and self.working_calls == 0:
            self._idle.set()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, call: _Call | None) -> None:
        """The request through the endpoint; one uvicorn cuts off when it stops is ended here (`_cut_off`):
        left to uvicorn, the client gets a plain-text 500 or a stream broken off mid-chunk, and the log a
        traceback."""
        answer = _Answer()
        try:
            await self.app(scope, receive, self._closing(send, answer, call))
        except asyncio.CancelledError:
            if enclosing_scope_cancelled():
                raise  # not uvicorn's stop: a batch whose client left, which ends itself
            # The request's own task ends with this answer: uvicorn cancels it once, and does not wait for it.
            await _cut_off(send, answer, call)
            if scope.get(BATCH_MESSAGE):
                raise  # the batch answers its messages not started and ends its stream

    def _closing(self, send: Send, answer: _Answer, call: _Call | None) -> Send:
        """`send`, adding `Connection: close` to a response that starts while draining, and noting in `answer`
        what of the response has gone out. Only the SSE stream of a call with an id is read, and only until
        the event that answers the call: a plain JSON answer is passed on unread."""

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer.started = True
                answer.streaming = _is_event_stream(message.get("headers", []))
                if answer.streaming and call is not None and call.request_id is not None:
                    answer.watch = _AnswerWatch(call.request_id)
                if self.draining:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            elif message["type"] == "http.response.body":
                if answer.watch is not None and answer.watch.answered_by(message.get("body", b"")):
                    answer.answered = True
                    answer.watch = None  # the rest of the stream is not read
                if not message.get("more_body", False):
                    answer.ended = True
            await send(message)

        return closing

    def begin(self, rounds: RoundOwners | None = None) -> None:
        if self.draining:
            return
        self.draining = True
        if _shared(rounds):  # a replica: the runner closes its port now (server/runner.py, `stop_accepting`)
            logger.info(
                "draining: /readyz fails, new sessions refused, port closed; %d requests in flight, %d rounds "
                "waiting for their client",
                self.in_flight,
                _waiting(rounds),
            )
        else:  # a lone gateway keeps its port: its clients' answers to mid-call questions, their cancels, come here
            logger.info(
                "draining: /readyz fails, new sessions refused, port kept open for the calls running; "
                "%d requests in flight",
                self.in_flight,
            )

    async def drained(self, within: float, rounds: RoundOwners | None = None) -> bool:
        """Until no request is in flight and no round of `rounds` (when shared between replicas) waits for its
        client, at most `within` seconds: True when none is left."""
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._settled(rounds), within)
        except TimeoutError:
            logger.warning(
                "drain: %d requests still running after %gs (server.drain_timeout), %d calls (workflow steps "
                "included) still at work, %d rounds waiting for their client; stopping",
                self.in_flight,
                within,
                self.working_calls,
                _waiting(rounds),
            )
            return False
        logger.info("drained in %.1fs: stopping", time.monotonic() - started)
        return True

    async def _settled(self, rounds: RoundOwners | None) -> None:
        # Both at once: a round's answer comes as a request (on a replica that relays it here, or here), and a
        # call in flight may hand out a round as it ends.
        while True:
            await self._idle.wait()
            if rounds is not None and rounds.relay is not None:
                await rounds.settled()
            if self.in_flight == 0 and self.working_calls == 0 and not _waiting(rounds):
                return


def _shared(rounds: RoundOwners | None) -> bool:
    """Whether this gateway is one of several replicas (`sessions.store: redis`): only then are its rounds relayed."""
    return rounds is not None and rounds.relay is not None


def _waiting(rounds: RoundOwners | None) -> int:
    """The rounds the drain waits for: only shared ones, whose answer another replica can relay here."""
    return rounds.waiting() if rounds is not None and _shared(rounds) else 0


def end_streams() -> None:
    """End every open SSE stream now. sse-starlette (the SDK's SSE responses) ends them when uvicorn's own
    signal handler runs, which the drain replaces (server/runner.py); without this they would hold the
    stop for `timeouts.shutdown`."""
    AppStatus.should_exit = True


def _request_id(envelope: Any) -> str | int | None:
    """The JSON-RPC id of the request (its envelope, post_body.py), when it has a usable one."""
    request_id = envelope.get("id") if isinstance(envelope, dict) else None
    return request_id if isinstance(request_id, str | int) and not isinstance(request_id, bool) else None


def _is_listen(envelope: Any) -> bool:
    """A 2026-07-28 `subscriptions/listen`: a stream that lasts as long as the client wants, not a call."""
    return isinstance(envelope, dict) and envelope.get("method") == "subscriptions/listen"


@dataclass
class _Call:
    """A POST that is a call (not a stream): its JSON-RPC id, when it has a usable one."""

    request_id: str | int | None


@dataclass
class _Answer:
    """What of a response has gone out."""

    started: bool = False
    streaming: bool = False  # an SSE stream (`text/event-stream`)
    answered: bool = False  # an event of the stream was the call's answer (a result or error under its id)
    ended: bool = False
    watch: _AnswerWatch | None = None  # reads a call's stream until its answer


# How much of one SSE line, and of one event's data, `_AnswerWatch` keeps (64 KiB in all): the head of a
# longer one.
_HEAD_BYTES = 32 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")
# The head of a JSON-RPC response as the SDK writes it (`model_dump_json`: jsonrpc, id, then result or error);
# an event whose data is longer than `_HEAD_BYTES` is known by it.
_RESPONSE_HEAD = re.compile(
    rb'\s*\{\s*"jsonrpc"\s*:\s*"2\.0"\s*,\s*"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")\s*,\s*"(?:result|error)"\s*:'
)


class _AnswerWatch:
    """Reads a call's SSE stream as it goes out, chunk by chunk (an event may be split across chunks, a chunk
    may hold several), until the event whose data is the call's answer: a JSON-RPC result or error under the
    call's id (not a notification, nor a request to the client, whose ids are the server's own). At most
    `_HEAD_BYTES` of a line and of an event's data are kept; a longer event is judged by its head."""

    def __init__(self, request_id: str | int) -> None:
        self.request_id = request_id
        self._line = bytearray()  # the line being read (its head)
        self._line_cut = False  # the line is longer than its head
        self._data = bytearray()  # the event's data lines so far, joined by "\n" (its head)
        self._data_cut = False
        self._has_data = False
        self._after_cr = False  # the last chunk ended with "\r": a "\n" opening the next one ends no line

    def answered_by(self, chunk: bytes) -> bool:
        """Whether `chunk` completes the event that answers the call."""
        if not chunk:
            return False
        start = 1 if self._after_cr and chunk[:1] == b"\n" else 0
        self._after_cr = chunk[-1:] == b"\r"
        for end in _LINE_END.finditer(chunk, start):
            self._line_cut |= _keep(self._line, chunk, start, end.start())
            start = end.end()
            if self._line_ended():
                return True
        self._line_cut |= _keep(self._line, chunk, start, len(chunk))
        return False

    def _line_ended(self) -> bool:
        line, cut = self._line, self._line_cut
        self._line, self._line_cut = bytearray(), False
        if not line:  # an empty line: the event is complete
            answered = self._has_data and self._answers(bytes(self._data), self._data_cut)
            self._data.clear()
            self._has_data = self._data_cut = False
            return answered
        if line.startswith(b"data:"):
            value = line[6:] if line.startswith(b"data: ") else line[5:]
            if self._has_data:
                self._data_cut |= _keep(self._data, b"\n", 0, 1)
            self._data_cut |= _keep(self._data, value, 0, len(value)) or cut
            self._has_data = True
        return False

    def _answers(self, data: bytes, cut: bool) -> bool:
        if cut:
            head = _RESPONSE_HEAD.match(data)
            return head is not None and _same_id(_json(head.group(1)), self.request_id)
        message = _json(data)
        return (
            isinstance(message, dict)
            and "method" not in message
            and ("result" in message or "error" in message)
            and _same_id(message.get("id"), self.request_id)
        )


def _keep(into: bytearray, chunk: bytes | bytearray, start: int, end: int) -> bool:
    """Appends `chunk[start:end]` to `into` up to `_HEAD_BYTES` in all; whether some was left out."""
    room = max(_HEAD_BYTES - len(into), 0)
    into += chunk[start : min(end, start + room)]
    return end - start > room


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _same_id(found: Any, request_id: str | int) -> bool:
    return type(found) is type(request_id) and found == request_id


# What a request the shutdown cut off is answered, over HTTP here and over stdio (server/stdio.py).
CUT_OFF = "The gateway is shutting down and stopped this request before it finished; retry"


async def _cut_off(send: Send, answer: _Answer, call: _Call | None) -> None:
    """End a response the shutdown cut off: a call not yet answered gets a JSON-RPC error (as the body, or as
    the last event of its SSE stream), and a stream its end, so the client reads a complete HTTP answer."""
    if answer.ended:
        return
    if not answer.started:
        if call is not None:
            logger.warning("a request was cut off by the shutdown; answered with an error")
        await json_rpc_error(
            send,
            503,
            SERVER_BUSY,
            CUT_OFF,
            {"retry_after": 1},
            [(b"retry-after", b"1"), (b"connection", b"close")],
            request_id=call.request_id if call is not None else None,
        )
        return
    if answer.answered:
        logger.info("a request was cut off by the shutdown after its answer went out; its stream ends")
    elif call is not None and answer.streaming and call.request_id is not None:
        logger.warning("a request was cut off by the shutdown; its stream ends with an error")
        error = {"code": SERVER_BUSY, "message": CUT_OFF, "data": {"retry_after": 1}}
        event = json.dumps({"jsonrpc": "2.0", "id": call.request_id, "error": error})
        await send(
            {
                "type": "http.response.body",
                "body": f"event: message\r\ndata: {event}\r\n\r\n".encode(),
                "more_body": True,
            }
        )
    elif call is not None:
        logger.warning("a request was cut off by the shutdown; its response ends unfinished")
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _is_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"text/event-stream") for name, value in headers)
