"""A session opened on another replica, restored here through the SDK's own handshake.

The SDK keeps a session's negotiated state in its `Connection`, which its server loop creates and only the
handshake fills. Rather than write that state in from outside, the restored session's loop is first fed the
messages that made it: the stored `initialize` (with the version negotiated then) and
`notifications/initialized`, then `logging/setLevel` and one `resources/subscribe` per subscription, so the
gateway's handlers open this replica's dedicated backend session with the same log level and subscriptions.
They carry the Starlette request that caused the restore (its caller's identity, for the policy) and ids no
client can send (`_INTERNAL`); their answers are dropped before the transport. Only public SDK parts are used: the transport,
`serve_loop`, `SessionMessage` (and, for types, the stream protocols).

A change another replica makes to the session later (its log level, a subscription) reaches a copy held here as
a request of its own (`apply_change`), POSTed to the copy's transport under the scope of the session's last
request here (its caller's identity), with an id no client can send; its answer is dropped (a refusal is logged).

Those ids are what tells the gateway's own requests from a client's (`is_restoring`, `is_replayed`): neither is
recorded in Redis nor relayed to other replicas, and a restore's answers are dropped. So they carry a random
nonce drawn when this process starts and never sent anywhere: with a fixed prefix alone, a client whose own
request ids began `vmcp-change-` had its `resources/subscribe` kept from every other replica, its `initialize`
kept from the audit, and on a restored copy its answer dropped. Refusing such client ids instead would refuse
valid JSON-RPC ids, and need every POST parsed once more before the SDK's path.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from mcp.server.lowlevel.server import Server
from mcp.server.runner import serve_loop
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse, RequestId
from starlette.requests import Request
from starlette.types import Message, Scope

from vmcp_opt.server.lazy_stream import LazyStreamSessionManager, LazyStreamTransport
from vmcp_opt.server.streams import ReadStreamWrapper, WriteStreamWrapper

# An annotation only: handlers.py imports `is_restoring`, and a gateway without Redis never imports redis.
if TYPE_CHECKING:
    from vmcp_opt.shared.session_store import SessionRecord

logger = logging.getLogger(__name__)
# This process's own: a client cannot send an id that starts so (see the module's docstring).
_INTERNAL = secrets.token_hex(16)
_RESTORE_ID = f"vmcp-restore-{_INTERNAL}-"
_CHANGE_ID = f"vmcp-change-{_INTERNAL}-"
_change_ids = itertools.count(1)
# Headers of the session's last request a relayed change is not sent with: its own are set instead.
_REPLACED = frozenset(
    {b"accept", b"content-type", b"content-length", b"last-event-id", b"mcp-session-id", b"mcp-protocol-version"}
)


def is_restoring(request_id: RequestId | None) -> bool:
    """A request replayed to restore a session (its state is already recorded); never a client's."""
    return isinstance(request_id, str) and request_id.startswith(_RESTORE_ID)


def is_replayed(request_id: RequestId | None) -> bool:
    """A request replayed to restore a session, or a change another replica made to it (both recorded there);
    never a client's."""
    return is_restoring(request_id) or (isinstance(request_id, str) and request_id.startswith(_CHANGE_ID))


def opening_messages(record: SessionRecord, request: Request) -> list[SessionMessage]:
    """What the client's own requests did to the session, as messages to replay, in order."""
    metadata = ServerMessageMetadata(request_context=request, can_send_request=False)
    params = record.client_params.model_copy(update={"protocol_version": record.protocol_version})
    calls: list[tuple[str, dict[str, Any]]] = [
        ("initialize", params.model_dump(by_alias=True, mode="json", exclude_none=True))
    ]
    if record.log_level is not None:
        calls.append(("logging/setLevel", {"level": record.log_level}))
    calls += [("resources/subscribe", {"uri": uri}) for uri in record.subscriptions]
    messages = [
        SessionMessage(JSONRPCRequest(jsonrpc="2.0", id=f"{_RESTORE_ID}{i}", method=method, params=params))
        for i, (method, params) in enumerate(calls)
    ]
    initialized = SessionMessage(JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized"))
    messages.insert(1, initialized)
    return [SessionMessage(m.message, metadata=metadata) for m in messages]


def restored_transport(manager: LazyStreamSessionManager, session_id: str) -> LazyStreamTransport:
    """A transport for a copy of session `session_id` restored here, as the manager's own sessions': it answers JSON
    unless a call streams, and tags its requests to the client as theirs."""
    transport = LazyStreamTransport(
        mcp_session_id=session_id,
        is_json_response_enabled=manager.json_response,
        event_store=manager.event_store,
        security_settings=manager.security_settings,
        retry_interval=manager.retry_interval,
        idle_timeout=manager.session_idle_timeout,
    )
    transport.asks = manager.asks
    return transport


async def serve_restored(
    server: Server[Any],
    transport: StreamableHTTPServerTransport,
    record: SessionRecord,
    request: Request,
    lifespan_state: Any,
    restored: anyio.Event,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The restored session's server loop, as the SDK's manager runs its own, until it ends (idle, DELETE; a crash
    logged); then its transport terminated. `restored` is set once every replayed request is answered."""
    messages = opening_messages(record, request)
    replayed = {m.message.id for m in messages if isinstance(m.message, JSONRPCRequest)}
    if isinstance(transport, LazyStreamTransport):
        # The replayed `initialize`'s answer, which tells an older client's from a newer one's, is dropped below.
        transport.client_version = record.protocol_version
    try:
        async with transport.connect() as (read_stream, write_stream):
            task_status.started()
            with transport.idle_scope or anyio.CancelScope():
                await serve_loop(
                    server,
                    Replaying(messages, read_stream),
                    DroppingReplies(write_stream, {str(i) for i in replayed}, restored),
                    lifespan_state=lifespan_state,
                    session_id=transport.mcp_session_id,
                )
    except Exception:
        logger.exception("sessions: a restored session crashed")
    finally:
        if not transport.is_terminated:
            with anyio.CancelScope(shield=True):
                await transport.terminate()


class Replaying(ReadStreamWrapper):
    """A read stream that yields `first`, then what the client sends."""

    def __init__(self, first: list[SessionMessage], rest: ReadStream[SessionMessage | Exception]) -> None:
        super().__init__(rest)
        self._first = list(first)
        self._replaying = True

    @property
    def last_context(self) -> Any:
        # The SDK runs each client message in its sender's context; the replayed ones run in the loop's.
        return None if self._replaying else super().last_context

    async def receive(self) -> SessionMessage | Exception:
        if self._first:
            return self._first.pop(0)
        self._replaying = False
        return await self._inner.receive()


class DroppingReplies(WriteStreamWrapper):
    """A write stream that drops the answers to the replayed requests (a refusal is logged), and sets
    `answered` once each has its answer."""

    def __init__(self, inner: WriteStream[SessionMessage], waiting: set[str], answered: anyio.Event) -> None:
        super().__init__(inner)
        self._waiting = waiting
        self._answered = answered

    async def send(self, item: SessionMessage, /) -> None:
        message = item.message
        if isinstance(message, JSONRPCResponse | JSONRPCError) and is_restoring(message.id):
            if isinstance(message, JSONRPCError):
                logger.warning("sessions: restoring a session: %s was refused: %s", message.id, message.error.message)
            self._waiting.discard(str(message.id))
            if not self._waiting:
                self._answered.set()
            return
        await self._inner.send(item)


async def apply_change(
    transport: StreamableHTTPServerTransport,
    scope: Scope,
    session_id: str,
    version: str,
    change: tuple[str, dict[str, str]],
) -> str | None:
    """A change another replica made to the session (method, params), POSTed to this replica's copy as the
    client's own request would be, under `scope` (the session's last request here: its caller's identity);
    None once answered, else why not (the refusal's message, or the HTTP status)."""
    method, params = change
    body = json.dumps({"jsonrpc": "2.0", "id": f"{_CHANGE_ID}{next(_change_ids)}", "method": method, "params": params})
    headers = [(name, value) for name, value in scope["headers"] if name not in _REPLACED]
    headers += [
        (b"accept", b"application/json, text/event-stream"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"mcp-session-id", session_id.encode()),
        (b"mcp-protocol-version", version.encode()),
    ]
    request = {**scope, "method": "POST", "headers": headers, "query_string": b""}
    unread = [{"type": "http.request", "body": body.encode(), "more_body": False}]
    status, answer = 0, bytearray()

    async def receive() -> Message:
        if unread:
            return unread.pop()
        await anyio.sleep_forever()  # the client is not going away: the answer ends the request
        raise AssertionError

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            answer.extend(message.get("body", b""))

    await transport.handle_request(request, receive, send)
    if status != 200:
        return f"HTTP {status}"
    if answer.startswith(b"{") and b'"error"' in answer:
        error = json.loads(answer).get("error")
        return str(error.get("message") if isinstance(error, dict) else error)
    return None
