"""Any replica serves any 2025-11-25 session (`sessions.store: redis`): no load-balancer affinity needed.

`SharedSessions` is an ASGI layer in front of the SDK's session manager. A session the manager opens here is
recorded in Redis by `SharedSessions.record` (a server middleware) before the client sees its id: the
client's `initialize` params, the negotiated version, the namespace of its SSE events; later its log level
and resource subscriptions. A request naming a session this replica does not hold is looked up there and,
when found, the session is restored (vmcp_opt/server/session_restore.py): a transport with that id whose
server loop has been through the stored handshake, served by this layer instead of the manager.

Every request naming a session pushes its Redis expiry ahead (open streams too, from a keep-alive task), and
finds out whether it still exists: a session deleted on another replica answers 404 here as well, and its
local copy is ended. DELETE deletes it in Redis (its tombstone written) before anything ends it here, and is
answered 503 with Retry-After, the session left as it was, when Redis fails; every replica looks for
the deletions of the sessions it holds each `REAP_INTERVAL` and ends its copies, so their slots are free for the
client's next session at once, not after the idle timeout. A replica reaping its own idle copy, or stopping, leaves the
record: the session may be in use elsewhere, and its key expires once it has been idle everywhere for
`limits.session_idle_timeout`. A restored session takes a slot like an opened one (limits.max_sessions,
max_sessions_per_address, counted per replica), freed when its copy ends.

Redis unreachable (or refusing the password): the sessions this replica holds keep working; a request naming
another is answered 503 with Retry-After (the session may well exist: Redis restarting, failing over; at once
while the link knows Redis answers nothing, not after a timeout each) until the store has failed for
`sessions.outage_grace_seconds` (`StoreOutage`, from its first failed call since the last success), then 404
(the client opens a new session, held here); one warning per minute each. Once Redis is back (even empty), the reaper writes the records of the sessions held here again within `REAP_INTERVAL`, unless a
session was deleted meanwhile (its tombstone, checked in the same Lua script): then its copy here is ended.
Redis's own state changes are logged once each by vmcp_opt/shared/redis_client.py.

What the client POSTs to another replica about a copy held here (an answer to its question, a cancellation, a
change to the session's record, in the record's revision order) is delivered to it by
vmcp_opt/server/session_relays.py (`SessionRelays`, `HeldSessions`); this module writes, restores and ends copies.

Just past ~450 lines: refusing another principal's session (audited, `refused`) sits beside the restore that finds
the owner, which the store's record and its Lua script share.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp_types import INVALID_REQUEST, InitializeRequestParams
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from vmcp_opt.config import VmcpConfig
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing import Router
from vmcp_opt.routing.round_trips import RoundOwners
from vmcp_opt.server.admission import SessionRefused, connection_of, refused_stranger, tell_refused
from vmcp_opt.server.authentication import session_owner
from vmcp_opt.server.lazy_stream import LazyStreamSessionManager
from vmcp_opt.server.session_relays import Held, HeldSessions, SessionRelays
from vmcp_opt.server.session_restore import is_replayed, restored_transport, serve_restored
from vmcp_opt.server.sessions import (
    SERVER_BUSY,
    SLOT_LIMITS,
    SessionGate,
    Slot,
    client_address,
    json_rpc_error,
    may_open_session,
)
from vmcp_opt.shared.events import EVENTS, EVENTS_CALLER, STORE_ERRORS, RedisEventStore, ReplicaPresence
from vmcp_opt.shared.redis_client import redis_client, redis_link, redis_trouble, skip_if_stalled
from vmcp_opt.shared.replica_shapes import ReplicaShapes, watch_shapes
from vmcp_opt.shared.round_relay import RedisAnswerRelay, RedisCancelRelay, RedisRoundRelay
from vmcp_opt.shared.session_store import (
    OUTAGE_RETRY_AFTER,
    RedisSessions,
    SessionRecord,
    StoreOutage,
    refuse_oversized,
)

logger = logging.getLogger(__name__)
_SESSION_HEADER = b"mcp-session-id"
# Longest a request waits for its session's restore (a backend session may have to start for its log level).
RESTORE_WAIT = 30.0
# Seconds between looks for deletions, on other replicas, of the sessions this replica holds.
REAP_INTERVAL = 1.0
# The principal of the request being served (`session_owner`), for the record of a session it opens.
OWNER: ContextVar[str] = ContextVar("vmcp_session_owner", default="")
_RECORDED = frozenset({"initialize", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"})


class SharedSessions:
    def __init__(
        self, app: ASGIApp, manager: LazyStreamSessionManager, parts: SharedSessionParts, gate: SessionGate
    ) -> None:
        self.app = app
        self.manager = manager
        self.store = parts.store
        self.presence = parts.presence
        self.relay = parts.relay
        self.events = parts.events
        self.rounds = parts.rounds
        self.shapes = parts.shapes
        self.gate = gate
        self.refused = parts.refused
        self._held = HeldSessions()
        self.relays = SessionRelays(self._held, manager, parts.store, parts.answers, parts.cancels)
        self.asks = manager.asks = self.relays.asks
        self._in_flight: Counter[str] = Counter()
        self._lock = anyio.Lock()
        self._task_group: TaskGroup | None = None
        self._lifespan_state: Any = None
        self._log = ThrottledLog(logger, 60.0)

    @property
    def held(self) -> int:
        return len(self._held)

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """The task group restored sessions run in, the keep-alive of sessions with open streams, the heartbeat."""
        server: Server[Any] = self.manager.app
        async with server.lifespan(server) as state, anyio.create_task_group() as task_group:
            self._lifespan_state, self._task_group = state, task_group
            task_group.start_soon(self.store.keep_alive, lambda: list(self._in_flight))
            task_group.start_soon(self._reap_ended)
            task_group.start_soon(self.presence.run)
            task_group.start_soon(self.shapes.run)
            task_group.start_soon(self.events.run_writer)
            task_group.start_soon(self.relays.serve)
            if self.rounds is not None:
                task_group.start_soon(self.relay.serve, self.rounds.continue_relayed)
            try:
                yield
            finally:
                task_group.cancel_scope.cancel()
                self._task_group = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session_id = _header(scope, _SESSION_HEADER)
        if session_id is not None:
            await self._serve(session_id, scope, receive, send)
            return
        token = EVENTS.set(secrets.token_hex(16) if may_open_session(scope) else None)  # a new session's events
        owner = OWNER.set(session_owner(scope))
        caller = EVENTS_CALLER.set(events_caller(scope))  # the session's tasks, started here, charge it
        try:
            await self.app(scope, receive, send)
        finally:
            EVENTS_CALLER.reset(caller)
            OWNER.reset(owner)
            EVENTS.reset(token)

    async def _serve(self, session_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        held = self._held.get(session_id)
        record = None
        unsure = False  # Redis failed: a session not held here may exist all the same
        try:
            if held is not None:
                found = await self._still_open(session_id, held)
            else:
                skip_if_stalled(self.store.link)  # Redis known to answer nothing: 503 at once, not after a timeout
                record = await self.store.load(session_id)
                found = record is not None
        except STORE_ERRORS as exc:
            self.store.outage.failed()  # a lookup not asked is one failed
            self._log.warning("store", "sessions: %s: only this replica's sessions are served", redis_trouble(exc))
            found, unsure = held is not None, True
        if not found and held is not None:
            await self._end_here(session_id, held)  # deleted on another replica
        kept = held.record if held is not None else record
        if found and kept is not None and kept.owner is not None and kept.owner != session_owner(scope):
            # Only the principal that opened a session may use it, on any replica: another credential is told
            # what it would be told of a session that does not exist (in an outage too: no oracle).
            refused_stranger(self.refused, scope, session_id, self._log)
            found = False
        if not found:
            await self._not_found(send, unsure)
            return
        assert kept is not None
        if scope["method"] == "DELETE" and not await self._delete(session_id, kept.events):
            await self._retry_later(send)  # nothing ended, here or elsewhere: the client retries its DELETE
            return
        if held is None and scope["method"] == "DELETE":
            # No need to restore a session to end it.
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if held is None:
            assert record is not None
            held = await self._restore(session_id, record, scope, send)
            if held is None:
                return  # refused: no slot
        await self._forward(session_id, held, scope, receive, send)

    async def _not_found(self, send: Send, unsure: bool) -> None:
        """404, which tells a client its session is gone for good; 503 and Retry-After instead while Redis, which
        may hold the session, has been failing for less than the grace (a restart, a failover). Nothing said of
        Redis itself (where it is, its password): the log says it."""
        if unsure and self.store.outage.brief():
            await self._retry_later(send)
            return
        if unsure:
            self._log.warning(
                "outage",
                "sessions: Redis has failed for over %g s (sessions.outage_grace_seconds): sessions not held "
                "here are answered 404, their clients open new ones",
                self.store.outage.grace,
            )
        await json_rpc_error(send, 404, INVALID_REQUEST, "Session not found")

    @staticmethod
    async def _retry_later(send: Send) -> None:
        await json_rpc_error(
            send,
            503,
            SERVER_BUSY,
            f"The session store is briefly unavailable; retry in {OUTAGE_RETRY_AFTER} s (it is unreachable, or "
            "refuses the gateway's commands: the session may still exist)",
            {"retry_after": OUTAGE_RETRY_AFTER},
            [(b"retry-after", str(OUTAGE_RETRY_AFTER).encode())],
        )

    async def _still_open(self, session_id: str, held: Held) -> bool:
        """Whether a session this replica holds is still open, its record (re)written when Redis lacks it and
        was not deleted meanwhile (a DELETE may land between the touch and the write)."""
        state = await self.store.touch(session_id) if held.recorded else "missing"
        if state == "missing":
            return await self._write_back(held, session_id)
        return state != "ended"

    async def _write_back(self, held: Held, session_id: str) -> bool:
        """The held record written again; False (nothing written) when the session's tombstone is there."""
        if not await self.store.save_unless_ended(session_id, held.latest()):
            return False
        held.recorded = True
        return True

    async def _forward(self, session_id: str, held: Held, scope: Scope, receive: Receive, send: Send) -> None:
        if held.transport is not None and not held.restored.is_set():
            with anyio.move_on_after(RESTORE_WAIT):  # past it, served as it is (it logs what was refused)
                await held.restored.wait()

        held.scope = scope
        token = EVENTS.set(held.record.events)
        self._in_flight[session_id] += 1
        try:
            if held.transport is None:
                await self.app(scope, receive, send)
            else:
                await held.transport.handle_request(scope, receive, send)
        finally:
            EVENTS.reset(token)
            self._in_flight[session_id] -= 1
            if self._in_flight[session_id] <= 0:
                del self._in_flight[session_id]

    async def _restore(self, session_id: str, record: SessionRecord, scope: Scope, send: Send) -> Held | None:
        """This replica's copy of a session opened elsewhere, started; None when no slot is free (answered)."""
        client = scope.get("client")
        address = str(client[0]) if client else "?"
        async with self._lock:
            held = self._held.get(session_id)
            if held is not None:
                return held  # restored by a request that came first
            slot = self.gate.take(scope)  # per verified caller, else per address, as a session opened here
            if not isinstance(slot, str):
                held = await self._start_restored(session_id, record, scope, slot)
        if isinstance(slot, str):
            tell_refused(self.refused, scope, SLOT_LIMITS[slot])
            await self.gate.refuse(slot, address, send)
            return None
        assert held is not None
        logger.info("sessions: restored a session opened on another replica")
        await self.relays.catch_up(session_id, held)  # a change published since `record` was read: heard by none
        return held

    async def _start_restored(self, session_id: str, record: SessionRecord, scope: Scope, slot: Slot) -> Held:
        transport = restored_transport(self.manager, session_id)
        # Its scope from the start: a change relayed before the request that restores it is forwarded applies.
        held = self._held[session_id] = Held(record, transport, scope=scope)
        assert self._task_group is not None
        token = EVENTS.set(record.events)  # the session's tasks store their events under its namespace
        caller = EVENTS_CALLER.set(events_caller(scope))
        try:
            await self._task_group.start(self._run_restored, session_id, held, Request(scope), slot)
        except BaseException:
            del self._held[session_id]
            slot.release()
            raise
        finally:
            EVENTS_CALLER.reset(caller)
            EVENTS.reset(token)
        return held

    async def _run_restored(
        self, session_id: str, held: Held, request: Request, slot: Slot, *, task_status: TaskStatus[None]
    ) -> None:
        assert held.transport is not None
        app, state = self.manager.app, self._lifespan_state
        try:
            await serve_restored(
                app, held.transport, held.record, request, state, held.restored, task_status=task_status
            )
        finally:
            if self._held.get(session_id) is held:
                del self._held[session_id]
            slot.release()

    async def _end_here(self, session_id: str, held: Held) -> None:
        """The session was deleted on another replica: end this replica's copy too (its slot is freed once
        the copy's server loop has wound down)."""
        if self._held.get(session_id) is held:
            del self._held[session_id]
        if held.transport is not None:
            await held.transport.terminate()
        else:
            await self.manager.end_session(session_id)

    async def _reap_ended(self) -> None:
        """Ends this replica's copies of sessions deleted elsewhere. Without it a copy kept its slot until it
        idled out here: a client that opens, uses (through round-robin) and deletes one session at a time was
        refused a new one (429) after `limits.max_sessions_per_address` sessions, for the idle timeout.
        Writes again the records Redis lacks (restarted empty): until then another replica answers 404."""
        while True:
            await anyio.sleep(REAP_INTERVAL)
            held = dict(self._held)
            if not held:
                continue
            try:
                states = await self.store.held_states(list(held))
                for session_id, state in states.items():
                    if state == "ended":
                        await self._end_here(session_id, held[session_id])
                    elif state == "missing":
                        await self._record_again(session_id, held[session_id])
            except STORE_ERRORS as exc:
                self._log.warning("reap", "sessions: deletions on other replicas not checked: %s", redis_trouble(exc))

    async def _record_again(self, session_id: str, held: Held) -> None:
        """A "missing" record written again, or this copy ended when the session was deleted since its state
        was read (on any replica)."""
        if self._held.get(session_id) is not held:
            return  # ended meanwhile
        if not await self._write_back(held, session_id):
            await self._end_here(session_id, held)

    async def _delete(self, session_id: str, events: str) -> bool:
        """A DELETE's session deleted in Redis (its tombstone written) before this replica ends its own copy
        and answers: the client's next session may land on a replica still holding a copy of this one, which
        must find the deletion to free the copy's slot, and a copy elsewhere must never write the record back.
        False when Redis failed: nothing is ended anywhere, the client is answered 503 and retries (a 200 then
        ended the copy here while the others wrote the session back once Redis returned). A DELETE the SDK then
        refuses for its headers has ended it all the same, as one of a copy held elsewhere always did. Its SSE
        events (namespace `events`) go too, or expire."""
        try:
            await self.store.delete(session_id)
        except STORE_ERRORS as exc:
            self._log.warning(
                "delete", "sessions: a DELETE answered 503, not recorded in Redis: %s", redis_trouble(exc)
            )
            return False
        try:
            await self.events.forget(events)
        except STORE_ERRORS as exc:
            self._log.warning("forget", "sessions: a deleted session's events stay until they expire: %s", exc)
        return True

    async def record(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Server middleware: what a request changed in its session's state, written before it is answered."""
        if ctx.method not in _RECORDED or is_replayed(ctx.request_id):
            return await call_next(ctx)
        if ctx.method == "initialize":
            refuse_oversized(ctx.params)
        connection = connection_of(ctx)
        session_id = connection.session_id
        if session_id is None:
            return await call_next(ctx)  # a 2026-07-28 request: no session
        held = self._held.get(session_id)
        # Until recorded, no change another replica relays is made to this copy: they are ordered by revision.
        async with held.changing if held is not None else contextlib.nullcontext():
            result = await call_next(ctx)
            try:
                if ctx.method == "initialize":
                    await self._opened(session_id, ctx.params, result, ctx.request)
                    connection.exit_stack.push_async_callback(self._forget, session_id)
                else:
                    await self.relays.changed_here(session_id, ctx.method, ctx.params or {})
            except STORE_ERRORS as exc:
                trouble = redis_trouble(exc)
                self._log.warning("record", "sessions: not recorded in Redis, served by this replica only: %s", trouble)
        return result

    async def _opened(self, session_id: str, params: Any, result: HandlerResult, request: Any) -> None:
        client_params = InitializeRequestParams.model_validate(params, by_name=False)
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        negotiated = version if isinstance(version, str) else client_params.protocol_version
        record = SessionRecord(client_params, negotiated, EVENTS.get() or secrets.token_hex(16), owner=OWNER.get())
        held = self._held[session_id] = Held(record, recorded=False)
        held.scope = request.scope if isinstance(request, Request) else None
        await self.store.save(session_id, record)
        held.recorded = True

    async def _forget(self, session_id: str) -> None:
        held = self._held.get(session_id)
        if held is not None and held.transport is None:
            del self._held[session_id]


def events_caller(scope: Scope) -> str:
    """Who a session's SSE events are charged to (`sessions.max_event_bytes_per_caller_in_redis`): its
    principal, else its client's address."""
    return session_owner(scope) or f"address {client_address(scope)}"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


@dataclass
class SharedSessionParts:
    """What `sessions.store: redis` adds to the HTTP transport."""

    store: RedisSessions
    events: RedisEventStore
    presence: ReplicaPresence
    relay: RedisRoundRelay
    answers: RedisAnswerRelay
    cancels: RedisCancelRelay
    shapes: ReplicaShapes
    rounds: RoundOwners | None = None  # set by `share_rounds`: this replica's rounds, of every kind
    refused: SessionRefused | None = None  # hears of the requests refused here: `Telemetry.session_refused`

    def front(
        self, manager: LazyStreamSessionManager, gate: SessionGate, rounds: RoundOwners, router: Router
    ) -> SharedSessions:
        """The layer in front of `gate`'s app, with this replica's rounds shared (`share_rounds`) and `router`'s
        "Unknown tool" naming the backend another replica serves it from (`explain_unknown_tools`)."""
        share_rounds(self, rounds)
        explain_unknown_tools(self, router)
        return SharedSessions(gate.app, manager, self, gate)


def redis_session_parts(config: VmcpConfig, replica: str) -> SharedSessionParts:
    """The parts of `sessions.store: redis`; vmcp_opt/server/http.py imports this module (and so redis) only then."""
    settings = config.sessions
    client = redis_client(config)
    prefix, ttl = config.redis.key_prefix, config.limits.session_idle_timeout
    presence = ReplicaPresence(client, prefix, replica)
    return SharedSessionParts(
        RedisSessions(client, prefix, ttl, outage=StoreOutage(settings.outage_grace_seconds), link=redis_link(config)),
        RedisEventStore(
            client,
            prefix,
            presence,
            settings.max_events_per_stream,
            ttl,
            session_events=settings.max_events_per_session,
            session_bytes=settings.max_event_bytes_per_session,
            caller_bytes=settings.max_event_bytes_per_caller_in_redis,
            total_bytes=settings.max_event_bytes_in_redis,
        ),
        presence,
        RedisRoundRelay(client, prefix, presence, deadline=config.timeouts.input, slice_=config.redis.timeout / 2),
        RedisAnswerRelay(client, prefix, slice_=config.redis.timeout / 2),
        RedisCancelRelay(client, prefix, slice_=config.redis.timeout / 2),
        watch_shapes(config, client, replica),
    )


def explain_unknown_tools(parts: SharedSessionParts, router: Router) -> None:
    """A session moves between replicas: a call of a tool this replica lacks while another serves it (their
    configs differ) is refused naming the backend missing or configured differently here, whether the client
    called it directly or through the optimizer's call_tool."""
    router.why_unknown = parts.shapes.explain_unknown


def share_rounds(parts: SharedSessionParts, rounds: RoundOwners) -> None:
    """2026-07-28 rounds (pending calls, workflow runs, approvals) name this replica; a retry of another
    replica's round is relayed to it."""
    rounds.replica = parts.presence.replica
    rounds.relay = parts.relay
    parts.rounds = rounds
