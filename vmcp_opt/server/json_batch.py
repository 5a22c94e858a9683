"""A JSON-RPC batch (a body that is an array) is part of protocol version 2025-03-26 only, where a server must
accept it; the SDK refuses every array. `JsonRpcBatch` serves one from a client of that version (its POSTs carry
no `MCP-Protocol-Version`, or that one): each message goes down the chain as a POST of its own (its bytes as the
client sent them), one at a time, and every answer is an event of one SSE stream as it comes, passed on
unparsed: nothing accumulates, a server→client request reaches the client while its call waits, and a refused
message gets its error under its id. A batch from a later version, one that would open a session, one with
`initialize` in it, or one of more than `MAX_BATCH` messages is refused with -32600 saying why. One of more than
`limits.max_request_values` JSON values, counted whole, never reaches `split_batch` (which parses every message):
`bad_input.JsonRpcErrorCodes` refuses it first.

A batch is one call in flight for the drain (server/drain.py), from its first message to its stream's end, not
one per message: the drain waits for the message being served, and a request not started yet once draining is
answered "shutting down, retry" under its id (notifications and responses still go on: they start no work, and
a call elsewhere may wait for one). One the shutdown cuts off ends the same way, its stream whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmcp_opt.server.held_answers import RetainedChunks, answer_hold
from vmcp_opt.server.post_body import BODY_KEY, PostBody
from vmcp_opt.server.sessions import SERVER_BUSY, json_rpc_error

INVALID_REQUEST = -32600

# A body that is a JSON array, found without copying it (`bytes.lstrip` would, on every POST).
_BATCH_START = re.compile(rb"[ \t\r\n]*\[")
_SPACE = re.compile(r"[ \t\r\n]*")
_DECODER = json.JSONDecoder()
# Messages in one JSON-RPC batch. They are served one at a time, each as a request of its own: a batch holds one
# call in flight, as its connection would with one POST (the per-address connection cap bounds an address's calls).
MAX_BATCH = 64
BATCH_VERSION = "2025-03-26"
# Refusals that depend only on the POST's headers (its credential, session, Accept, Content-Type, Host), so every
# message of the batch would get the same: given to the batch as it is while nothing of its answer is sent yet.
_HEADER_REFUSALS = frozenset({401, 403, 404, 406, 415, 421})
# An error answer's body is parsed (its id filled in) only up to this size; a bigger one goes on as it is.
_ERROR_PARSED_BYTES = 64 * 1024
_EVENT = b"event: message\n"
# Marks a batch message's scope: the drain counts the batch, not each message (server/drain.py).
BATCH_MESSAGE = "vmcp.batch_message"
# What a request of a batch the gateway did not start, because it is shutting down, is answered.
NOT_STARTED = "The gateway is shutting down and did not start this request; retry"


@runtime_checkable
class CallSlots(Protocol):
    """The drain as a batch sees it (server/drain.py `Drain`, which imports this module)."""

    draining: bool

    def holding(self) -> AbstractContextManager[None]:
        """One call in flight while the context lasts: the drain waits for it."""
        ...


def enclosing_scope_cancelled() -> bool:
    """Whether an anyio cancel scope around the current code was cancelled (a batch whose client left), which a
    CancelledError then comes from; uvicorn's stop cancels the request's task itself, in no scope."""
    return anyio.current_effective_deadline() == -math.inf


def is_batch(body: bytes) -> bool:
    """Whether `body` (a POST's, or a stdio line) is a JSON array: a JSON-RPC batch. Nothing of it is copied."""
    return _BATCH_START.match(body) is not None


def split_batch(text: str) -> list[tuple[Any, str]] | None:
    """Each element of the JSON array `text`, with its own text (as the client wrote it: re-encoded, non-ASCII
    text could double in size and pass `server.max_body_bytes`); None unless `text` is one JSON array. Stops
    after `MAX_BATCH` + 1 elements (the batch is refused). Raises ValueError or RecursionError on bad JSON."""
    at = _skip(text, 0)
    if not text.startswith("[", at):
        return None
    at = _skip(text, at + 1)
    elements: list[tuple[Any, str]] = []
    while not text.startswith("]", at):
        element, end = _DECODER.raw_decode(text, at)
        elements.append((element, text[at:end]))
        if len(elements) > MAX_BATCH:
            return elements
        at = _skip(text, end)
        if text.startswith(",", at):
            at = _skip(text, at + 1)
            if text.startswith("]", at):
                raise ValueError("a trailing comma")
        elif not text.startswith("]", at):
            raise ValueError("not a JSON array")
    if _skip(text, at + 1) != len(text):
        raise ValueError("data after the array")
    return elements


def _skip(text: str, at: int) -> int:
    """Where the JSON whitespace at `at` ends."""
    found = _SPACE.match(text, at)
    return found.end() if found else at


class JsonRpcBatch:
    """One 2025-03-26 JSON-RPC batch, served message by message through `endpoint`, one at a time.

    Its answer is one SSE stream (a 2025-03-26 client accepts one for any POST), each message's answers an event of
    their own as they come: passed on as their bytes, never parsed, so nothing of a big answer is held past its own
    event, and a server→client request in the middle of a call reaches the client (which answers it in a POST of
    its own). The stream starts with the first answer: a batch of notifications and responses only is answered
    202. A refusal of the POST by its headers (an unknown session, …) while nothing is sent yet is the batch's
    answer as it is; any other refusal of a message (413, 503, …) is that message's event, under its id.

    The client's disconnect cancels what is left of the batch (uvicorn does not cancel an app). With `slots` (the
    drain), the batch holds one of them for its whole life, and draining refuses its requests not yet started."""

    def __init__(self, endpoint: ASGIApp, scope: Scope, send: Send, slots: CallSlots | None = None) -> None:
        self._endpoint = endpoint
        self._scope = scope
        hold = answer_hold(scope)
        # Each event charged to the caller while its write waits, as a request's SSE stream's (its messages tag the
        # connection with their caller): it waits holding a whole answer.
        self._send = send if hold is None else RetainedChunks(send, hold)
        self._slots = slots
        self._started = False  # the batch's SSE answer (or a header refusal) has begun
        self._refused = False  # the batch was answered with a message's header refusal
        self._gone = anyio.Event()  # the client disconnected
        self._next = 0  # the first message not started

    async def serve(self, body: bytes, receive: Receive) -> None:
        try:
            messages = split_batch(body.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            await json_rpc_error(self._send, 400, -32700, "Parse error: the body is not JSON")
            return
        refusal = self._refusal(messages)
        if refusal is not None or messages is None:
            await json_rpc_error(self._send, 400, INVALID_REQUEST, f"Invalid Request: {refusal}")
            return
        # Held until the stream's last chunk is out: between two messages the batch is still in flight.
        with self._slots.holding() if self._slots is not None else contextlib.nullcontext():
            await self._run(messages, receive)

    async def _run(self, messages: list[tuple[Any, str]], receive: Receive) -> None:
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._watch, receive, task_group.cancel_scope)
                for message, text in messages:
                    if self._refused or self._gone.is_set():  # a client that left gets nothing more
                        break
                    self._next += 1
                    if self._draining() and _usable_id(message) is not None:
                        await self._not_started(message)
                    else:
                        await self._served(message, text)
                task_group.cancel_scope.cancel()  # the watch
        except asyncio.CancelledError:
            if enclosing_scope_cancelled():
                raise
            # uvicorn's stop (past the drain, or Ctrl-C) cancels the request's task once and does not wait: the
            # message it cut off was answered by the drain; the rest are answered here and the stream ends whole.
            for message, _ in messages[self._next :]:
                if _usable_id(message) is not None:
                    await self._not_started(message)
        if self._refused or self._gone.is_set():
            return
        if not self._started:  # no message had an answer: notifications and responses only
            await self._send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
        await self._send({"type": "http.response.body", "body": b""})

    def _refusal(self, messages: list[tuple[Any, str]] | None) -> str | None:
        if messages is None:
            return "not a JSON-RPC 2.0 request, notification or response"
        version = _header(self._scope, b"mcp-protocol-version")
        if version not in (None, BATCH_VERSION):
            return (
                f"JSON-RPC batches are not part of protocol version {version[:40]!r} (only {BATCH_VERSION} "
                "has them): send each message in a POST of its own"
            )
        if not messages:
            return "an empty batch"
        if len(messages) > MAX_BATCH:
            return f"a batch of more than {MAX_BATCH} messages: send it in smaller batches"
        if _header(self._scope, b"mcp-session-id") is None:
            return "a batch cannot open a session: send initialize in a POST of its own first"
        if any(isinstance(m, dict) and m.get("method") == "initialize" for m, _ in messages):
            return "initialize must not be part of a JSON-RPC batch"
        return None

    def _draining(self) -> bool:
        return self._slots is not None and self._slots.draining

    async def _not_started(self, message: Any) -> None:
        """The error event of a request not started because the gateway is shutting down."""
        error = {"code": SERVER_BUSY, "message": NOT_STARTED, "data": {"retry_after": 1}}
        await self.event(None, _compact({"jsonrpc": "2.0", "id": _usable_id(message), "error": error}))

    async def _watch(self, receive: Receive, batch: anyio.CancelScope) -> None:
        """The client's disconnect ends the batch: the message being served, and those still to come."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self._gone.set()
        batch.cancel()

    async def _served(self, message: Any, text: str) -> None:
        """`message` as a POST of its own (its body the client's `text`); its answers are the batch's events."""
        if not isinstance(message, dict):  # a batch in a batch would be served as one: no JSON-RPC message
            error = {
                "code": INVALID_REQUEST,
                "message": "Invalid Request: not a JSON-RPC 2.0 request, notification or response",
            }
            await self.event(None, _compact({"jsonrpc": "2.0", "id": None, "error": error}))
            return
        body = text.encode()
        headers = [(k, v) for k, v in self._scope["headers"] if k.lower() != b"content-length"]
        scope = {
            **self._scope,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
            BATCH_MESSAGE: True,
            BODY_KEY: PostBody(body, message, parsed=True),  # not the batch's, which the copy would carry on
        }
        unread = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            if unread:
                return unread.pop()
            await self._gone.wait()  # what an SSE answer listens for; `_watch` cancels the batch then too
            return {"type": "http.disconnect"}

        relay = _AnswerRelay(self, message.get("id"))
        try:
            await self._endpoint(scope, receive, relay.send)
        except asyncio.CancelledError:
            if not self._gone.is_set():
                await relay.done()  # the drain's answer to a message the shutdown cut off, if not yet an event
            raise
        finally:
            scope.pop(BODY_KEY, None)  # the scope may be kept as the session's last (server/session_relays.py)
        await relay.done()

    async def refuse(self, start: Message) -> bool:
        """Whether a message's header refusal (its `start`) is the batch's answer: it is while nothing is sent."""
        if self._started:
            return False
        self._started = self._refused = True
        await self._send(start)
        return True

    async def pass_on(self, message: Message) -> None:
        await self._send(message)

    async def event(self, start: Message | None, data: bytes) -> None:
        """One SSE event of `data` (its `data:` lines, or one JSON answer on one line); the batch's stream starts
        with the first, with the headers of the message's answer `start` (its session id, …)."""
        if not self._started:
            self._started = True
            await self._send({"type": "http.response.start", "status": 200, "headers": self._stream_headers(start)})
        if not data.startswith(b"data:"):
            data = b"data: " + data + b"\n"
        await self._send({"type": "http.response.body", "body": _EVENT + data + b"\n", "more_body": True})

    def _stream_headers(self, start: Message | None) -> list[tuple[bytes, bytes]]:
        dropped = {b"content-length", b"content-type", b"cache-control"}
        headers = [(k, v) for k, v in (start or {}).get("headers", []) if k.lower() not in dropped]
        if not any(k.lower() == b"mcp-session-id" for k, _ in headers):
            session = _header(self._scope, b"mcp-session-id")
            headers.append((b"mcp-session-id", (session or "").encode("latin-1")))
        if self._draining() and not any(k.lower() == b"connection" for k, _ in headers):
            headers.append((b"connection", b"close"))  # as the drain does: the client's next request goes elsewhere
        return [*headers, (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform")]


class _AnswerRelay:
    """The `send` of one batch message's POST: its JSON answer, or each event of its SSE answer, passed on to the
    batch's stream as an event as soon as it is whole."""

    def __init__(self, batch: JsonRpcBatch, request_id: Any) -> None:
        self._batch = batch
        self._request_id = request_id
        self._start: Message | None = None
        self._sse = False
        self._whole = False  # this answer is the batch's (a header refusal)
        self._parts: list[bytes] = []  # the JSON answer; or the SSE answer's line not yet ended
        self._data: list[bytes] = []  # the `data:` lines of the SSE event not yet ended

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            self._sse = (_start_header(message, b"content-type") or "").startswith("text/event-stream")
            if not self._sse and message["status"] in _HEADER_REFUSALS:
                self._whole = await self._batch.refuse(message)
            return
        if message["type"] != "http.response.body":
            return
        if self._whole:
            await self._batch.pass_on(message)
        elif self._sse:
            await self._lines(message.get("body", b""))
        else:
            self._parts.append(message.get("body", b""))

    async def _lines(self, chunk: bytes) -> None:
        """Each complete SSE line of `chunk`: a `data:` line kept for its event, an empty one ending the event.
        Keep-alives and the priming event have no data and are not passed on; nor are event ids (of this
        message's own stream, which the batch's is not)."""
        *ended, rest = chunk.split(b"\n")
        for line in ended:
            if self._parts:
                line, self._parts = b"".join([*self._parts, line]), []
            line = line.removesuffix(b"\r")  # sse-starlette ends its lines with CRLF
            if not line:
                if self._data:
                    await self._batch.event(self._start, b"".join(part + b"\n" for part in self._data))
                    self._data = []
            elif line.startswith(b"data:") and line[5:].strip():
                self._data.append(line)
        if rest:
            self._parts.append(rest)

    async def done(self) -> None:
        if self._whole or self._sse or self._start is None:
            return
        body = b"".join(self._parts).strip()
        if not body:
            return  # 202: a notification's or a response's
        if self._start["status"] >= 400 and len(body) <= _ERROR_PARSED_BYTES:
            body = _compact(_answer_to(body, self._request_id))  # a refusal before the SDK read the message
        elif b"\n" in body or b"\r" in body:
            body = _compact(_answer_to(body, self._request_id))  # one line per event's data (the SDK's is compact)
        await self._batch.event(self._start, body)


def _compact(answer: Any) -> bytes:
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()


def _answer_to(body: bytes, request_id: Any) -> dict[str, Any]:
    """A message's JSON answer; an error refused before the SDK read the message gets that message's id, so the
    client can tell which of its requests it answers (a boolean is no id, though Python counts it an integer)."""
    try:
        parsed: Any = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    answer: dict[str, Any] = (
        parsed
        if isinstance(parsed, dict)
        else {"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": "Internal error"}}
    )
    usable = isinstance(request_id, str | int) and not isinstance(request_id, bool)
    if answer.get("id") is None and "error" in answer and usable:
        answer["id"] = request_id
    return answer


def _usable_id(message: Any) -> str | int | None:
    """A request's id, when it is one a client can match (a boolean is none); None for anything else."""
    if not isinstance(message, dict) or "method" not in message:
        return None
    request_id = message.get("id")
    return request_id if isinstance(request_id, str | int) and not isinstance(request_id, bool) else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _start_header(start: Message, name: bytes) -> str | None:
    for key, value in start.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
