"""Relaying between one front client and its backends: what a shared backend session cannot route.

A front client that can answer server-to-client requests (it declared sampling, elicitation or roots),
or that asked for log messages (`logging/setLevel`) or resource updates (`resources/subscribe`), gets
its own session to each backend it uses (`DedicatedSession`). Everything those sessions receive is
for that client alone:

- `sampling/createMessage`, `elicitation/create`, `roots/list` go to the client on the stream of the
  call that caused them (the one call in flight; the standalone stream otherwise), and the answer goes
  back to the same backend session. Cancellation travels both ways through the SDK's dispatchers.
- log messages likewise; `resources/updated` on the client's standalone stream.

Every other client stays on the shared, faster path. A client's dedicated sessions are closed when its
connection closes. Calls on them go through the backend's circuit breaker like shared ones; the time a
backend spends waiting for the client's answer counts against `timeouts.input`, not the call.

A 2026-07-28 client has no back-channel: its calls ask it through `InputRequiredResult` instead
(`vmcp_opt/server/round_trips.py`); `route` sends them there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.client.session import ClientRequestContext
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from vmcp_opt.backends.connection import BackendConnection, BackendState
from vmcp_opt.backends.session_pool import DedicatedSession, SessionCallbacks, SessionPool
from vmcp_opt.health import CallClock
from vmcp_opt.server.round_trips import Guard, RoundTrips, asks_by_round_trip

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT", bound=BaseModel)
Ctx = ServerRequestContext[Any, Any]
STATE_KEY = "vmcp.relay"


@dataclass(eq=False)
class _InFlight:
    session: ServerSession
    request_id: types.RequestId | None
    clock: CallClock = field(default_factory=CallClock)


@dataclass(eq=False)
class FrontClient:
    """One front connection's relay state: its dedicated backend sessions and its calls in flight."""

    connection: Connection
    pool: SessionPool
    guard: Guard
    input_timeout: float
    always: bool  # the client can answer server-to-client requests: every call needs its own session
    sessions: dict[str, DedicatedSession] = field(default_factory=dict)
    in_flight: list[_InFlight] = field(default_factory=list)
    last_session: ServerSession | None = None
    log_level: types.LoggingLevel | None = None
    subscriptions: dict[str, set[str]] = field(default_factory=dict)  # backend -> URIs
    closed: bool = False
    _locks: dict[str, anyio.Lock] = field(default_factory=dict)

    # --- sessions --------------------------------------------------------------------------------

    async def session_for(self, backend: BackendConnection) -> DedicatedSession:
        current = self.sessions.get(backend.name)
        if current is not None and not current.closed:
            return current
        lock = self._locks.setdefault(backend.name, anyio.Lock())
        async with lock:
            current = self.sessions.get(backend.name)
            if current is not None and not current.closed:
                return current
            if self.closed:
                raise MCPError(types.CONNECTION_CLOSED, "the client session has ended")
            session = await self.pool.open(backend, self._callbacks(backend.name))
            self.sessions[backend.name] = session
            await self._restore(session)
            return session

    async def _restore(self, session: DedicatedSession) -> None:
        """A reopened session gets the client's log level and subscriptions back."""
        capabilities = session.connection.capabilities
        if self.log_level is not None and capabilities is not None and capabilities.logging is not None:
            await session.request(
                types.SetLevelRequest(params=types.SetLevelRequestParams(level=self.log_level)), types.EmptyResult
            )
        for uri in self.subscriptions.get(session.name, ()):
            await session.request(
                types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri)), types.EmptyResult
            )

    async def close(self) -> None:
        self.closed = True
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            await session.aclose()

    # --- what the backend sends ------------------------------------------------------------------

    def _callbacks(self, backend: str) -> SessionCallbacks:
        capabilities = self.connection.client_capabilities or types.ClientCapabilities()
        return SessionCallbacks.mirroring(
            capabilities,
            sampling=self._sampling,
            elicitation=self._elicitation,
            list_roots=self._list_roots,
            logging=self._log,
            notification=self._notification,
        )

    def _target(self) -> tuple[ServerSession | None, ServerMessageMetadata | None]:
        """The call that caused a backend's message: the one in flight, else the standalone stream."""
        if len(self.in_flight) == 1:
            call = self.in_flight[0]
            return call.session, ServerMessageMetadata(related_request_id=call.request_id)
        if self.in_flight:
            return self.in_flight[-1].session, None
        return self.last_session, None

    async def _ask(self, request: types.ServerRequest, result_type: type[ResultT]) -> ResultT | types.ErrorData:
        session, metadata = self._target()
        if session is None:
            return types.ErrorData(code=types.INTERNAL_ERROR, message="the client is not connected")
        # While the client answers, the calls in flight are not the backend's time.
        with contextlib.ExitStack() as waits:
            for call in list(self.in_flight):
                waits.enter_context(call.clock.paused())
            try:
                with anyio.fail_after(self.input_timeout):
                    return await session.send_request(request, result_type, metadata=metadata)
            except MCPError as exc:
                return exc.error
            except TimeoutError:
                return types.ErrorData(
                    code=types.REQUEST_TIMEOUT, message=f"the client did not answer within {self.input_timeout:g}s"
                )

    async def _sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        request = types.CreateMessageRequest(params=params)
        if params.tools:
            return await self._ask(request, types.CreateMessageResultWithTools)
        return await self._ask(request, types.CreateMessageResult)

    async def _elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        return await self._ask(types.ElicitRequest(params=params), types.ElicitResult)

    async def _list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        return await self._ask(types.ListRootsRequest(), types.ListRootsResult)

    async def _log(self, params: types.LoggingMessageNotificationParams) -> None:
        session, metadata = self._target()
        if session is None:
            return
        related = metadata.related_request_id if metadata is not None else None
        await _deliver(session.send_notification(types.LoggingMessageNotification(params=params), related))

    async def _notification(self, message: types.ServerNotification) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            await _deliver(self.connection.send_resource_updated(str(message.params.uri)))


async def _deliver(send: Awaitable[None]) -> None:
    try:
        await send
    except Exception as exc:  # a client gone away must not break the backend session
        logger.debug("relay: message not delivered to the client: %r", exc)


class _BoundSession:
    """A dedicated session seen from one front request: calls made through it are `in flight`."""

    def __init__(self, front: FrontClient, session: DedicatedSession, ctx: Ctx) -> None:
        self.front = front
        self.session = session
        self.ctx = ctx

    async def request(
        self,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        *,
        progress_callback: ProgressFnT | None = None,
    ) -> ResultT:
        call = _InFlight(self.ctx.session, self.ctx.request_id)
        self.front.in_flight.append(call)
        try:
            async with self.front.guard(self.session.name, call.clock):
                return await self.session.request(
                    request, result_type, progress_callback=progress_callback, timed=False
                )
        finally:
            self.front.in_flight.remove(call)


class _RoundTrip:
    """A 2026-07-28 client's call that may ask it for input: run as a pending call, round by round."""

    def __init__(self, trips: RoundTrips, ctx: Ctx, backend: BackendConnection) -> None:
        self.trips = trips
        self.ctx = ctx
        self.backend = backend

    async def request(
        self,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        *,
        progress_callback: ProgressFnT | None = None,
    ) -> ResultT:
        return await self.trips.start(self.ctx, self.backend, request, result_type, progress_callback)


Requester = BackendConnection | _BoundSession | _RoundTrip


class Relay:
    """Decides per request whether the shared session will do, and owns the dedicated ones."""

    def __init__(
        self,
        backends: Callable[[], list[BackendConnection]],
        guard: Guard,
        *,
        input_timeout: float,
        max_pending: int,
        spares: bool = True,
    ) -> None:
        self.pool = SessionPool()
        self.guard = guard
        self.input_timeout = input_timeout
        self.round_trips = RoundTrips(
            self.pool, guard, max_pending=max_pending, input_timeout=input_timeout, spares=spares
        )
        self._backends = backends

    def attach(self, task_group: anyio.abc.TaskGroup) -> None:
        self.pool.attach(task_group)
        self.round_trips.attach(task_group)

    def stop(self) -> None:
        self.round_trips.stop()
        self.pool.stop()

    def backend_changed(self, backend: BackendConnection) -> None:
        self.round_trips.backend_changed(backend)

    # --- routing ---------------------------------------------------------------------------------

    def _front(self, ctx: Ctx | None, *, create: bool = False) -> FrontClient | None:
        if ctx is None:
            return None
        connection: Connection = ctx.session._connection
        front = connection.state.get(STATE_KEY)
        if front is not None:
            if front is not False:
                front.last_session = ctx.session
                return front  # type: ignore[no-any-return]
            if not create:
                return None
        # Only handshake-era clients with a back-channel can be relayed to.
        if connection.protocol_version in MODERN_PROTOCOL_VERSIONS or not connection.has_standalone_channel:
            return None
        capabilities = connection.client_capabilities
        always = capabilities is not None and any(
            c is not None for c in (capabilities.sampling, capabilities.elicitation, capabilities.roots)
        )
        if not always and not create:
            connection.state[STATE_KEY] = False  # cached: the shared path serves this client
            return None
        front = FrontClient(
            connection, self.pool, self.guard, self.input_timeout, always=always, last_session=ctx.session
        )
        connection.state[STATE_KEY] = front
        connection.exit_stack.push_async_callback(front.close)
        return front

    async def route(self, ctx: Ctx | None, backend: BackendConnection) -> Requester:
        """The shared connection, this client's own session to `backend` when it needs one, or a session
        of the call's own for a 2026-07-28 client the backend may have to ask something."""
        if ctx is not None and backend.state is BackendState.READY and asks_by_round_trip(ctx):
            return _RoundTrip(self.round_trips, ctx, backend)
        front = self._front(ctx)
        if front is None or ctx is None or backend.state is not BackendState.READY:
            return backend
        if not front.always and backend.name not in front.sessions:
            return backend  # only logging/subscriptions asked for a session, and not with this backend
        return _BoundSession(front, await front.session_for(backend), ctx)

    # --- requests the front forwards to every backend or a chosen one ----------------------------

    async def set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        front = self._front(ctx, create=True)
        if front is None:
            return types.EmptyResult()
        front.log_level = params.level
        request = types.SetLevelRequest(params=params)
        for backend in self._backends():
            if backend.capabilities is None or backend.capabilities.logging is None:
                continue
            session = await front.session_for(backend)
            await session.request(request, types.EmptyResult)
        return types.EmptyResult()

    async def subscribe(self, ctx: Ctx, backend: BackendConnection, uri: str, subscribe: bool) -> types.EmptyResult:
        front = self._front(ctx, create=True)
        if front is None:
            raise MCPError(types.INVALID_REQUEST, "resource subscriptions need a session with a back-channel")
        uris = front.subscriptions.setdefault(backend.name, set())
        if not subscribe and uri not in uris:
            return types.EmptyResult()
        session = await front.session_for(backend)
        if subscribe:
            await session.request(
                types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri)), types.EmptyResult
            )
            uris.add(uri)
        else:
            await session.request(
                types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri)), types.EmptyResult
            )
            uris.discard(uri)
        return types.EmptyResult()

    async def roots_changed(self, ctx: Ctx, params: types.NotificationParams | None) -> None:
        front = self._front(ctx)
        if front is None:
            return
        for session in list(front.sessions.values()):
            await _deliver(session.notify(types.RootsListChangedNotification()))
