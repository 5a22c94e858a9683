"""A backend's log messages for one call on its shared session, relayed to the client that made the call.

A `notifications/message` names no request in either era: a 2025-11-25 server sends it when it likes, and a
2026-07-28 server sends it "request-scoped" (only for a request whose `_meta` asked, at that level), which over
streamable HTTP means on that request's own SSE stream and over stdio means nothing on the wire. The SDK's
client keeps the one tie there is: a request's POST is read by a task started in a copy of the context of the
task that sent the request (its transport streams carry each message's sender context), and the client session
runs a notification's callbacks in the context of the task that read it. So a message read from a call's own
SSE stream is handled where `_TIED` holds that call's `RequestLogs`, and reaches that client alone; a message
read by any other task (the session's GET stream, a stdio or SSE transport's reader, another call's POST)
sees another call's relay or none, and goes nowhere, as before.

Only a streamable HTTP backend is tied (`tied_logs`): a stdio backend's messages, of either era, and the
legacy SSE transport's cannot be told apart, so they are never relayed from the shared session (a client's
own dedicated session relays them: routing/dedicated.py). A call whose client asked for no logs gets no
`RequestLogs` at all: nothing per call on the shared session's fast path.

What one call's relay may hold is bounded like a dedicated session's (`NotificationBound`: at most 64 messages
on their way to the client, the rest dropped with a warning a minute); it stops relaying when the call ends,
after waiting at most `SETTLE_TIMEOUT` for the messages already on their way (read before the answer, they
belong before it on the client's stream).
"""

from __future__ import annotations

import contextlib
import logging
import typing
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Any
from weakref import WeakSet

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.server.session import ServerSession
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from vmcp_opt.backends.connection import BackendConnection
from vmcp_opt.backends.relay_bounds import NotificationBound

logger = logging.getLogger(__name__)

# Lowest first, as RFC 5424 orders them and the type lists them; a client's level lets through itself and
# everything after it.
LEVELS: tuple[types.LoggingLevel, ...] = typing.get_args(types.LoggingLevel)
# Seconds a call's answer waits for its log messages already on their way to a client that reads slowly.
SETTLE_TIMEOUT = 1.0

_NOTHING: AbstractAsyncContextManager[None] = contextlib.nullcontext()


class RequestLogs:
    """One front request's relay of the log messages its backend call sends, at the client's level."""

    def __init__(self, session: ServerSession, request_id: types.RequestId, level: types.LoggingLevel) -> None:
        self.level = level
        self._session = session  # the request's own session: what it sends goes on the request's stream
        self._request_id = request_id
        self._least = LEVELS.index(level)
        self._connection: BackendConnection | None = None
        self._notices: NotificationBound | None = None
        self._open = False
        self._settled: anyio.Event | None = None

    def asked(self, request: types.Request[Any, Any], connection: BackendConnection) -> types.Request[Any, Any]:
        """`request` asking a 2026-07-28 backend for the call's log messages at this level (it sends none
        unless asked); a 2025-11-25 backend's shared session has no level of its own: it is `request`."""
        if connection.protocol_version not in MODERN_PROTOCOL_VERSIONS or request.params is None:
            return request
        meta = {**dict(request.params.meta or {}), types.LOG_LEVEL_META_KEY: self.level}
        params = request.params.model_copy(update={"meta": meta})
        return request.model_copy(update={"params": params})

    async def relay(self, connection: BackendConnection, params: types.LoggingMessageNotificationParams) -> None:
        notices = self._notices
        if not self._open or notices is None or connection is not self._connection:
            return
        if params.level not in LEVELS or LEVELS.index(params.level) < self._least:
            return
        try:
            await notices.relay(lambda: self._send(params))
        finally:
            if not self._open and notices.in_flight == 0 and self._settled is not None:
                self._settled.set()

    async def _send(self, params: types.LoggingMessageNotificationParams) -> None:
        notification = types.LoggingMessageNotification(params=params)
        try:
            await self._session.send_notification(notification, related_request_id=self._request_id)
        except Exception as exc:  # a client gone away must not break the backend's session
            logger.debug("relay: log message not delivered to the client: %r", exc)

    @contextlib.asynccontextmanager
    async def _tied(self, connection: BackendConnection) -> AsyncIterator[None]:
        _WATCHER.watch(connection)  # first: a task `watch` starts must not carry this call's relay
        self._connection, self._notices, self._open = connection, NotificationBound(connection.name), True
        token = _TIED.set(self)
        try:
            yield
        finally:
            _TIED.reset(token)
            await self._close()

    async def _close(self) -> None:
        self._open = False
        if self._notices is None or self._notices.in_flight == 0:
            return
        self._settled = anyio.Event()
        with anyio.move_on_after(SETTLE_TIMEOUT):
            await self._settled.wait()


# The relay of the call whose request this task (or the task reading its answer) serves.
_TIED: ContextVar[RequestLogs | None] = ContextVar("vmcp_request_logs", default=None)


def tied_logs(connection: BackendConnection) -> bool:
    """Whether the backend's log messages can be told to be for one call: its calls' own SSE streams."""
    return connection.config.transport == "streamable-http"


def relaying(logs: RequestLogs | None, connection: BackendConnection) -> AbstractAsyncContextManager[None]:
    """While inside, the log messages `connection` sends on this task's requests' own streams go to `logs`'
    client; with no `logs` (the client asked for none), or a backend whose messages cannot be tied, nothing."""
    if logs is None or not tied_logs(connection):
        return _NOTHING
    return logs._tied(connection)


class _TiedLogsWatcher:
    """A `SessionWatcher` of every shared connection a log-asking call has used: a log message goes to the
    relay its reading task's context holds, if any."""

    def __init__(self) -> None:
        self._watched: WeakSet[BackendConnection] = WeakSet()

    def watch(self, connection: BackendConnection) -> None:
        if connection not in self._watched:
            self._watched.add(connection)
            connection.watch(self)

    async def session_ready(self, connection: BackendConnection, session: ClientSession) -> None:
        return None

    async def notified(self, connection: BackendConnection, message: types.ServerNotification) -> None:
        if not isinstance(message, types.LoggingMessageNotification):
            return
        logs = _TIED.get()
        if logs is not None:
            await logs.relay(connection, message.params)


_WATCHER = _TiedLogsWatcher()
