"""What other replicas relay to this replica's copies of shared sessions (`sessions.store: redis`), and what this
replica relays to theirs.

`HeldSessions` are the copies this replica holds, found by the SHA-256 of their ids, which is all that crosses
Redis. `SessionRelays` delivers to them what the client POSTed to another replica: an answer to one of this
replica's questions (given only to the copy that asked: `AskIds` numbers copies), a cancellation (every copy of
the session hears it, the one running the request acts), and a change another replica made to the session's
record (its log level, a subscription), made to the copy as the restore replays the record (`apply_change`).

Changes carry the record's revision after them (vmcp_opt/shared/session_store.py increments it in the script
that writes the change), so a copy makes them in the order Redis took them, whatever the order it hears them in:
a subscription taken on A and dropped on B at once leaves both copies, and the record, without it. A copy keeps
per thing changed (`SessionChange.key`) the revision of the latest change it has (`Held.seen`); all things are at
least as of `Held.caught_up`, the revision of the record it was built from. A session's changes are made one at a
time (`Held.changing`, taken by the client's own changes on this replica too, until recorded), and those waiting
are coalesced, the latest per thing kept: a client changing its log level at any rate queues one task per copy.
A change published while a copy was being restored (after its record was read, before it was held here) is
heard by no one: `catch_up`, right after the copy is held, reads the record's revision again and makes what the
record says differently.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from mcp_types import JSONRPCNotification
from starlette.types import Scope

from vmcp_opt.logs import ThrottledLog
from vmcp_opt.server.lazy_stream import LazyStreamSessionManager, LazyStreamTransport
from vmcp_opt.server.session_restore import apply_change
from vmcp_opt.server.shared_asks import Answer, AskIds
from vmcp_opt.shared.events import STORE_ERRORS
from vmcp_opt.shared.redis_client import redis_trouble
from vmcp_opt.shared.round_relay import RELAYED_CHANGES, RedisAnswerRelay, RedisCancelRelay, SessionChange
from vmcp_opt.shared.session_store import RedisSessions, SessionRecord, session_key_digest

logger = logging.getLogger(__name__)
# Longest a relayed change waits for its copy's restore, or for its own request (a backend session may have to
# start for a log level).
CHANGE_WAIT = 30.0
# Things changed whose latest revision a copy keeps apart (`Held.seen`); past it the oldest are forgotten into
# `caught_up`: a client subscribing to ever new URIs and dropping them must not grow a copy without end.
MAX_SEEN = 256


@dataclass
class Held:
    """A session this replica holds: opened by the manager (`transport` None) or restored here."""

    record: SessionRecord
    transport: LazyStreamTransport | None = None
    recorded: bool = True  # False: not in Redis yet (unreachable when it opened); written at its next use
    # Set once a restored session's replayed requests are answered (its log level and subscriptions are in
    # place on this replica's backend sessions); the client's requests wait for it.
    restored: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    # The scope of the session's last request here: changes other replicas relay are applied under it.
    scope: Scope | None = None
    # Held while a change is made to this copy (relayed, or the client's own until recorded): one at a time.
    changing: anyio.Lock = dataclasses.field(default_factory=anyio.Lock)
    # Relayed changes waiting for `changing`, the latest per what it changes (`SessionChange.key`): one superseded
    # while it waited is never applied.
    pending: dict[str, SessionChange] = dataclasses.field(default_factory=dict)
    # Per what it changes, the revision of the latest change this copy has; every key is as of `caught_up` at least.
    seen: dict[str, int] = dataclasses.field(default_factory=dict)
    caught_up: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.caught_up = self.record.revision

    def has(self, change: SessionChange) -> bool:
        """Whether this copy has `change` already, or a newer change of the same thing."""
        return not change.newer_than(max(self.caught_up, self.seen.get(change.key, 0)))

    def took(self, change: SessionChange) -> None:
        if change.revision is None:
            return
        self.seen[change.key] = max(change.revision, self.seen.pop(change.key, 0))  # the latest last
        while len(self.seen) > MAX_SEEN:
            # Forgotten, its revision becomes every thing's floor: a change of it as old is then taken as had, and so
            # is a change of another thing that old that never came, 256 changes later.
            oldest = next(iter(self.seen))
            self.caught_up = max(self.caught_up, self.seen.pop(oldest))

    def latest(self) -> SessionRecord:
        """The record as this copy has it, at the latest revision it has seen (written back when Redis lost it:
        the changes counted on from there are newer than any copy has)."""
        return dataclasses.replace(self.record, revision=max(self.caught_up, *self.seen.values(), 0))


class HeldSessions(dict[str, Held]):
    """The sessions this replica holds, by id, and their ids by digest (`session_key_digest`): what other
    replicas relay names a session by its digest."""

    def __init__(self) -> None:
        super().__init__()
        self.by_digest: dict[str, str] = {}

    def __setitem__(self, session_id: str, held: Held) -> None:
        super().__setitem__(session_id, held)
        self.by_digest[session_key_digest(session_id)] = session_id

    def __delitem__(self, session_id: str) -> None:
        super().__delitem__(session_id)
        self.by_digest.pop(session_key_digest(session_id), None)


class SessionRelays:
    def __init__(
        self,
        held: HeldSessions,
        manager: LazyStreamSessionManager,
        store: RedisSessions,
        answers: RedisAnswerRelay,
        cancels: RedisCancelRelay,
    ) -> None:
        self.held = held
        self.manager = manager
        self.store = store
        self.answers = answers
        self.cancels = cancels
        # Ids of this process's requests to clients; a restarted replica's differ from those it sent before.
        self.asks = AskIds(secrets.token_hex(8), self._relay_answer, self._relay_cancel)
        self._log = ThrottledLog(logger, 60.0)

    async def serve(self) -> None:
        """Until cancelled: answers pushed to this replica's inbox, cancellations and changes published."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.answers.serve, self.asks.tag, self.deliver_answer)
            tasks.start_soon(self.cancels.serve, self.asks.tag, self.deliver)

    async def _relay_answer(self, tag: str, session_id: str, copy: str, answer: Answer) -> None:
        await self.answers.send(tag, session_id, copy, answer)

    async def _relay_cancel(self, session_id: str, cancel: JSONRPCNotification) -> None:
        await self.cancels.send(self.asks.tag, session_id, cancel)

    async def changed_here(self, session_id: str, method: str, params: Mapping[str, Any]) -> None:
        """The client's change to its session (one of `RELAYED_CHANGES`) made here: recorded (the held copy of the
        record follows it, to be written again if Redis loses it), then published for the copies others hold."""
        name = RELAYED_CHANGES[method]
        change = SessionChange(method, {name: str(params.get(name, ""))})
        held = self.held.get(session_id)
        if held is not None:
            held.record = _changed(held.record, change) or held.record
        if method == "logging/setLevel":
            revision = await self.store.set_level(session_id, change.params[name])
        else:
            subscribed = method == "resources/subscribe"
            revision = await self.store.subscription(session_id, change.params[name], subscribed=subscribed)
        if revision is None:
            return  # not recorded (no record, or past its bounds): the other copies keep what the record says
        change = dataclasses.replace(change, revision=revision)
        if held is not None:
            held.took(change)
        await self.cancels.send_change(self.asks.tag, session_id, change)

    def _transport(self, session_id: str) -> LazyStreamTransport | None:
        held = self.held.get(session_id)
        transport = held.transport if held is not None else None
        return transport or self.manager.transport_of(session_id)

    async def deliver_answer(self, digest: str, copy: str, answer: Answer) -> None:
        """A client's answer to this replica's question, POSTed to another replica (which checked that the poster
        may use the session), to the copy `copy` that asked, if it is still here."""
        session_id = self.held.by_digest.get(digest)
        transport = self._transport(session_id) if session_id is not None else None
        if transport is None or not await transport.deliver(answer, copy):
            logger.debug("sessions: a relayed answer for a copy of a session not held here was dropped")

    async def deliver(self, digest: str, message: JSONRPCNotification | SessionChange) -> None:
        """A client's cancellation of a request, or a change to its session's record, made on another replica, to
        this replica's copy of its session. Both reach every replica: most hold no copy of the session."""
        session_id = self.held.by_digest.get(digest)
        if session_id is None:
            return  # not held here (a session the manager opens is held from its `initialize` on)
        if isinstance(message, SessionChange):
            await self.apply(session_id, message)
            return
        transport = self._transport(session_id)
        if transport is None or not await transport.deliver(message):
            logger.debug("sessions: a relayed message for a session not held here was dropped")

    async def apply(self, session_id: str, change: SessionChange) -> None:
        """A change another replica made to a session's record, made to this replica's copy (if it holds one and
        has nothing as new of the same thing) as the restore replays the record."""
        held = self.held.get(session_id)
        if held is None or held.has(change):
            return
        queued = held.pending.get(change.key)
        if queued is None or queued.revision is None or change.newer_than(queued.revision):
            held.pending[change.key] = change
        if queued is not None:
            return  # the task already waiting for this key makes the latest
        async with held.changing:
            change = held.pending.pop(change.key)
            if not held.has(change):  # a change of the client's own here may have come first
                await self._make(session_id, held, change)

    async def catch_up(self, session_id: str, held: Held) -> None:
        """A copy just held here made as the record is now, if it changed since it was read: a change published
        meanwhile was heard by no copy here."""
        try:
            revision = await self.store.revision(session_id)
            record = await self.store.load(session_id) if revision is not None and revision > held.caught_up else None
        except STORE_ERRORS as exc:
            self._log.warning("catch-up", "sessions: a restored copy may miss a change: %s", redis_trouble(exc))
            return
        if record is None:
            return
        async with held.changing:
            for change in _differences(held.record, record):
                if not held.has(change):  # a relayed change made while this waited for the lock is newer
                    await self._make(session_id, held, change)
            held.caught_up = max(held.caught_up, record.revision)

    async def _make(self, session_id: str, held: Held, change: SessionChange) -> None:
        """`change` POSTed to the copy (once restored), its answer awaited; a refusal logged."""
        record = _changed(held.record, change)
        transport = held.transport or self.manager.transport_of(session_id)
        if record is None or transport is None or held.scope is None:
            held.took(change)
            return
        if not held.restored.is_set() and held.transport is not None:
            with anyio.move_on_after(CHANGE_WAIT):
                await held.restored.wait()
        refused: str | None = "not answered"
        with anyio.move_on_after(CHANGE_WAIT):
            made = (change.method, change.params)
            refused = await apply_change(transport, held.scope, session_id, record.protocol_version, made)
        if refused is None:
            held.record = record
            held.took(change)
        else:
            self._log.warning("change", "sessions: a change made on another replica was refused: %s", refused)


def _changed(record: SessionRecord, change: SessionChange) -> SessionRecord | None:
    """`record` with `change` made; None when it already says so."""
    if change.method == "logging/setLevel":
        level = change.params["level"]
        return None if record.log_level == level else dataclasses.replace(record, log_level=level)
    uri, subscribed = change.params["uri"], change.method == "resources/subscribe"
    if (uri in record.subscriptions) == subscribed:
        return None
    uris = set(record.subscriptions) - {uri} | ({uri} if subscribed else set())
    return dataclasses.replace(record, subscriptions=tuple(sorted(uris)))


def _differences(held: SessionRecord, now: SessionRecord) -> Iterator[SessionChange]:
    """The changes that make `held` say what `now` says, at `now`'s revision."""
    if now.log_level is not None and now.log_level != held.log_level:
        yield SessionChange("logging/setLevel", {"level": now.log_level}, now.revision)
    for uri in sorted(set(held.subscriptions) ^ set(now.subscriptions)):
        method = "resources/subscribe" if uri in now.subscriptions else "resources/unsubscribe"
        yield SessionChange(method, {"uri": uri}, now.revision)
