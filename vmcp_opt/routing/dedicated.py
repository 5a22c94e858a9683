"""A caller's own backend sessions, for what one shared session cannot route.

A caller that can answer server-to-client requests (it declared sampling, elicitation or roots), or
that asked for log messages (`logging/setLevel`) or resource updates (`resources/subscribe`), gets its
own session to each backend it uses (`DedicatedSession`). Everything those sessions receive is for that
caller alone:

- `sampling/createMessage`, `elicitation/create`, `roots/list` go to the client on the stream of the
  call that caused them (the one call in flight; with several, the latest one's: the client may hold no
  standalone stream here), and the answer goes back to the same backend session. Cancellation travels
  both ways through the SDK's dispatchers. Roots only to and from a backend whose `roots` setting relays them
  (not a stdio one, by default: the client's folders are not the gateway host's), decided where every kind of
  dedicated session is made (backends/session_pool.py `DedicatedSession`).
- log messages likewise; `resources/updated` on the client's standalone stream, and only for a URI this
  caller subscribed to at that backend (in normal form, routing/resource_uris.py): a backend may announce
  every URI it serves, and a client hears only of those it asked for.

Every other caller stays on the shared, faster path. A caller's dedicated sessions are closed when its
connection closes (`Caller.lifetime`), or when one has been idle for `limits.dedicated_idle_timeout`
(reopened, with the caller's log level and subscriptions, at its next use); how many there are, per
caller and in total, is bounded by a `Budget` (each may be a process, for a stdio backend), and how often one
caller may start them by a `StartRate`: closing a session frees its slot, so the budget alone let a client that
opens, calls and closes in a loop start a process per loop. The caller of both is `caller_key` (the verified
subject, else the client's address), not the session: a client opens sessions freely, and one address with many
of them must not take every slot. The time a backend spends waiting for the
client's answer counts against `timeouts.input`, not the call.

A `token_exchange` backend's session opens only once the caller's token is exchanged. Opening is one at a
time per caller and backend, so a successful exchange serves every call that waited for it; a failed one
(refused, or the token endpoint unreachable) is the answer, for `REFUSAL_REUSE` seconds, to every call with
the same token: those that waited for it and those that come soon after. A burst of calls with a token the
endpoint refuses costs one token request, not one each in turn. A new token is tried at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from collections import Counter
from collections.abc import Awaitable, Container
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.client.session import ClientRequestContext
from mcp.server.session import ServerSession
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel

from vmcp_opt.auth import Caller
from vmcp_opt.auth.caller import caller_key
from vmcp_opt.backends.connection import BackendConnection
from vmcp_opt.backends.credentials import BackendAuth, SubjectToken
from vmcp_opt.backends.errors import CredentialError
from vmcp_opt.backends.session_pool import DedicatedSession, SessionCallbacks, SessionPool
from vmcp_opt.health import CallClock, Guard
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing.budget import Bucket, Budget, LimitReached, TokenBuckets
from vmcp_opt.routing.resource_uris import MalformedResourceUri, normalized_uri

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT", bound=BaseModel)

# Seconds a failed token exchange answers the same caller's same token, with no new request: long enough for
# a burst of parallel calls, short enough that a token the authorization server now accepts is soon tried.
REFUSAL_REUSE = 5.0

# Callers whose recent session starts are remembered; past it the least recently seen is forgotten (it then gets a
# fresh burst: what a flood from more addresses than this gains, while `Budget` still bounds sessions at once).
START_RATE_CALLERS = 10_000
# The smallest burst of starts, whatever the at-once cap: with a cap of 1 or 2, a client that reconnects, or a
# session reaped when idle and reopened, would otherwise wait seconds for a start it is not churning.
START_BURST_FLOOR = 8
# Seconds a cancelled call waits for its questions' cancellations to be written to the client (the SDK bounds
# each write by its own, shorter, deadline).
WITHDRAW_WAIT = 5.0


class StartRate:
    """How often each caller may start a dedicated session: a token bucket per `caller_key`, `burst` starts at
    once, refilled at `rate` a second. `take` spends one or raises `LimitReached` naming `setting`."""

    def __init__(self, *, burst: int, rate: float, setting: str) -> None:
        self.burst = burst
        self.rate = rate
        self.setting = setting
        self._buckets = TokenBuckets(anyio.current_time, START_RATE_CALLERS)
        self._log = ThrottledLog(logger)

    def take(self, caller: str) -> None:
        refused = self._buckets.take_now([Bucket(caller, self.rate, self.burst, self.setting)])
        if refused is None:
            return
        what = f"this caller started {self.burst} dedicated backend sessions lately"
        self._log.warning(self.setting, "refused: %s (%s), caller %s", what, self.setting, caller)
        raise LimitReached(what, self.setting, math.ceil(refused[1]))


@dataclass(frozen=True)
class Refusal:
    """A failed exchange of one caller's token for one backend, keyed by the token's digest, never the token."""

    subject: str  # `SubjectToken.key`: the caller id and a SHA-256 digest of the token
    error: CredentialError
    until: float  # anyio's clock

    def again(self) -> CredentialError:
        """The failure for one more call: a copy, so calls that raise it at once share no traceback."""
        error = CredentialError(self.error.backend, self.error.step, "")
        error.args = self.error.args
        return error


@dataclass(eq=False)
class OpenAsk:
    """A backend's question relayed on a call's stream, which the call's end may have to withdraw."""

    backend: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class InFlight:
    session: ServerSession | None
    request_id: types.RequestId | None
    clock: CallClock = field(default_factory=CallClock)
    asks: list[OpenAsk] = field(default_factory=list)  # the questions relayed on this call's stream


@dataclass(eq=False)
class CallerBackends:
    """One caller's dedicated backend sessions and its calls in flight on them."""

    caller: Caller
    pool: SessionPool
    budget: Budget
    input_timeout: float
    always: bool  # the client can answer server-to-client requests: every call needs its own session
    starts: StartRate
    sessions: dict[str, DedicatedSession] = field(default_factory=dict)
    in_flight: list[InFlight] = field(default_factory=list)
    last_session: ServerSession | None = None
    log_level: types.LoggingLevel | None = None
    # The sessions open when `log_level` last changed that have not been told it yet (`SessionChooser.set_level`):
    # one opened since heard it as it opened (`_restore`), so a client repeating its level costs no request.
    level_untold: weakref.WeakSet[DedicatedSession] = field(default_factory=weakref.WeakSet)
    level_lock: anyio.Lock = field(default_factory=anyio.Lock)  # one change at a time: the last one asked wins
    subscriptions: dict[str, set[str]] = field(default_factory=dict)  # backend -> URIs
    closed: bool = False
    # Per backend: calls on its session now, and when it was last used (anyio's clock).
    in_use: Counter[str] = field(default_factory=Counter)
    last_used: dict[str, float] = field(default_factory=dict)
    # Per token_exchange backend: the caller's token its session's requests are exchanged from.
    subjects: dict[str, SubjectToken] = field(default_factory=dict)
    # Per token_exchange backend: the last failed exchange (one each, so as bounded as the backends).
    refusals: dict[str, Refusal] = field(default_factory=dict)
    _locks: dict[str, anyio.Lock] = field(default_factory=dict)
    # Whose budget these sessions spend: every session of one address (or verified subject) shares it.
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = caller_key(self.caller)

    # --- sessions --------------------------------------------------------------------------------

    async def session_for(self, backend: BackendConnection, auth: BackendAuth | None = None) -> DedicatedSession:
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
            if auth is None and backend.credentials.per_caller:
                raise MCPError(types.INVALID_REQUEST, f"backend '{backend.name}' is reached only with a call's token")
            subject = auth.subject.key if auth is not None and auth.subject is not None else None
            self._raise_if_refused(backend.name, subject)
            if self.sessions.pop(backend.name, None) is not None:
                self.budget.release(self.key)  # it ended by itself: its slot is free again
            self.budget.acquire(self.key)
            try:
                self.starts.take(self.key)
                relay = auth is None or self.always  # a credentials-only session takes the backend's best era
                session = await self.pool.open(backend, self._callbacks(backend.name, relay), auth)
            except BaseException as exc:
                self.budget.release(self.key)
                if isinstance(exc, CredentialError) and subject is not None:
                    self.refusals[backend.name] = Refusal(subject, exc, anyio.current_time() + REFUSAL_REUSE)
                raise
            if self.closed:
                # The client left while it opened: `close` has run and cannot see it, so it goes now. (Today
                # `close` runs only once the connection's requests are cancelled; this keeps the set sound
                # should an opening ever outlive them.)
                self.budget.release(self.key)
                session.close()
                raise MCPError(types.CONNECTION_CLOSED, "the client session has ended")
            self.refusals.pop(backend.name, None)
            self.sessions[backend.name] = session
            self.last_used[backend.name] = anyio.current_time()
            await self._restore(session)
            return session

    def _raise_if_refused(self, backend: str, subject: str | None) -> None:
        """The recent failed exchange of this same token, raised again instead of a new token request."""
        refusal = self.refusals.get(backend)
        if refusal is None or subject is None:
            return
        if refusal.subject != subject or anyio.current_time() >= refusal.until:
            del self.refusals[backend]  # a new token, or the refusal is old: the endpoint is asked again
            return
        raise refusal.again()

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

    def subscription_count(self) -> int:
        return sum(len(uris) for uris in self.subscriptions.values())

    async def close(self) -> None:
        self.closed = True
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            self.budget.release(self.key)
            await session.aclose()

    def reap_idle(self, idle: float) -> int:
        """Close the sessions unused for `idle` seconds that carry no call and no subscription."""
        now = anyio.current_time()
        reaped = 0
        for name, session in list(self.sessions.items()):
            if self.in_use[name] or self.subscriptions.get(name) or now - self.last_used.get(name, now) < idle:
                continue
            del self.sessions[name]
            self.budget.release(self.key)
            session.close()
            reaped += 1
        return reaped

    async def send(
        self,
        session: DedicatedSession,
        front: ServerSession | None,
        request_id: types.RequestId | None,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        guard: Guard,
        progress: ProgressFnT | None,
        headers: dict[str, str] | None = None,
    ) -> ResultT:
        """A call on `session`, in flight for this caller's front request while it runs."""
        call = InFlight(front, request_id)
        self.in_flight.append(call)
        self.in_use[session.name] += 1
        try:
            async with guard(session.name, call.clock):
                return await session.request(
                    request, result_type, progress_callback=progress, timed=False, headers=headers
                )
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._withdraw_asks(call, session.name)
            raise
        finally:
            self.in_flight.remove(call)
            self.in_use[session.name] -= 1
            self.last_used[session.name] = anyio.current_time()

    async def _withdraw_asks(self, call: InFlight, backend: str) -> None:
        """A cancelled call's questions to the client, cancelled while its stream is open. Over HTTP the
        stream closes with the call's -32800 answer, and the backend's own cancel of its question comes after
        it: the SDK's notifications/cancelled went to the closed stream, the client's dialog stayed open and a
        late answer was taken. Only when the call is the caller's one call on that backend's session: a
        backend's question does not say which call it is for, and another call may be the one asking."""
        if self.in_use[backend] != 1:
            return
        asks = [ask for ask in call.asks if ask.backend == backend]
        for ask in asks:
            ask.scope.cancel()
        with anyio.move_on_after(WITHDRAW_WAIT):
            for ask in asks:
                await ask.done.wait()

    # --- what the backend sends ------------------------------------------------------------------

    def _callbacks(self, backend: str, relay: bool = True) -> SessionCallbacks:
        if not relay:  # a session only for the caller's own credentials: the backend asks the client nothing
            return SessionCallbacks(capabilities=types.ClientCapabilities())
        return SessionCallbacks.mirroring(
            self.caller.capabilities or types.ClientCapabilities(),
            sampling=lambda context, params: self._sampling(backend, context, params),
            elicitation=lambda context, params: self._elicitation(backend, context, params),
            list_roots=lambda context: self._list_roots(backend, context),
            logging=self._log,
            notification=lambda message: self._notification(backend, message),
        )

    def _target(
        self, *, question: bool = False
    ) -> tuple[ServerSession | None, ServerMessageMetadata | None, InFlight | None]:
        """The call that caused a backend's message: the one in flight, else the standalone stream. A `question`
        asked while several calls are in flight goes on the latest one's stream: the client reads that one, where
        it may have opened no standalone stream, or opened it on another replica (`sessions.store: redis`), and a
        question nobody reads held its call (and the others) for `timeouts.input`."""
        if len(self.in_flight) == 1 or (question and self.in_flight):
            call = self.in_flight[-1]
            return call.session, ServerMessageMetadata(related_request_id=call.request_id), call
        if self.in_flight:
            return self.in_flight[-1].session, None, None
        return self.last_session, None, None

    async def _ask(
        self, backend: str, request: types.ServerRequest, result_type: type[ResultT]
    ) -> ResultT | types.ErrorData:
        session, metadata, target = self._target(question=True)
        if session is None:
            return types.ErrorData(code=types.INTERNAL_ERROR, message="the client is not connected")
        ask = OpenAsk(backend)
        if target is not None:
            target.asks.append(ask)
        # While the client answers, the calls in flight are not the backend's time.
        with contextlib.ExitStack() as waits:
            for call in list(self.in_flight):
                waits.enter_context(call.clock.paused())
            try:
                with ask.scope, anyio.fail_after(self.input_timeout):
                    return await session.send_request(request, result_type, metadata=metadata)
            except MCPError as exc:
                return exc.error
            except TimeoutError:
                return types.ErrorData(
                    code=types.REQUEST_TIMEOUT, message=f"the client did not answer within {self.input_timeout:g}s"
                )
            finally:
                ask.done.set()
                if target is not None:
                    target.asks.remove(ask)
        # Withdrawn (`_withdraw_asks`): the SDK told the client; the backend's call is being cancelled too.
        return types.ErrorData(code=types.REQUEST_TIMEOUT, message="the client's call was cancelled")

    async def _sampling(
        self, backend: str, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        request = types.CreateMessageRequest(params=params)
        if params.tools:
            return await self._ask(backend, request, types.CreateMessageResultWithTools)
        return await self._ask(backend, request, types.CreateMessageResult)

    async def _elicitation(
        self, backend: str, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        return await self._ask(backend, types.ElicitRequest(params=params), types.ElicitResult)

    async def _list_roots(self, backend: str, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        return await self._ask(backend, types.ListRootsRequest(), types.ListRootsResult)

    async def _log(self, params: types.LoggingMessageNotificationParams) -> None:
        session, metadata, _ = self._target()
        if session is None:
            return
        related = metadata.related_request_id if metadata is not None else None
        await deliver(session.send_notification(types.LoggingMessageNotification(params=params), related))

    async def _notification(self, backend: str, message: types.ServerNotification) -> None:
        if not isinstance(message, types.ResourceUpdatedNotification) or self.last_session is None:
            return
        uri = subscribed_as(self.subscriptions.get(backend, frozenset()), str(message.params.uri))
        if uri is None:
            return  # MCP: `resources/updated` only for the URIs the client subscribed to
        # Not tied to a request: a 2025-11-25 session sends it on the standalone stream.
        await deliver(self.last_session.send_resource_updated(uri))


def subscribed_as(subscribed: Container[str], uri: str) -> str | None:
    """Which of `subscribed` (URIs as routed: normal form, or as the backend listed them) a backend's update of
    `uri` is for: that URI, or its normal form when the backend spells it otherwise; None when it is for none
    (nor when it has no normal form). Constant time: a backend may send updates by the thousand."""
    if uri in subscribed:
        return uri
    try:
        normal = normalized_uri(uri)
    except MalformedResourceUri:
        return None
    return normal if normal in subscribed else None


async def deliver(send: Awaitable[None]) -> None:
    try:
        await send
    except Exception as exc:  # a client gone away must not break the backend session
        logger.debug("relay: message not delivered to the client: %r", exc)
