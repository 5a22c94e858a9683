"""Spare backend sessions for 2026-07-28 round-trip calls, so a call does not wait for a process start.

A round-trip call needs a backend session of its own (see `pending.py`). Once a call with a capability
set has been seen, one spare per (backend, capability set) is kept opened and initialised, owned by no
call (`server.round_trip_spares`); the next call with exactly those capabilities takes it whole and a
replacement starts in the background. A session's callbacks go through a `SessionOwner`, so they reach
whichever call holds it. A spare whose session ended or whose backend reconnected since it was opened is
closed, never handed out.

A spare no call takes within `limits.round_trip_spare_idle_timeout` is closed and not replaced: the next call
with that capability set opens its own session and a new spare after it. A burst of clients with unusual
capabilities thus leaves no spare behind for ever (up to `MAX_SPARES_PER_BACKEND` per backend, each a process
for a stdio backend). The task that filled a spare waits out its idle period and closes it: one sleeping task
per spare, no sweep loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import mcp_types as types
from mcp.client.session import ClientRequestContext

from vmcp_opt.backends.connection import BackendConnection, BackendState, BackendUnavailable
from vmcp_opt.backends.session_pool import DedicatedSession, SessionCallbacks, SessionPool

if TYPE_CHECKING:
    from vmcp_opt.routing.round_trips.pending import PendingCall

logger = logging.getLogger(__name__)

# Spare sessions per backend at most: one per capability set, and there are 7 combinations of the three
# flags; capability sets differing in their details beyond that get no spare.
MAX_SPARES_PER_BACKEND = 7


class SessionOwner:
    """A round-trip session's callbacks: what its backend sends goes to the call that holds it now.

    A spare is opened before any call owns it; the call that takes it becomes its owner.
    """

    def __init__(self, call: PendingCall | None = None) -> None:
        self.call = call

    def callbacks(self, capabilities: types.ClientCapabilities) -> SessionCallbacks:
        return SessionCallbacks.mirroring(
            capabilities,
            sampling=self._sampling,
            elicitation=self._elicitation,
            list_roots=self._list_roots,
            logging=self._log,
        )

    async def _sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        if self.call is None:
            return _unowned()
        return await self.call.sampling(context, params)

    async def _elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        if self.call is None:
            return _unowned()
        return await self.call.elicitation(context, params)

    async def _list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        if self.call is None:
            return _unowned()
        return await self.call.list_roots(context)

    async def _log(self, params: types.LoggingMessageNotificationParams) -> None:
        if self.call is not None:
            await self.call.log(params)


def _unowned() -> types.ErrorData:
    return types.ErrorData(code=types.INVALID_REQUEST, message="no call is in progress on this session")


def _declared(capabilities: types.ClientCapabilities) -> list[str]:
    return [n for n in ("elicitation", "roots", "sampling") if getattr(capabilities, n) is not None]


SpareKey = tuple[str, str]  # backend name, the mirrored capabilities as canonical JSON


def spare_key(backend: BackendConnection, capabilities: types.ClientCapabilities) -> SpareKey:
    """Sessions are interchangeable when they advertise exactly the same capabilities to the same backend."""
    mirrored = {
        name: value.model_dump(mode="json", by_alias=True, exclude_none=True) if value is not None else None
        for name, value in (
            ("sampling", capabilities.sampling),
            ("elicitation", capabilities.elicitation),
            ("roots", capabilities.roots),
        )
    }
    return backend.name, json.dumps(mirrored, sort_keys=True)


@dataclass(eq=False)
class _Spare:
    session: DedicatedSession
    owner: SessionOwner
    backend: BackendConnection
    generation: int  # `backend.sessions` when it was opened: a reconnect since makes it stale
    opened_at: float
    # Set once it leaves the spares (taken, dropped, or the gateway stopping): its idle wait ends then.
    gone: anyio.Event = field(default_factory=anyio.Event)

    def usable(self) -> bool:
        return (
            not self.session.closed
            and not self.session.ended
            and self.backend.state is BackendState.READY
            and self.backend.sessions == self.generation
        )


class SpareSessions:
    """At most one spare per backend and capability set; a session is handed to one call, never shared."""

    def __init__(self, pool: SessionPool, *, enabled: bool) -> None:
        self.pool = pool
        self.enabled = enabled
        self._spares: dict[SpareKey, _Spare] = {}
        self._filling: set[SpareKey] = set()
        self._stopped = False
        self._task_group: anyio.abc.TaskGroup | None = None

    def attach(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group

    def stop(self) -> None:
        self._stopped = True
        spares, self._spares = list(self._spares.values()), {}
        for spare in spares:
            spare.gone.set()
            spare.session.close()

    async def session_for(self, call: PendingCall) -> DedicatedSession:
        """A spare when one is ready, else a new session; either way the call's alone."""
        key = spare_key(call.backend, call.capabilities)
        spare = self._spares.pop(key, None)
        if spare is not None:
            spare.gone.set()
        if spare is not None and spare.backend is call.backend and spare.usable():
            spare.owner.call = call
            logger.info(
                "backend %s: a 2026-07-28 call took a spare session (opened %.1fs before)",
                call.backend.name,
                anyio.current_time() - spare.opened_at,
            )
            self._replenish(key, call.backend, call.capabilities)
            return spare.session
        if spare is not None:
            self._drop(spare, "it ended or its backend reconnected")
        session = await self.pool.open(call.backend, SessionOwner(call).callbacks(call.capabilities))
        self._replenish(key, call.backend, call.capabilities)
        return session

    def backend_changed(self, backend: BackendConnection) -> None:
        """A backend left service or came back: its spares from before are stale."""
        for key, spare in list(self._spares.items()):
            if spare.backend.name == backend.name and not (spare.backend is backend and spare.usable()):
                del self._spares[key]
                self._drop(spare, "its backend left or reconnected")

    def _drop(self, spare: _Spare, why: str) -> None:
        spare.gone.set()
        logger.info("backend %s: a spare session was closed unused: %s", spare.backend.name, why)
        spare.session.close()

    def _replenish(self, key: SpareKey, backend: BackendConnection, capabilities: types.ClientCapabilities) -> None:
        if not self.enabled or self._stopped or self._task_group is None:
            return
        # No spare for a client that has roots: servers such as server-filesystem ask for roots right after
        # initialisation, which a spare, owned by no call yet, cannot answer; they would then never see the
        # client's roots.
        if capabilities.roots is not None:
            return
        if key in self._spares or key in self._filling:
            return
        held = sum(1 for name, _ in (*self._spares, *self._filling) if name == key[0])
        if held >= MAX_SPARES_PER_BACKEND:
            return
        self._filling.add(key)
        self._task_group.start_soon(self._fill, key, backend, capabilities, name=f"round-trip-spare:{backend.name}")

    async def _fill(self, key: SpareKey, backend: BackendConnection, capabilities: types.ClientCapabilities) -> None:
        try:
            owner = SessionOwner()
            generation = backend.sessions
            try:
                session = await self.pool.open(backend, owner.callbacks(capabilities))
            except BackendUnavailable as exc:
                logger.info("backend %s: no spare session for 2026-07-28 calls: %s", backend.name, exc)
                return
            spare = _Spare(session, owner, backend, generation, anyio.current_time())
            if self._stopped or not self.enabled or not spare.usable():
                session.close()
                return
            self._spares[key] = spare
            logger.info(
                "backend %s: a spare session for 2026-07-28 calls is ready (capabilities: %s)",
                backend.name,
                ",".join(_declared(capabilities)) or "none",
            )
        finally:
            self._filling.discard(key)
        await self._expire(key, spare, backend.limits.round_trip_spare_idle_timeout)

    async def _expire(self, key: SpareKey, spare: _Spare, idle: float) -> None:
        """Close `spare` if no call took it within `idle` seconds, or as soon as its session ends (its process died:
        dropped then, not found dead by the next call); not replaced until a call wants one again."""
        with anyio.move_on_after(idle):
            async with anyio.create_task_group() as waits:
                for wait in (spare.gone.wait, spare.session.wait_ended):
                    waits.start_soon(_first_of, wait, waits.cancel_scope)
        if self._spares.get(key) is spare:
            del self._spares[key]
            if spare.session.ended or spare.session.closed:
                self._drop(spare, "its session ended (its process exited or its stream broke)")
            else:
                self._drop(spare, f"no call took it within {idle:g}s (limits.round_trip_spare_idle_timeout)")


async def _first_of(wait: Callable[[], Awaitable[object]], waits: anyio.CancelScope) -> None:
    """`wait()`, then the other waits of `waits` are over too."""
    await wait()
    waits.cancel()
