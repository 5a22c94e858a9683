"""Which backend session carries a caller's request: every kind behind one `BackendSession.send`.

- the backend's shared session: every caller that needs nothing of its own;
- the caller's dedicated session (`dedicated.py`): a 2025-11-25 client a backend may ask something,
  or that asked for log messages or resource updates;
- a pending call of its own (`round_trips/`): a 2026-07-28 client's tool call a backend may need to ask
  something during, or the retry that continues one;
- a 2026-07-28 backend's own round, continued on the shared session.

The router hands every kind the same guard (the backend's circuit breaker and deadline); each applies
it around the backend exchange it makes, which for a pending call outlives the front request.

Near 500 lines on purpose: choosing a request's session for every kind above, and the bounds on dedicated
sessions (at once and starts per caller), are one decision; the dedicated sessions themselves are routing/dedicated.py.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio.abc
import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types.methods import INPUT_REQUIRED_METHODS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from vmcp_opt.auth import Caller
from vmcp_opt.auth.caller import caller_key
from vmcp_opt.backends.connection import BackendConnection, BackendState, BackendUnavailable
from vmcp_opt.backends.credentials import SubjectToken
from vmcp_opt.backends.errors import CredentialError
from vmcp_opt.backends.request_logs import RequestLogs, relaying, tied_logs
from vmcp_opt.backends.session_pool import DedicatedSession, SessionPool
from vmcp_opt.config import LimitsConfig
from vmcp_opt.display import shorten
from vmcp_opt.health import Guard
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing.budget import Budget, LimitReached
from vmcp_opt.routing.dedicated import START_BURST_FLOOR, CallerBackends, StartRate, deliver
from vmcp_opt.routing.exchange import Exchange
from vmcp_opt.routing.round_trips import (
    BackendRound,
    PendingRound,
    RoundOwners,
    RoundTrips,
    or_input_required,
    passed_through,
    with_round,
)

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT", bound=BaseModel)


class BackendSession(Protocol):
    async def send(
        self, request: types.Request[Any, Any], result_type: type[ResultT], guard: Guard, progress: ProgressFnT | None
    ) -> ResultT: ...


@dataclass(frozen=True)
class SharedSession:
    """The backend's one long-lived session; a 2026-07-28 backend's `InputRequiredResult` passes through."""

    backend: BackendConnection
    protocol_version: str  # the caller's: a backend's round can only go back to a 2026-07-28 client
    round_state: BackendRound | None = None
    responses: types.InputResponses | None = None
    headers: dict[str, str] | None = None  # the client's, allow-listed for this backend
    logs: RequestLogs | None = None  # the client asked for the call's log messages (backends/request_logs.py)

    async def send(
        self, request: types.Request[Any, Any], result_type: type[ResultT], guard: Guard, progress: ProgressFnT | None
    ) -> ResultT:
        if self.round_state is not None:
            request = with_round(request, self.round_state.state, self.responses)
        if self.logs is not None:
            request = self.logs.asked(request, self.backend)
        async with guard(self.backend.name, None), relaying(self.logs, self.backend):
            if (
                self.backend.protocol_version not in MODERN_PROTOCOL_VERSIONS
                or request.method not in INPUT_REQUIRED_METHODS
            ):
                return await self.backend.request(
                    request, result_type, progress_callback=progress, headers=self.headers
                )
            result = await self.backend.request(
                request, or_input_required(result_type), progress_callback=progress, headers=self.headers
            )
        if isinstance(result, types.InputRequiredResult):
            raise passed_through(self.protocol_version, self.backend.name, result)
        return result


@dataclass(frozen=True)
class CallerSession:
    """The caller's dedicated session to one backend, seen from one front request."""

    owner: CallerBackends
    session: DedicatedSession
    exchange: Exchange

    async def send(
        self, request: types.Request[Any, Any], result_type: type[ResultT], guard: Guard, progress: ProgressFnT | None
    ) -> ResultT:
        headers = forwarded_headers(self.exchange, self.session.connection)
        return await self.owner.send(
            self.session,
            self.exchange.session,
            self.exchange.request_id,
            request,
            result_type,
            guard,
            progress,
            headers,
        )


@dataclass(frozen=True)
class RoundTripSession:
    """A pending call of its own: started by a first call, continued by each retry."""

    trips: RoundTrips
    caller: Caller
    exchange: Exchange
    backend: BackendConnection | None  # None for a retry: the pending call knows its backend

    async def send(
        self, request: types.Request[Any, Any], result_type: type[ResultT], guard: Guard, progress: ProgressFnT | None
    ) -> ResultT:
        front = self.exchange.session
        assert front is not None
        round_ = self.exchange.round
        if isinstance(round_, PendingRound) and self.trips.owners.elsewhere(round_):
            return await self.trips.owners.relayed(round_, self.exchange.input_responses, result_type)
        if isinstance(round_, PendingRound):
            return await self.trips.resume(front, round_, self.exchange.input_responses, result_type, progress)
        assert self.backend is not None
        capabilities = self.caller.capabilities or types.ClientCapabilities()
        # Counted against `caller_key`, not the caller's id: an anonymous 2026-07-28 client's id is new with each
        # request, so `max_pending_calls_per_caller` bounded nothing for it (as workflows' rounds are counted).
        return await self.trips.start(
            front, caller_key(self.caller), capabilities, self.backend, request, result_type, guard, progress
        )


async def _opened_told(owner: CallerBackends, backend: BackendConnection) -> None:
    """A session opened for the log level, which opening tells it; one opened but not told (the backend refused the
    level) is told again by the client's next `logging/setLevel`, even of the same level."""
    try:
        await owner.session_for(backend)
    except BaseException:
        opened = owner.sessions.get(backend.name)
        if opened is not None and not opened.closed:
            owner.level_untold.add(opened)
        raise


class SessionChooser:
    """Chooses the session per (caller, request) and owns the dedicated and round-trip ones.

    Dedicated sessions are bounded per caller and in total (`limits.max_dedicated_sessions*`), their starts per
    caller (`limits.dedicated_session_start_rate`), and they are closed after `limits.dedicated_idle_timeout`
    unused; a caller, for them and for subscriptions, is `caller_key` (the verified subject, else the address),
    not the MCP session a client opens at will. A call that would need one past the bound goes on the
    shared session instead (its backend cannot ask the client anything then, which the log says once a
    minute); a log level or subscription past it is refused with when to retry. A subscription to a backend
    that takes none is refused without one (`_refuse_unsubscribable`).
    """

    def __init__(
        self,
        backends: Callable[[], list[BackendConnection]],
        *,
        input_timeout: float,
        max_pending: int,
        spares: bool = True,
        limits: LimitsConfig | None = None,
        owners: RoundOwners | None = None,
    ) -> None:
        self.limits = limits = limits or LimitsConfig()
        # Every kind of round held in memory, and the relay of retries between replicas.
        self.owners = owners or RoundOwners()
        self.pool = SessionPool()
        self.input_timeout = input_timeout
        self.round_trips = RoundTrips(
            self.pool,
            max_pending=max_pending,
            max_pending_per_caller=limits.max_pending_calls_per_caller,
            input_timeout=input_timeout,
            spares=spares,
            owners=self.owners,
        )
        self.dedicated = Budget(
            "dedicated backend sessions",
            total=limits.max_dedicated_sessions,
            per_caller=limits.dedicated_sessions_per_caller(),
            retry_after=limits.dedicated_idle_timeout,
            total_setting="limits.max_dedicated_sessions",
            caller_setting="limits.max_dedicated_sessions_per_caller",
        )
        self.starts = StartRate(
            burst=max(limits.dedicated_sessions_per_caller(), START_BURST_FLOOR),
            rate=limits.dedicated_session_start_rate,
            setting="limits.dedicated_session_start_rate",
        )
        self._backends = backends
        self._callers: dict[str, CallerBackends] = {}
        # Per backend that answered `resources/subscribe` with "Method not found": its connection's session
        # number then (`BackendConnection.sessions`), so a restarted backend is asked again.
        self._unsubscribable: dict[str, int] = {}
        self._degraded = ThrottledLog(logger)
        self._reaper: anyio.CancelScope | None = None  # made in the event loop, by the reaper itself
        self._stopped = False

    def attach(self, task_group: anyio.abc.TaskGroup) -> None:
        self.pool.attach(task_group)
        self.round_trips.attach(task_group)
        task_group.start_soon(self._reap_idle_sessions, name="reap-idle-dedicated-sessions")

    async def _reap_idle_sessions(self) -> None:
        idle = self.limits.dedicated_idle_timeout
        if self._stopped:
            return
        with anyio.CancelScope() as self._reaper:
            while True:
                await anyio.sleep(max(0.5, idle / 4))
                reaped = sum(owner.reap_idle(idle) for owner in list(self._callers.values()))
                for caller_id, owner in list(self._callers.items()):  # callers without a connection to end
                    if owner.caller.lifetime is None and not owner.sessions:
                        del self._callers[caller_id]
                if reaped:
                    logger.info("closed %d dedicated backend session(s) idle for %gs", reaped, idle)

    def stop(self) -> None:
        self._stopped = True
        if self._reaper is not None:
            self._reaper.cancel()
        self.round_trips.stop()
        self.pool.stop()

    def backend_changed(self, backend: BackendConnection) -> None:
        self.round_trips.backend_changed(backend)  # its spare sessions from before a reconnect are stale
        self._unsubscribable.pop(backend.name, None)

    async def choose(self, caller: Caller, exchange: Exchange, backend: BackendConnection | None) -> BackendSession:
        """The session for this request; `backend` is None only for a retry, whose round names its target."""
        round_ = exchange.round
        if isinstance(round_, PendingRound):
            return RoundTripSession(self.round_trips, caller, exchange, None)
        if isinstance(round_, BackendRound):
            return SharedSession(self._named(round_.backend), caller.protocol_version, round_, exchange.input_responses)
        if backend is None:
            raise MCPError(types.INTERNAL_ERROR, "a request without a round must name its backend")
        if backend.credentials.per_caller:
            return await self._own_credentials(caller, exchange, backend)  # never the shared session
        headers = forwarded_headers(exchange, backend)
        if backend.state is not BackendState.READY or exchange.session is None:
            return SharedSession(backend, caller.protocol_version, headers=headers)
        if _asks_by_round_trip(caller, exchange):
            return RoundTripSession(self.round_trips, caller, exchange, backend)
        owner = self._owner(caller, exchange)
        logs = exchange.log_relay(owner.log_level if owner is not None else None) if tied_logs(backend) else None
        if owner is None or (not owner.always and backend.name not in owner.sessions):
            return SharedSession(backend, caller.protocol_version, headers=headers, logs=logs)
        try:
            return CallerSession(owner, await owner.session_for(backend), exchange)
        except LimitReached as exc:
            self._degraded.warning(
                exc.setting,
                "caller %s: no dedicated session (%s); its calls go on the shared session, where the backend "
                "cannot ask the client anything",
                caller.id,
                exc.message,
            )
            return SharedSession(backend, caller.protocol_version, headers=headers, logs=logs)

    async def _own_credentials(self, caller: Caller, exchange: Exchange, backend: BackendConnection) -> CallerSession:
        """A token_exchange backend: the caller's own session, carrying the caller's exchanged token."""
        token = caller.token
        if token is None:
            raise CredentialError(backend.name, "token exchange", "this caller presented no token to exchange")
        owner = self._owner(caller, exchange, own_credentials=True)
        assert owner is not None
        subject = owner.subjects.get(backend.name)
        if subject is None:
            subject = owner.subjects[backend.name] = SubjectToken(caller.id, token.value)
        subject.update(caller.id, token.value)  # a session's caller may have refreshed its token
        try:
            session = await owner.session_for(backend, backend.credentials.for_caller(subject))
        except LimitReached as exc:
            raise MCPError(
                types.INTERNAL_ERROR, f"backend '{backend.name}' needs a session of this caller's own: {exc.message}"
            ) from None
        return CallerSession(owner, session, exchange)

    def _named(self, name: str) -> BackendConnection:
        for backend in self._backends():
            if backend.name == name:
                return backend
        raise BackendUnavailable(f"backend '{name}' is not available")

    def _owner(
        self, caller: Caller, exchange: Exchange, *, create: bool = False, own_credentials: bool = False
    ) -> CallerBackends | None:
        """The caller's dedicated sessions: made for a client a backend may ask, on `create`, or for a backend
        that must see the caller's own credentials (any caller; reaped when idle)."""
        owner = self._callers.get(caller.id)
        if owner is not None:
            owner.last_session = exchange.session
            return owner
        # Only handshake-era clients with a back-channel, whose connection ends some day, can be relayed to.
        relayable = caller.back_channel and caller.lifetime is not None and not caller.lifetime.ended
        if not relayable and not own_credentials:
            return None
        always = relayable and caller.can_answer_requests
        if not always and not create and not own_credentials:
            return None
        owner = CallerBackends(
            caller,
            self.pool,
            self.dedicated,
            self.input_timeout,
            always=always,
            starts=self.starts,
            last_session=exchange.session,
        )
        self._callers[caller.id] = owner

        async def release() -> None:
            self._callers.pop(caller.id, None)
            await owner.close()

        if relayable and caller.lifetime is not None:
            caller.lifetime.on_end(release)
        return owner

    # --- requests the front forwards to every backend or a chosen one ----------------------------

    async def set_level(self, caller: Caller, exchange: Exchange, level: types.LoggingLevel) -> None:
        owner = self._owner(caller, exchange, create=True)
        if owner is None:
            return
        async with owner.level_lock:
            if owner.log_level != level:
                owner.log_level = level
                owner.level_untold = weakref.WeakSet(s for s in owner.sessions.values() if not s.closed)
            request = types.SetLevelRequest(params=types.SetLevelRequestParams(level=level))
            for backend in self._backends():
                if (
                    backend.capabilities is None
                    or backend.capabilities.logging is None
                    or backend.credentials.per_caller
                ):
                    continue  # a token_exchange backend's session is opened by a call, with the caller's token
                session = owner.sessions.get(backend.name)
                if session is None or session.closed:
                    await _opened_told(owner, backend)
                elif session in owner.level_untold:
                    await session.request(request, types.EmptyResult)
                    owner.level_untold.discard(session)

    async def subscribe(
        self, caller: Caller, exchange: Exchange, backend: BackendConnection, uri: str, subscribe: bool
    ) -> None:
        if subscribe:
            self._refuse_unsubscribable(backend, uri)
        owner = self._owner(caller, exchange, create=True)
        if owner is None:
            raise MCPError(types.INVALID_REQUEST, "resource subscriptions need a session with a back-channel")
        uris = owner.subscriptions.setdefault(backend.name, set())
        if not subscribe and uri not in uris:
            return
        most = self.limits.max_subscriptions_per_caller
        if subscribe and uri not in uris and self._subscriptions_of(owner.key) >= most:
            raise MCPError(
                types.INVALID_REQUEST,
                f"this caller already holds {most} resource subscriptions (limits.max_subscriptions_per_caller); "
                "unsubscribe from one first",
                {"limit": "limits.max_subscriptions_per_caller", "most": most},
            )
        session = await owner.session_for(backend)
        if subscribe:
            try:
                await session.request(
                    types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri)), types.EmptyResult
                )
            except MCPError as exc:
                if exc.error.code == types.METHOD_NOT_FOUND:
                    self._unsubscribable[backend.name] = backend.sessions
                raise _no_subscriptions(exc, backend, uri) from None
            uris.add(uri)
        else:
            await session.request(
                types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri)), types.EmptyResult
            )
            uris.discard(uri)

    def _refuse_unsubscribable(self, backend: BackendConnection, uri: str) -> None:
        """Refuse, before a dedicated session (a process, for a stdio backend) is opened for it, a subscription
        to a backend known to take none: a handshake-era shared session whose capabilities list none (a
        2026-07-28 one cannot tell, see `_no_subscriptions`), or one that answered "Method not found" to it
        since it last (re)connected."""
        learned = self._unsubscribable.get(backend.name) == backend.sessions
        if learned or _lists_no_subscriptions(backend):
            raise _not_subscribable(backend, uri)

    def _subscriptions_of(self, key: str) -> int:
        """The subscriptions of every session of one caller (`caller_key`): at most `limits.max_sessions` owners."""
        return sum(owner.subscription_count() for owner in self._callers.values() if owner.key == key)

    async def roots_changed(self, caller: Caller) -> None:
        owner = self._callers.get(caller.id)
        if owner is None:
            return
        for session in list(owner.sessions.values()):
            await deliver(session.notify(types.RootsListChangedNotification()))

    def dedicated_sessions(self) -> int:
        return sum(len(owner.sessions) for owner in self._callers.values())


def _no_subscriptions(exc: MCPError, backend: BackendConnection, uri: str) -> MCPError:
    """The backend's own "Method not found" for `resources/subscribe`, a method the gateway offers, said as
    what it means for this resource (capabilities seen on the shared connection cannot tell: a 2026-07-28
    one lists no subscriptions, while the client's own 2025-11-25 session may take them); other errors as
    they came."""
    if exc.error.code != types.METHOD_NOT_FOUND:
        return exc
    return _not_subscribable(backend, uri)


def _not_subscribable(backend: BackendConnection, uri: str) -> MCPError:
    return MCPError(
        types.INVALID_PARAMS,
        f"resource '{shorten(uri)}' cannot be subscribed to: its backend '{backend.name}' does not offer "
        "resource subscriptions; read it again to see changes",
        {"uri": shorten(uri, 512), "backend": backend.name},
    )


def _lists_no_subscriptions(backend: BackendConnection) -> bool:
    """The backend's shared session is of the handshake era, as a client's own session is, and its initialize
    listed no resource subscriptions."""
    capabilities = backend.capabilities
    if capabilities is None or backend.protocol_version is None:
        return False  # not connected yet: its own session will say
    if backend.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return False
    return capabilities.resources is None or not capabilities.resources.subscribe


def _asks_by_round_trip(caller: Caller, exchange: Exchange) -> bool:
    """A 2026-07-28 client's tool call that a backend may need to ask it something during.

    `prompts/get` and `resources/read` may carry rounds too, but backends hardly ever ask during them,
    and a session per read (a process, for a stdio backend) is too dear for that: they stay on the
    shared session, where a backend's own `InputRequiredResult` still passes through.
    """
    return (
        caller.protocol_version in MODERN_PROTOCOL_VERSIONS
        and exchange.method == "tools/call"
        and caller.can_answer_requests
    )


def forwarded_headers(exchange: Exchange, backend: BackendConnection) -> dict[str, str] | None:
    """The client's headers on `backend.config.auth.passthrough_headers` (validated: never credentials or
    hop-by-hop ones), for this request to that backend."""
    names = backend.config.auth.passthrough_headers
    if not names or exchange.headers is None:
        return None
    found = {name: value for name in names if (value := exchange.headers.get(name)) is not None}
    return found or None
