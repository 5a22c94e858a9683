"""Answer a 2025-11-25 POST with plain JSON unless the call streams something before its result.

The SDK's streamable HTTP transport picks one answer form per session manager: every request POST an SSE
stream (`json_response=False`, ~0.85 ms a call here: a stream, its writer and ping tasks, the client's
SSE parser), or every one a JSON body (~0.25 ms) with no way to send progress, logs or server→client
requests. `LazyStreamTransport` decides per request instead, once it sees what the call produces:

- the request is dispatched with the SSE mode's metadata (so handlers may still stream, ask the client,
  poll-close the stream), and the priming event is stored first, as the SDK does, so storage order stays
  wire order for a resuming client;
- the first message for the request decides: its own response → one `application/json` answer; anything
  else (a progress notification, a log message, a server→client request) → the SSE stream starts with the
  priming event and that message, and carries the rest as the SDK's would;
- nothing within `COMMIT_SSE_AFTER` seconds → the SSE stream starts anyway, so its keep-alive pings hold a
  long silent call open behind proxies with idle-read timeouts (the SDK's 2026-07-28 entry does the same);
- the stream closed before anything came (the handler asked the client to poll) → the priming event alone,
  which the client resumes from with `Last-Event-ID`.

Everything else (initialize, notifications, responses, malformed or refused requests, GET, DELETE) is the
SDK's own path, but for two cases. A GET with a `Last-Event-ID` its session's store does not hold (unknown,
forged, another session's, or dropped by `sessions.max_events_per_session`) is answered `400` with a JSON-RPC
error: the SDK answered it `200` with an empty stream, which its own client takes for a cut stream and resumes
from the same id, attempts reset, every retry interval for ever, the call never resolved. On a `400` the
client gives up after its retries and fails the call. (Not `404`: that says the session is gone.) Unless the
id is the standalone GET stream's (marked so by both stores, shared/event_ids.py `GET_EVENT_PREFIX`): what
was lost there is notifications, not a result, and the SDK's client, refused, stops listening for the rest of
the session; it is served a fresh GET stream, as a GET without `Last-Event-ID` is (`409` while the session
has one open). And: with sessions shared (`sessions.store: redis`), the gateway's requests to the
client carry the replica's tag in their ids (server/shared_asks.py), and an answer POSTed to a replica that did
not ask is handed to the one that did; so is a client's cancellation of a request not in flight here (the
replicas holding the session hear it). A client MUST accept both forms for a POST (streamable HTTP, "Sending
Messages" 5); the 2026-07-28 entry already answers this way.

A client whose connection ends before its request's answer (while the answer waits, or on its SSE stream) is
told to the request's `Departure` (server/in_flight.py): the call runs on, no longer counted as its caller's.

Refusals are JSON-RPC errors, as the SDK's others are: a POST whose Content-Type is not JSON gets `415` ahead of
every SDK path (the SDK's was a plain-text `400`), and a call whose session is deleted (or idles out) while it
runs gets `404` under its id (the SDK's was `500` with `"id": null`).

This subclasses the SDK transport and uses its private helpers (`_mint_priming_event`,
`_create_session_message`, `_request_streams`, ...): the SDK offers no hook between dispatching a request
and choosing its answer's form. `mcp` is pinned; `tests/test_relay_roundtrips.py` and the conformance
suite exercise both forms through the gateway.

Past ~450 lines on purpose: one transport's POST and GET paths, which override the SDK's private methods and
share its per-request state; the session's event-store wrapper lives in server/event_store.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncGenerator
from contextvars import ContextVar
from functools import partial
from http import HTTPStatus
from typing import Any

import anyio
import pydantic_core
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, AuthorizationContext, authorization_context
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    LAST_EVENT_ID_HEADER,
    MCP_SESSION_ID_HEADER,
    REQUEST_STREAM_BUFFER_SIZE,
    EventMessage,
    SSEEvent,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager, _error_response
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import SessionMessage
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from mcp_types.version import is_version_at_least
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from vmcp_opt.backends.results import INLINE_CHARS, json_size
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.server.admission import SessionRefused, refused_stranger
from vmcp_opt.server.authentication import session_owner
from vmcp_opt.server.event_store import PRIME_FOLLOWED, PRIMING, BoundedEventStore, ProbedStore, UnsentAnswers
from vmcp_opt.server.held_answers import RetainedChunks, answer_hold, resumption_refused
from vmcp_opt.server.in_flight import DEPARTURE_KEY, Departure, departure_of
from vmcp_opt.server.list_answers import CHUNK, PartsResponse, body_parts, long_list, session_form
from vmcp_opt.server.released_streams import ReleasingReads, ReleasingWrites
from vmcp_opt.server.reserved_answers import CHARGES_KEY, SENDING_HOLD, ReservedAnswers, SessionCharges
from vmcp_opt.server.sessions import AnswerDelivery, client_address
from vmcp_opt.server.shared_asks import ASK_PREFIX, Answer, AskIds, TaggedAsks, asked_by
from vmcp_opt.server.streams import OldClientContent
from vmcp_opt.shared.event_ids import names_get_stream

logger = logging.getLogger(__name__)
# Checkpoints a resumed GET stream lets the abandoned one it replaces finish in (`_end_abandoned_get_stream`).
ABANDONED_STREAM_CHECKPOINTS = 3

# Seconds a call may stay silent before its answer becomes an SSE stream (kept open by pings).
COMMIT_SSE_AFTER = 15.0
# Seconds a call runs before its connection is watched for the client leaving (`_DepartureWatch`).
WATCH_AFTER = 0.5
_SSE_CONTENT_TYPE = "text/event-stream"
_JSON_CONTENT_TYPE = "application/json"
# Bytes of JSON past which an answer is encoded on a worker thread, not the event loop: what `json_size` walks on
# the loop elsewhere (a few milliseconds at most), and far below the size whose encoding stalls the loop.
LARGE_ANSWER = INLINE_CHARS
# Who the session being opened in this request is charged to (`sessions.max_event_bytes_per_caller_in_memory`).
_OPENER: ContextVar[str | None] = ContextVar("vmcp_session_opener", default=None)


class LazyStreamSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, whose sessions answer with `LazyStreamTransport`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The transports of the sessions this manager opened, by id, while they live: `end_session` ends one
        # without a client request (the SDK's only way is the client's DELETE, with its credential).
        self._opened: weakref.WeakValueDictionary[str, StreamableHTTPServerTransport] = weakref.WeakValueDictionary()
        self.asks: AskIds | None = None  # set when sessions are shared
        self.refused: SessionRefused | None = None  # hears of another principal's session named (server/http.py)
        self._refusals = ThrottledLog(logger)

    async def _handle_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = _not_json(scope)  # ahead of every path of the SDK's, the 2026-07-28 entry's included
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await super()._handle_request(scope, receive, send)

    def transport_of(self, session_id: str) -> LazyStreamTransport | None:
        """The live transport of a session this manager opened."""
        transport = self._opened.get(session_id)
        return transport if isinstance(transport, LazyStreamTransport) and not transport.is_terminated else None

    async def end_session(self, session_id: str) -> None:
        """Ends a session this manager opened as its client's DELETE would (it was deleted on another replica);
        the manager forgets it, and frees its slot, once its server loop has wound down."""
        transport = self._opened.get(session_id)
        if transport is not None and not transport.is_terminated:
            await transport.terminate()

    async def _handle_stateful_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The SDK's, but a request naming a session another principal opened is refused here, as the SDK would
        (404, the answer to a missing session), and told and logged with who asked: the SDK's warning names
        neither, and writes the session id, its owner's bearer secret."""
        session_id = Request(scope).headers.get(MCP_SESSION_ID_HEADER)
        user = scope.get("user")
        requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
        if session_id in self._server_instances and requestor != self._session_owners.get(session_id):
            refused_stranger(self.refused, scope, session_id, self._refusals)
            await _error_response("Session not found", 404)(scope, receive, send)
            return
        opener = _OPENER.set(session_caller(scope) if session_id is None else None)
        try:
            await super()._handle_stateful_request(scope, receive, send)
        finally:
            _OPENER.reset(opener)

    async def _serve_opening_request(
        self, http_transport: StreamableHTTPServerTransport, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The SDK's, but a session whose opening answer never reached its client is ended: the SDK took a `200`
        written to a closed connection for a session opened, and it held a session slot (server/sessions.py)
        until its idle timeout, a client closing each `initialize` at once taking them all."""
        delivery = AnswerDelivery(receive, send)
        async with anyio.create_task_group() as watching:
            watching.start_soon(delivery.watch)
            try:
                await super()._serve_opening_request(http_transport, scope, delivery.receive, delivery.send)
            finally:
                watching.cancel_scope.cancel()
        if delivery.left_early and not http_transport.is_terminated:
            logger.debug("Session %s: its client left before its opening answer; ended", http_transport.mcp_session_id)
            await http_transport.terminate()

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        # The SDK's own admission (limit, registration), with our transport class in place of its own.
        transport = super()._admit_session(requestor)
        if transport is not None:
            # The subclass adds behaviour and no state, so the instance can take its class; copying the SDK's
            # admission instead would fork it.
            transport.__class__ = LazyStreamTransport
            assert isinstance(transport, LazyStreamTransport)
            transport.asks = self.asks
            store = transport._event_store
            if isinstance(self.event_store, BoundedEventStore):
                # The SDK gives every session the one store it was handed, and names a request's stream by
                # the request's id (the same in every session): each session replays only its own events.
                store = self.event_store.session_view(_OPENER.get())
            if store is not None:
                transport._event_store = UnsentAnswers(store)
            if transport.mcp_session_id is not None:
                self._opened[transport.mcp_session_id] = transport
        return transport


def session_caller(scope: Scope) -> str:
    """Who a session's events in memory are charged to: its principal, else its client's address (as in Redis)."""
    return session_owner(scope) or f"address {client_address(scope)}"


def _not_json(scope: Scope) -> Response | None:
    """A POST whose Content-Type is not JSON, refused as a JSON-RPC error: the SDK's refusal (transport_security.py,
    by the same test) is a plain-text 400 with no content type, where every other refusal is JSON-RPC. 415, as the
    SDK answers a Content-Type that passes that test but is not exactly JSON; the client's value is not repeated."""
    content_type = Headers(scope=scope).get("content-type")
    if scope["method"] != "POST" or (content_type is not None and content_type.lower().startswith(_JSON_CONTENT_TYPE)):
        return None
    error = {"code": INVALID_REQUEST, "message": "Unsupported Media Type: Content-Type must be application/json"}
    return JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)


def _id_in_use(message: JSONRPCRequest) -> JSONResponse:
    error = {
        "code": INVALID_REQUEST,
        "message": "Invalid request: this request id is already in flight in this session",
    }
    return JSONResponse({"jsonrpc": "2.0", "id": message.id, "error": error}, status_code=HTTPStatus.CONFLICT)


class LazyStreamTransport(StreamableHTTPServerTransport):
    asks: AskIds | None = None  # sessions shared: requests to the client tagged, answers routed by their tag
    ask_copy = ""  # sessions shared: this copy's number in its requests' ids (`AskIds.next_copy`, taken at connect)
    client_version: str | None = None  # a restored copy: the version its client negotiated (`OldClientContent`)

    @property
    def charges(self) -> SessionCharges:
        """Its caller and its answers reserved (server/reserved_answers.py); made on first use, as the SDK's transport
        is made before it becomes this class."""
        charges = self.__dict__.get("_vmcp_charges")
        if not isinstance(charges, SessionCharges):
            charges = self.__dict__["_vmcp_charges"] = SessionCharges()
        return charges

    async def _handle_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = _not_json(scope)  # as the manager does: a restored copy (server/shared_sessions.py) is served here
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await super()._handle_request(scope, receive, send)

    async def terminate(self) -> None:
        await super().terminate()
        self.charges.release_all()
        if isinstance(self._event_store, UnsentAnswers):
            self._event_store.forget()

    async def _clean_up_memory_streams(self, request_id: Any) -> None:
        self.charges.release(str(request_id))  # its stream ended before its answer was sent: it never will be here
        await super()._clean_up_memory_streams(request_id)

    def _create_event_data(self, event_message: EventMessage) -> SSEEvent:
        answer = event_message.message
        if answer is PRIMING and event_message.event_id is not None:  # a followed replay's (server/event_store.py)
            priming: SSEEvent = {"id": event_message.event_id, "data": ""}
            if self._retry_interval is not None:
                priming["retry"] = self._retry_interval
            return priming
        if isinstance(answer, JSONRPCResponse | JSONRPCError) and answer.id is not None:
            # Its reservation becomes the charge of the connection this stream's writer sends on.
            self.charges.take(str(answer.id), SENDING_HOLD.get())
        return super()._create_event_data(event_message)

    @contextlib.asynccontextmanager
    async def connect(
        self,
    ) -> AsyncGenerator[tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]], None]:
        if self._event_store is not None and not isinstance(self._event_store, UnsentAnswers):
            self._event_store = UnsentAnswers(self._event_store)  # a restored copy's: it skips the release message
        async with super().connect() as (sdk_read_stream, sdk_write_stream):
            # An idle session keeps neither its last request nor its last answer (server/released_streams.py).
            read_stream = ReleasingReads(sdk_read_stream)
            # Content blocks a client of an older protocol version cannot read are sent as text.
            write_stream = ReservedAnswers(
                OldClientContent(ReleasingWrites(sdk_write_stream, self._request_sender), self.client_version),
                self.charges,
                self._request_streams,
            )
            if self.asks is None:
                yield read_stream, write_stream
                return
            self.ask_copy = self.asks.next_copy()
            yield read_stream, TaggedAsks(write_stream, self.asks, self.ask_copy)

    def _request_sender(self, request_id: str) -> MemoryObjectSendStream[EventMessage] | None:
        streams = self._request_streams.get(request_id)
        return None if streams is None else streams[0]

    async def deliver(self, message: Answer | JSONRPCNotification, copy: str | None = None) -> bool:
        """A client's answer to this copy's request (`copy`: the copy that asked), or its cancellation of a
        request, POSTed to another replica; False if the session has ended here, or the answer is for another copy
        of it (one that ended: its question's number may be the same as one of this copy's)."""
        if copy is not None and copy != self.ask_copy:
            return False
        writer = self._read_stream_writer
        if writer is None or self.is_terminated:
            return False
        try:
            await writer.send(SessionMessage(message))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    async def _replay_events(self, last_event_id: str, request: Request, send: Send) -> None:
        """The SDK's replay, unless the store holds nothing to resume from: then `400`, before any stream starts
        (an SSE response has sent its status by the time the replay finds out)."""
        store = self._event_store
        if names_get_stream(last_event_id) and GET_STREAM_KEY in self._request_streams:
            await self._end_abandoned_get_stream()
        if isinstance(store, ProbedStore) and not await store.holds(last_event_id):
            if names_get_stream(last_event_id):
                await self._fresh_get_stream(last_event_id, request, send)
                return
            logger.debug("SSE resumption from an event not held (%s): 400", last_event_id[:80])
            response = self._create_error_response(
                f"Bad Request: Last-Event-ID {last_event_id[:80]!r} names no event held for this session (evicted "
                "or unknown); the request's result is lost",
                HTTPStatus.BAD_REQUEST,
                INVALID_REQUEST,
            )
            await response(request.scope, request.receive, send)
            return
        # A request's stream is followed to its answer by the replay (`UnsentAnswers`), primed as the SDK primes it.
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER, DEFAULT_NEGOTIATED_VERSION)
        primed = PRIME_FOLLOWED.set(is_version_at_least(version, "2025-11-25"))
        try:
            await self._replay_held(last_event_id, request, send)
        finally:
            PRIME_FOLLOWED.reset(primed)

    async def _replay_held(self, last_event_id: str, request: Request, send: Send) -> None:
        """The SDK's replay, its connection charged to the caller of the session's last request and refused past
        `limits.held_answer_bytes` (server/held_answers.py): the GET passes no server middleware to tag it. An
        answer that comes while it replays is charged to it from the moment it was ready (`SENDING_HOLD`)."""
        hold = answer_hold(request.scope)
        owner = self.charges.owner
        if hold is None or owner is None:
            await super()._replay_events(last_event_id, request, send)
            return
        refusal = resumption_refused(hold, owner)
        if refusal is not None:
            await refusal(request.scope, request.receive, send)
            return
        sending = SENDING_HOLD.set(hold)
        try:
            await super()._replay_events(last_event_id, request, RetainedChunks(send, hold))
        finally:
            SENDING_HOLD.reset(sending)
            hold.retained(0)
            hold.unreserve()

    async def _handle_get_request(self, request: Request, send: Send) -> None:
        """The SDK's; its standalone stream (no `Last-Event-ID`) charged as a request's SSE stream is, to the caller
        of the session's last request (it passes no server middleware). Not refused: its client would stop
        listening for the rest of the session."""
        hold = answer_hold(request.scope)
        owner = self.charges.owner
        if hold is None or owner is None or request.headers.get(LAST_EVENT_ID_HEADER):
            await super()._handle_get_request(request, send)
            return
        hold.tag(*owner)
        try:
            await super()._handle_get_request(request, RetainedChunks(send, hold))
        finally:
            hold.retained(0)

    async def _end_abandoned_get_stream(self) -> None:
        """The client resumes its GET stream while one is still registered: a connection it abandoned whose end never
        reached the gateway (a laptop's sleep, a NAT's timeout: no FIN, the pings sit in buffers). Left, it got the
        resumption `409` twice, and the SDK's client stopped listening for good. It is ended first, and its writer,
        idle in its `receive`, let run to its end (a few checkpoints: it sets no event), since its clean-up would
        otherwise remove the new stream's registration. A writer stuck in a send to a full socket ends only when that
        connection fails, and may then end the new stream: the client resumes once more."""
        self.close_standalone_sse_stream()
        for _ in range(ABANDONED_STREAM_CHECKPOINTS):
            await anyio.lowlevel.checkpoint()

    async def _fresh_get_stream(self, last_event_id: str, request: Request, send: Send) -> None:
        """The SDK's standalone GET stream, as opened by a GET without `Last-Event-ID`: the client resumed its GET
        stream from an event no longer held, and refusing it would leave it deaf to notifications for good."""
        logger.debug(
            "SSE: the GET stream's events after %s are no longer held (notifications lost); a fresh one is served",
            last_event_id[:80],
        )
        headers = [(name, value) for name, value in request.scope["headers"] if name.lower() != b"last-event-id"]
        await self._handle_get_request(Request({**request.scope, "headers": headers}, request.receive), send)

    async def _handle_post_request(self, scope: Scope, request: Request, receive: Receive, send: Send) -> None:
        answer = await self._tagged_answer(request) if self.asks is not None else None
        if answer is not None:
            await self._route_answer(*answer, scope, request, receive, send)
            return
        message = await self._plain_message(request)
        if message is None or (isinstance(message, JSONRPCRequest) and message.method == "initialize"):
            await super()._handle_post_request(scope, request, receive, send)  # the body stays cached
            return
        if not isinstance(message, JSONRPCRequest):
            cancel = self._cancel_elsewhere(message) if self.asks is not None else None
            if await self._accept(message, scope, request, receive, send) and cancel is not None:
                assert self.asks is not None and self.mcp_session_id is not None
                await self.asks.relay_cancel(self.mcp_session_id, cancel)  # the other replicas holding it hear it
            return
        if str(message.id) in self._request_streams:
            # The SDK routes answers by request id: a second request under an id still in flight would take
            # the first one's stream and leave one of them unanswered for good. Ids are unique per session.
            await _id_in_use(message)(scope, receive, send)
            return
        tracked = _StartTracker(send)
        try:
            await self._answer(message, request, tracked)
        except Exception as err:
            logger.exception("Error handling POST request")
            if not tracked.started:  # a second `http.response.start` is an ASGI error of its own
                response = self._create_error_response(
                    "Error handling POST request", HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR
                )
                await response(scope, receive, send)
            await self._hand_over(Exception(err))

    async def _accept(
        self, message: JSONRPCNotification | Answer, scope: Scope, request: Request, receive: Receive, send: Send
    ) -> bool:
        """The SDK's answer to a notification or a client's answer (`202`, then the message handed to the session),
        less its failure when the session ends in between (a client that cancels a call and closes its session at
        once): the SDK then logged an error and sent a `500` after its `202`, an ASGI error. Whether it was
        accepted (`202` sent)."""
        if not await self._validate_request_headers(request, send):
            return False
        if self._terminated:
            await self._gone(scope, receive, send)  # a notification or an answer: no id to answer
            return False
        await self._create_json_response(None, HTTPStatus.ACCEPTED)(scope, receive, send)
        if not await self._hand_over(SessionMessage(message, metadata=self._message_metadata(request))):
            logger.debug("Session %s ended before a client's %s reached it", self.mcp_session_id, _kind(message))
        return True

    async def _hand_over(self, message: SessionMessage | Exception) -> bool:
        """`message` to the session's server loop; False if the session has ended (its stream is closed)."""
        writer = self._read_stream_writer
        if writer is None:
            return False
        try:
            await writer.send(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    async def _gone(self, scope: Scope, receive: Receive, send: Send, request_id: str | int | None = None) -> None:
        """The SDK's answer to a request for a terminated session, under the request's id when there is one."""
        await self._error(request_id, "Not Found: Session has been terminated", HTTPStatus.NOT_FOUND)(
            scope, receive, send
        )

    def _error(
        self, request_id: str | int | None, text: str, status: HTTPStatus, code: int = INVALID_REQUEST
    ) -> Response:
        """The SDK's `_create_error_response` (its headers for this session), under `request_id`."""
        headers = {MCP_SESSION_ID_HEADER: self.mcp_session_id} if self.mcp_session_id else None
        error = {"code": code, "message": text}
        return JSONResponse({"jsonrpc": "2.0", "id": request_id, "error": error}, status, headers=headers)

    async def _tagged_answer(self, request: Request) -> tuple[Answer, str, str] | None:
        """A client's answer to a tagged request of the gateway: (the answer under the dispatcher's id, the tag,
        the copy that asked)."""
        body = await request.body()  # cached: the SDK's path reads it again
        if ASK_PREFIX.encode() not in body:
            return None  # most POSTs: no second parse
        try:
            message = jsonrpc_message_adapter.validate_python(pydantic_core.from_json(body), by_name=False)
        except (ValueError, ValidationError):
            return None
        if not isinstance(message, JSONRPCResponse | JSONRPCError):
            return None
        asker = asked_by(message.id)
        if asker is None:
            return None
        tag, copy, own = asker
        return message.model_copy(update={"id": own}), tag, copy

    async def _route_answer(
        self, answer: Answer, tag: str, copy: str, scope: Scope, request: Request, receive: Receive, send: Send
    ) -> None:
        """This copy's question: the SDK's path with the dispatcher's id. Another replica's: 202, then handed over.
        A copy of this session that ended here: 202, dropped."""
        assert self.asks is not None and self.mcp_session_id is not None
        if tag == self.asks.tag and copy == self.ask_copy:
            await self._accept(answer, scope, request, receive, send)
            return
        if not await self._validate_request_headers(request, send):
            return
        await self._create_json_response(None, HTTPStatus.ACCEPTED)(scope, receive, send)
        if tag != self.asks.tag:
            await self.asks.relay(tag, self.mcp_session_id, copy, answer)
        else:
            logger.debug("sessions: an answer to a question of a copy of this session that has ended was dropped")

    def _cancel_elsewhere(self, message: JSONRPCMessage) -> JSONRPCNotification | None:
        """`message` if it is a client's cancellation of a request this copy of the session has no stream for
        (running on another replica, or done, or its stream cut here): the other replicas are told too."""
        if not (isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled"):
            return None
        cancelled = (message.params or {}).get("requestId")
        if not isinstance(cancelled, str | int) or str(cancelled) in self._request_streams:
            return None  # running here: the session's own loop cancels it
        return message

    async def _plain_message(self, request: Request) -> JSONRPCMessage | None:
        """The message of a well-formed POST in this session (a request to answer lazily, a notification or a
        client's answer to accept), or None for anything the SDK's path must answer (or refuse)."""
        has_json, has_sse = check_accept_headers(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        session = request.headers.get(MCP_SESSION_ID_HEADER)
        if not (has_json and has_sse and content_type == "application/json" and session == self.mcp_session_id):
            return None
        if self._read_stream_writer is None or session is None:
            return None
        try:
            message = jsonrpc_message_adapter.validate_python(pydantic_core.from_json(await request.body()))
        except (ValueError, ValidationError):
            return None
        return message

    async def _answer(self, message: JSONRPCRequest, request: Request, send: Send) -> None:
        assert self._read_stream_writer is not None
        request_id = str(message.id)
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER, DEFAULT_NEGOTIATED_VERSION)
        request.scope[CHARGES_KEY] = self.charges  # where `RequestsInFlight` reserves its answer
        request.scope[DEPARTURE_KEY] = Departure()  # where it hears that the client left
        priming = await self._mint_priming_event(request_id, version)
        self._request_streams[request_id] = streams = anyio.create_memory_object_stream[EventMessage](
            REQUEST_STREAM_BUFFER_SIZE
        )
        store = self._event_store if isinstance(self._event_store, UnsentAnswers) else None
        if store is not None:
            store.undecided.add(request_id)
        try:
            await self._answer_from(streams[1], priming, message, request, send)
        except BaseException:
            # Cancelled (a relayed change given up on) or failed before an answer: the request's stream and its
            # undecided mark go now, not when the session ends (as the SDK's paths clean up).
            if store is not None:
                store.undecided.discard(request_id)
            with anyio.CancelScope(shield=True):
                await self._clean_up_memory_streams(request_id)
            raise

    async def _answer_from(
        self,
        reader: MemoryObjectReceiveStream[EventMessage],
        priming: SSEEvent | None,
        message: JSONRPCRequest,
        request: Request,
        send: Send,
    ) -> None:
        """`_answer` once the request's stream is set up: the request dispatched, then answered in the form its
        first message decides."""
        assert self._read_stream_writer is not None
        request_id = str(message.id)
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER, DEFAULT_NEGOTIATED_VERSION)
        store = self._event_store if isinstance(self._event_store, UnsentAnswers) else None
        if not await self._hand_over(self._create_session_message(message, request, request_id, version)):
            # The session ended since the POST came in (its `terminate` already let go of this request's stream).
            if store is not None:
                store.undecided.discard(request_id)
            await self._clean_up_memory_streams(request_id)
            await self._gone(request.scope, request.receive, send, message.id)  # nothing sent yet: a clean 404
            return
        first: EventMessage | None = None
        closed = False
        with anyio.move_on_after(COMMIT_SSE_AFTER):
            first, closed = await _first_message(reader, request.receive, departure_of(request.scope))
        if store is not None:
            store.undecided.discard(request_id)  # an SSE stream from here: what follows is stored
        if first is not None and isinstance(first.message, JSONRPCResponse | JSONRPCError):
            hold = answer_hold(request.scope)
            self.charges.take(request_id, hold)  # charged to this connection until its response is written
            await self._clean_up_memory_streams(request_id)
            try:
                response = await self._json_response(first.message)
                await response(request.scope, request.receive, send)
            finally:
                if hold is not None:
                    hold.unreserve()
            return
        if closed and (priming is None or self._terminated):
            await self._unanswered(message, request, send)
            return
        opening = [event for event in (priming, first and self._create_event_data(first)) if event]
        await self._stream(request_id, opening, None if closed else reader, request, send)

    async def _unanswered(self, message: JSONRPCRequest, request: Request, send: Send) -> None:
        """The request's stream closed before anything came, with no priming event to resume from. Its session
        ended (the client's DELETE, the idle timeout): `404` under the request's id, as a request for a gone
        session gets (the SDK answered `500` with no id). Else (the handler closed it with no event store to
        resume from): `500`, under the id too."""
        if self._terminated:
            logger.debug("Session terminated with request %s in flight: 404", message.id)
            text = "Not Found: Session terminated before the request completed"
            response = self._error(message.id, text, HTTPStatus.NOT_FOUND)
        else:
            text = "The request's stream closed before its result"
            response = self._error(message.id, text, HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR)
        await response(request.scope, request.receive, send)

    async def _json_response(self, answer: JSONRPCResponse | JSONRPCError) -> Response:
        """The SDK's `_create_json_response`; a long list's body is encoded in slices on a worker thread, any
        other answer past `LARGE_ANSWER` bytes in one piece there (a 9 MB text stood the loop still for 120-296
        ms encoded here), both written a `CHUNK` at a time."""
        if isinstance(answer, JSONRPCResponse) and (key := long_list(answer)):
            parts = await anyio.to_thread.run_sync(body_parts, answer, key, session_form)
        elif json_size(answer, LARGE_ANSWER) is None:  # the walk stops at the bound: cheap on the loop
            parts = await anyio.to_thread.run_sync(_whole_in_parts, answer)
            logger.debug("an answer of over %d bytes encoded off the event loop", LARGE_ANSWER)
        else:
            return self._create_json_response(answer)
        sdk_form = self._create_json_response(None)  # the SDK's headers for this session, with no body
        headers = {name: value for name, value in sdk_form.headers.items() if name != "content-length"}
        return PartsResponse(parts, status_code=sdk_form.status_code, headers=headers)

    async def _stream(
        self,
        request_id: str,
        opening: list[SSEEvent],
        rest: MemoryObjectReceiveStream[EventMessage] | None,
        request: Request,
        send: Send,
    ) -> None:
        """Answer with an SSE stream: the `opening` events, then the request's messages up to its response."""
        sse_writer, sse_reader = anyio.create_memory_object_stream[SSEEvent](0)
        self._sse_stream_writers[request_id] = sse_writer  # so `close_sse_stream` can end it
        headers = {
            "Cache-Control": "no-cache, no-transform",
            "Connection": "keep-alive",
            "Content-Type": _SSE_CONTENT_TYPE,
            MCP_SESSION_ID_HEADER: self.mcp_session_id or "",
        }
        sender = partial(self._forward, request_id, sse_writer, opening, rest)
        response = EventSourceResponse(content=sse_reader, data_sender_callable=sender, headers=headers)
        hold = answer_hold(request.scope)  # what the writer keeps of an answer is held for the caller too
        sending = SENDING_HOLD.set(hold)  # the answer's reservation becomes this connection's (`_create_event_data`)
        try:
            receive = _watched(request.receive, departure_of(request.scope))  # the client's leaving heard here too
            await response(request.scope, receive, send if hold is None else RetainedChunks(send, hold))
        finally:
            SENDING_HOLD.reset(sending)
            if hold is not None:
                hold.retained(0)
                hold.unreserve()
            await sse_writer.aclose()
            await sse_reader.aclose()
            await self._clean_up_memory_streams(request_id)

    async def _forward(
        self,
        request_id: str,
        sse_writer: MemoryObjectSendStream[SSEEvent],
        opening: list[SSEEvent],
        rest: MemoryObjectReceiveStream[EventMessage] | None,
    ) -> None:
        try:
            async with sse_writer:
                for event in opening:
                    await sse_writer.send(event)
                if rest is None:
                    return  # closed for polling: the client resumes from the priming event
                async for event_message in rest:
                    await sse_writer.send(self._create_event_data(event_message))
                    if isinstance(event_message.message, JSONRPCResponse | JSONRPCError):
                        break
        except anyio.ClosedResourceError:
            logger.debug("SSE stream for request %s closed", request_id)
        finally:
            self._sse_stream_writers.pop(request_id, None)
            await self._clean_up_memory_streams(request_id)


class _StartTracker:
    """An ASGI `send` that notes whether the response has started (its status is out: no other may follow)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


def _watched(receive: Receive, departure: Departure | None) -> Receive:
    """`receive`, telling `departure` when the client's connection ends."""
    if departure is None:
        return receive

    async def watched() -> Message:
        message = await receive()
        if message["type"] == "http.disconnect":
            departure.left()
        return message

    return watched


async def _first_message(
    reader: MemoryObjectReceiveStream[EventMessage], receive: Receive, departure: Departure | None
) -> tuple[EventMessage | None, bool]:
    """The request's first message, or (None, True) when its stream closed first. Meanwhile, from `WATCH_AFTER`
    seconds on, the connection is watched (`_DepartureWatch`): a client gone while a silent call runs is heard."""
    watch = _DepartureWatch(receive, departure) if departure is not None else None
    try:
        return await reader.receive(), False
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return None, True
    finally:
        if watch is not None:
            watch.stop()


class _DepartureWatch:
    """Reads the request's `receive` (its body already read, it returns only once the connection ends: uvicorn) and
    tells `departure`, from `WATCH_AFTER` seconds on. Most calls answer sooner and cost a timer, not a task: a task
    group and a reading task for each call cost ~0.48 M instructions a call (13 %, bench/proxy_instructions.py), and
    a client gone before the watch starts is heard as it starts (uvicorn keeps answering `http.disconnect`)."""

    __slots__ = ("_task", "_timer")

    def __init__(self, receive: Receive, departure: Departure) -> None:
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start, receive, departure)

    def _start(self, receive: Receive, departure: Departure) -> None:
        self._task = asyncio.get_running_loop().create_task(_until_gone(receive, departure))

    def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


async def _until_gone(receive: Receive, departure: Departure) -> None:
    if (await receive())["type"] == "http.disconnect":
        departure.left()


def _whole_in_parts(answer: JSONRPCResponse | JSONRPCError) -> list[bytes | memoryview]:
    """`answer` as the SDK encodes it (`_create_json_response`), for a worker thread, in `CHUNK`s to write."""
    body = memoryview(answer.model_dump_json(by_alias=True, exclude_unset=True).encode())
    return [body[start : start + CHUNK] for start in range(0, len(body), CHUNK)]


def _kind(message: JSONRPCNotification | Answer) -> str:
    return message.method if isinstance(message, JSONRPCNotification) else "answer"
