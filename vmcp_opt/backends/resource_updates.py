"""The gateway's own resource subscriptions at backends, for 2026-07-28 `subscriptions/listen` streams.

A 2026-07-28 client asks for `resources/updated` on its listen stream; the gateway follows each URI once at
the backend that serves it, on the backend's shared session, however many streams want it:

- a 2025-11-25 backend: `resources/subscribe` (and `resources/unsubscribe` once no stream wants the URI);
- a 2026-07-28 backend: one listen stream of the gateway's holding every URI followed there, opened again
  with the new set when it changes (the new one is acknowledged before the old one closes, so no update is
  lost in between; one may arrive twice, which a level trigger allows). A stream the backend ends while the
  session stays up is opened again for the same URIs, after a bounded series of waits (`REOPEN_DELAYS`).

What the backend then sends reaches `BackendConnection`'s message handler (a listen stream's events are
teed there too) and is published for the URIs followed, through `publish`; the listen handler
(server/listen.py) delivers each to the streams that asked for that URI alone. A session that ends takes
its subscriptions with it: the next one subscribes again to every URI still wanted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.subscriptions import listen
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from vmcp_opt.backends.connection import BackendConnection, BackendUnavailable
from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

Publish = Callable[[str], Awaitable[None]]


@dataclass(eq=False)
class _Followed:
    """One backend's URIs followed for listeners, on its current shared session."""

    refs: Counter[str] = field(default_factory=Counter)  # URI → listen streams that want it
    active: frozenset[str] = frozenset()  # subscribed at the backend on `session`
    session: ClientSession | None = None
    group: anyio.abc.TaskGroup | None = None  # lives as long as `session`
    stream: anyio.CancelScope | None = None  # a 2026-07-28 backend: the listen stream holding `active`
    lock: anyio.Lock = field(default_factory=anyio.Lock)


class ResourceUpdates:
    """Reference-counted subscriptions at backends; a `SessionWatcher` of every backend connection."""

    def __init__(self, publish: Publish, *, most: int) -> None:
        self._publish = publish
        self._most = most  # distinct URIs followed, all backends together
        self._followed: dict[str, _Followed] = {}

    def watch(self, connections: Iterable[BackendConnection]) -> None:
        for connection in connections:
            connection.watch(self)

    def followed(self) -> int:
        return sum(len(state.refs) for state in self._followed.values())

    # --- what listen streams ask for -------------------------------------------------------------

    async def acquire(self, connection: BackendConnection, uris: list[str]) -> list[str]:
        """Follow `uris` at `connection`'s backend for one stream: those it will send updates for (each
        then held until `release`); the others (no subscriptions there, refused, past the bound) left out."""
        if not _offers_subscriptions(connection):
            return []
        state = self._followed.setdefault(connection.name, _Followed())
        # Shielded (each backend request is bounded by its call timeout): a stream cancelled meanwhile must
        # still learn what was subscribed for it, to release it.
        with anyio.CancelScope(shield=True):
            async with state.lock:
                if state.session is None:
                    return []  # between two sessions: nothing to subscribe on
                room = self._most - self.followed()
                new = [uri for uri in dict.fromkeys(uris) if uri not in state.active]
                wanted = frozenset(new[: max(room, 0)])
                if wanted:
                    state.active |= await self._subscribe(connection, state, wanted)
            held = [uri for uri in dict.fromkeys(uris) if uri in state.active]
            state.refs.update(held)
        return held

    def release(self, connection: BackendConnection, uris: list[str]) -> None:
        """A stream that held `uris` ended: a URI no stream wants any more is unsubscribed at the backend
        (in the backend session's task group: the stream's own task is being cancelled)."""
        state = self._followed.get(connection.name)
        if state is None:
            return
        state.refs.subtract(uris)
        unwanted = [uri for uri in uris if state.refs[uri] <= 0]
        for uri in unwanted:
            del state.refs[uri]
        if unwanted and state.group is not None:
            state.group.start_soon(self._drop_unwanted, connection, state)

    # --- SessionWatcher ----------------------------------------------------------------------------

    async def session_ready(self, connection: BackendConnection, session: ClientSession) -> None:
        state = self._followed.setdefault(connection.name, _Followed())
        try:
            async with anyio.create_task_group() as group:
                async with state.lock:
                    state.session, state.group, state.stream, state.active = session, group, None, frozenset()
                    if state.refs and _offers_subscriptions(connection):  # a reconnect: subscribe again
                        state.active = await self._subscribe(connection, state, frozenset(state.refs))
                await anyio.sleep_forever()
        finally:
            if state.session is session:
                state.session, state.group, state.stream, state.active = None, None, None, frozenset()

    async def notified(self, connection: BackendConnection, message: types.ServerNotification) -> None:
        if not isinstance(message, types.ResourceUpdatedNotification):
            return
        state = self._followed.get(connection.name)
        uri = str(message.params.uri)
        if state is not None and state.refs[uri] > 0:
            await self._publish(uri)

    # --- at the backend ----------------------------------------------------------------------------

    async def _subscribe(self, connection: BackendConnection, state: _Followed, uris: frozenset[str]) -> frozenset[str]:
        """Subscribe to `uris` on top of `state.active`; returns those now subscribed of `uris`."""
        if connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return await self._relisten(connection, state, state.active | uris) & uris
        done: set[str] = set()
        for uri in sorted(uris):
            request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
            try:
                await connection.request(request, types.EmptyResult)
            except (MCPError, BackendUnavailable) as exc:
                logger.info("backend %s: no updates of %s for listeners: %s", connection.name, shorten(uri), exc)
                continue
            done.add(uri)
        return frozenset(done)

    async def _drop_unwanted(self, connection: BackendConnection, state: _Followed) -> None:
        async with state.lock:
            unwanted = frozenset(uri for uri in state.active if state.refs[uri] <= 0)
            if not unwanted or state.session is None:
                return
            if connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
                state.active = await self._relisten(connection, state, state.active - unwanted)
                return
            state.active -= unwanted
            for uri in sorted(unwanted):
                request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
                try:
                    await connection.request(request, types.EmptyResult)
                except (MCPError, BackendUnavailable) as exc:
                    logger.debug("backend %s: unsubscribe from %s failed: %s", connection.name, shorten(uri), exc)

    async def _relisten(self, connection: BackendConnection, state: _Followed, uris: frozenset[str]) -> frozenset[str]:
        """A 2026-07-28 backend: a listen stream for exactly `uris` replaces the current one once acknowledged;
        returns what the backend honoured."""
        old = state.stream
        honored: frozenset[str] = frozenset()
        state.stream = None
        if uris and state.session is not None and state.group is not None:
            try:
                state.stream, honored = await state.group.start(self._hold_stream, connection, state.session, uris)
            except RuntimeError as exc:  # the session ended meanwhile: its next one subscribes again
                logger.debug("backend %s: no listen stream: %s", connection.name, exc)
        if old is not None:
            old.cancel()
        return honored

    async def _hold_stream(
        self,
        connection: BackendConnection,
        session: ClientSession,
        uris: frozenset[str],
        *,
        task_status: anyio.abc.TaskStatus[tuple[anyio.CancelScope | None, frozenset[str]]],
    ) -> None:
        """Holds the listen stream for `uris` until cancelled (the followed set changed, or the session ended).

        A stream the backend ends while its session stays up is opened again for the same `uris`, after
        `REOPEN_DELAYS`: one warning when it drops, one info line when it is back, one warning when the
        attempts run out (the session's next start, or the next change of the set, listens again)."""
        with anyio.CancelScope() as scope:
            reopen = _Reopening(connection.name, len(uris))
            while True:
                try:
                    async with listen(session, resource_subscriptions=sorted(uris)) as subscription:
                        if not reopen.ever_open:
                            honored = frozenset(subscription.honored.resource_subscriptions or ()) & uris
                            task_status.started((scope, honored))
                        reopen.opened(time.monotonic())
                        async for _event in subscription:
                            pass  # each update also reaches the connection's message handler: `notified`
                    ended = "closed by the backend"
                except Exception as exc:  # a backend refusing or dropping the stream must not take the session down
                    ended = str(exc) or type(exc).__name__
                if not reopen.ever_open:  # refused when first asked: nothing followed to keep
                    logger.info(
                        "backend %s: listen stream for %d resource(s) ended: %s", connection.name, len(uris), ended
                    )
                    task_status.started((None, frozenset()))
                    return
                delay = reopen.next_delay(ended, time.monotonic())
                if delay is None:
                    return
                await anyio.sleep(delay)
                reopen.attempting()


# Seconds before each attempt to open a dropped listen stream again; after the last, the URIs wait for the
# backend's next session (or the next change of what is followed there).
REOPEN_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# A stream that stayed up this long counts as recovered: the next drop starts the delays again.
STABLE_AFTER = 60.0


class _Reopening:
    """The attempts to open one dropped listen stream again, and their log lines: per outage one warning when
    it drops, one info line when it is back, one warning if the attempts run out. A stream that drops again
    within `STABLE_AFTER` of coming back is the same outage: the attempts are bounded however it flaps."""

    def __init__(self, backend: str, count: int) -> None:
        self.backend = backend
        self.count = count
        self.ever_open = False  # acknowledged once: the URIs were promised, so a drop is worth reopening
        self.up_since: float | None = None  # when the open stream was acknowledged; None while it is down
        self.outage = False
        self.back_told = False  # the outage's recovery was logged
        self.attempts = 0  # attempts of this outage so far
        self._untold: str | None = None  # why the stream dropped, until the warning is logged

    def opened(self, now: float) -> None:
        self.ever_open = True
        self.up_since = now
        if self.outage and not self.back_told:
            self.back_told = True
            logger.info("backend %s: listen stream for %d resource(s) open again", self.backend, self.count)

    def next_delay(self, ended: str, now: float) -> float | None:
        """The wait before the next attempt, or None when they ran out."""
        if self.up_since is not None and now - self.up_since >= STABLE_AFTER:
            self.outage = False  # it stayed up: this drop starts a new outage
        self.up_since = None
        if not self.outage:
            self.outage, self.back_told, self.attempts = True, False, 0
            self._untold = ended
        if self.attempts >= len(REOPEN_DELAYS):
            logger.warning(
                "backend %s: listen stream for %d resource(s) not reopened after %d attempts; no updates of them "
                "until the backend reconnects",
                self.backend,
                self.count,
                self.attempts,
            )
            return None
        delay = REOPEN_DELAYS[self.attempts]
        self.attempts += 1
        return delay

    def attempting(self) -> None:
        """Told after the first wait, not when the stream ends: a session going away ends its streams first
        and cancels their holders a moment later, and that is no outage to warn of."""
        if self._untold is not None:
            logger.warning(
                "backend %s: listen stream for %d resource(s) dropped (%s); opening it again",
                self.backend,
                self.count,
                self._untold,
            )
            self._untold = None


def _offers_subscriptions(connection: BackendConnection) -> bool:
    """The backend said it takes resource subscriptions (`resources/subscribe`, or for a 2026-07-28 one
    resource URIs on `subscriptions/listen`)."""
    capabilities = connection.capabilities
    return bool(capabilities is not None and capabilities.resources is not None and capabilities.resources.subscribe)
