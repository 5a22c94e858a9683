"""SSE events in Redis, so a stream cut on one replica is resumed on another (`sessions.store: redis`).

The SDK's transport stores every message it sends (and a priming event per stream) through its `EventStore`
and, on a GET with `Last-Event-ID`, asks it to replay what followed. That interface knows streams, not
sessions, and the transport names a request's stream by the request's id (the same "1" in every session), so
events are kept under their session's namespace: `EVENTS`, a context variable the shared sessions' ASGI layer
sets around each request (the session's own tasks inherit it from the request that started them). A replay
reads only the current session's namespace: an event id of another session replays nothing.

One Redis stream per (session, SDK stream): XADD with an exact MAXLEN (`sessions.max_events_per_stream`, oldest
dropped first) and an expiry of the session idle timeout, pushed ahead on each event. Each session is bounded
as a whole too (`sessions.max_events_per_session`, `sessions.max_event_bytes_per_session`): a script (`ADD`, shared/event_scripts.py)
adds the event, notes it in the session's list of its events in order, with its size, and drops the
session's oldest while the session is over either bound (its newest stays whatever its size), deleting a
stream it empties. Without it, every request of a session that streamed left a stream behind until the
session expired: a client could fill Redis at its request rate.

Sessions together are bounded in bytes too, in the same script, against counts it keeps beside the events
(`<prefix>events-budget:*`; on Redis Cluster every key of the store is under `<prefix>{events}`, one slot,
shared/event_scripts.py `events_root`): per caller (`sessions.max_event_bytes_per_caller_in_redis`; a caller is
`EVENTS_CALLER`, which the shared sessions' layer sets to the principal or the client's address, for the
session's tasks) the caller's oldest go, from its session written longest ago on, its newest kept whatever its
size; in total (`sessions.max_event_bytes_in_redis`) the new event is not stored, and neither is the rest of
its stream (a client resuming from before it is refused, not left waiting for an answer never stored). Both
are said in a log line at most once a minute. Events expire with their session, uncounted: each session is in
a sorted set by expiry, and a write first releases (at most 64 of) the sessions whose keys are gone, so the
counts are right without a sweeper and a session idle for good costs one release. The per-caller set of
sessions, ordered the same way, names whose events go first. Both budgets count each stream's own memory too
(`STREAM_OVERHEAD_BYTES`, shared/event_scripts.py) while it is there: every request answered as SSE has a stream.

An event id is
`<stream digest>.<process tag>-<counter>` (the standalone GET stream's marked: `get-<digest>.<tag>-<counter>`,
shared/event_ids.py `GET_EVENT_PREFIX`; an unmarked id is taken for a request stream's), chosen here, so
sending a message never waits for Redis: events queue (bounded) for one writer task that sends whatever is
waiting in one pipeline, in order.

A replay that does not find its event may be early: the event may still be in its replica's queue. Each
writer says how far it has written, `<prefix>events-writer:<process tag>` = its highest counter written (or
lost), set with each batch and refreshed at each presence heartbeat while the process runs. An event not in its stream
whose writer is not there (a forged id, or a process gone) or has written past it (an event dropped, or
expired) is answered unknown at once: one read. Only an event its live writer has not reached yet is waited
for, up to `_FIND_WAIT`, each look reading only the entries added since the last. Before, an unknown id
re-read the whole stream (up to `max_events_per_stream` entries) ten times a second for two seconds.

The transport asks `holds` before a replay (server/lazy_stream.py: an id not held is refused before an SSE
response starts); the replay that follows in the same request sends what `holds` read (`_FOUND`) rather than
reading the stream again, so a resumption costs one read of up to `max_events_per_stream` entries, not two.
What was stored after that read comes as it does after any replay's read: a request's stream is followed
until its answer, the GET stream's later events go out live.

A request's stream cut before its answer is tailed after the replay until the answer is stored, so a client
resuming on replica B gets the answer replica A computes; the replay then returns no stream id, so the SDK ends
the response (with the stream's id it held the response open, with pings, for an answer already sent; so it
did for a client resuming from the answer's own id). Every entry names the replica that stored it; when
the replica running the request stops heartbeating (`ReplicaPresence`: killed, or shut down) before answering,
the replay ends with a JSON-RPC error for the request rather than leaving the client to wait for ever.

Redis unreachable while storing (or the queue full): the message still reaches a connected client; its
event is lost for replays (counted, at most one log line per interval).

The heartbeats both sides rely on (a replica's presence, a writer's progress) are shared/presence.py's. Past
~450 lines on purpose: the store's write side (queue, writer, the `ADD` script's arguments and its budget's
keys) and its read side (replay, `holds`, the writer marks an early replay waits on) share the keys, the event
id's shape, one key layout and one accounting of the per-caller and per-session bounds (split, each half would
restate them); its last hundred lines are those ids' small parsers.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from contextvars import ContextVar
from typing import Any

import anyio
from mcp.server.streamable_http import GET_STREAM_KEY, EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import (
    INTERNAL_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCResponse,
    RequestId,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError
from redis.exceptions import NoScriptError

from vmcp_opt.logs import ThrottledLog
from vmcp_opt.shared.event_ids import GET_EVENT_PREFIX, GET_STREAM_DIGEST, marked_event_id, names_get_stream
from vmcp_opt.shared.event_scripts import ADD, FORGET, EventsClient, events_root
from vmcp_opt.shared.presence import STORE_ERRORS, ReplicaPresence, expiry_ms, keep_key

# The presence's names too: the shared sessions' other parts (round_relay.py, server/shared_sessions.py) import
# them from here.
__all__ = ["EVENTS", "EVENTS_CALLER", "STORE_ERRORS", "RedisEventStore", "ReplicaPresence", "keep_key"]

logger = logging.getLogger(__name__)

# The namespace of the session whose request is being served (None: not a shared session's).
EVENTS: ContextVar[str | None] = ContextVar("vmcp_sse_events", default=None)
_TAIL_BATCH = 100
_WRITE_BATCH = 500
_FIND_WAIT = 2.0
Entry = tuple[str, dict[str, bytes]]  # a Redis stream entry: its id, its fields
# An event waiting for the writer: session namespace, the caller charged, stream digest, the entry's e, s, r and m.
Queued = tuple[str, str, str, tuple[str, str, str, bytes]]
# Who the events of the session being served are charged to (`sessions.max_event_bytes_per_caller_in_redis`):
# its principal, else its client's address; None: the session itself (then only its own bounds apply).
EVENTS_CALLER: ContextVar[str | None] = ContextVar("vmcp_sse_events_caller", default=None)


class _Found:
    """What `holds` read from an event on, for the replay of that event in the same request; taken once."""

    __slots__ = ("entries", "event", "key")

    def __init__(self, key: str, event: str, entries: list[Entry]) -> None:
        self.key = key
        self.event = event
        self.entries: list[Entry] | None = entries


# Set by `holds` in the request's context. The SDK replays in a task of that request, which sees the same
# holder and empties it: the entries are not kept for as long as a resumed GET stream stays open.
_FOUND: ContextVar[_Found | None] = ContextVar("vmcp_sse_found", default=None)


class RedisEventStore(EventStore):
    def __init__(
        self,
        client: EventsClient,
        prefix: str,
        presence: ReplicaPresence,
        max_events: int,
        ttl: float,
        poll_interval: float = 0.1,
        queue_size: int = 10_000,
        session_events: int = 1000,
        session_bytes: int = 8 * 1024 * 1024,
        caller_bytes: int = 32 * 1024 * 1024,
        total_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        """`max_events`: per stream; `session_*`: per session, all its streams together; `caller_bytes`: per
        caller, all its sessions together; `total_bytes`: every session in Redis."""
        self.client = client
        root = events_root(client, prefix)
        self.prefix = root + ":"
        self.presence = presence
        self.max_events = max_events
        self.session_events = session_events
        self.session_bytes = session_bytes
        self.caller_bytes = caller_bytes
        self.total_bytes = total_bytes
        self.dropped = 0  # events dropped for a caller's bound
        self.refused = 0  # events not stored for the total's
        self._add = client.register_script(ADD)
        self._forget = client.register_script(FORGET)
        self.ttl_ms = max(1, int(ttl * 1000))
        self.poll_interval = poll_interval
        self.lost = 0  # events not stored (Redis unreachable, or the queue full)
        self._log = ThrottledLog(logger, 60.0)
        self._tag = secrets.token_hex(4)  # event ids of this process
        self._counter = 0
        self._written = 0  # the highest counter written to Redis (or lost): what its progress key says
        # In the events' slot: the progress set after a batch lands after its events (`_find` relies on it).
        self._writer_prefix = root + "-writer:"
        self._budget_prefix = root + "-budget:"
        # Events wait here for `write` (`run_writer`), so sending a message never waits for Redis.
        self._queue, self._queued = anyio.create_memory_object_stream[Queued](queue_size)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        digest = _digest(stream_id)
        namespace = EVENTS.get()
        if namespace is None:
            return marked_event_id(stream_id, f"{digest}.unscoped")
        data = b"" if message is None else jsonrpc_message_adapter.dump_json(message, by_alias=True, exclude_unset=True)
        self._counter += 1
        event = f"{self._tag}-{self._counter}"
        caller = EVENTS_CALLER.get() or f"session {namespace}"
        try:
            self._queue.send_nowait((namespace, caller, digest, (event, stream_id, self.presence.replica, data)))
        except anyio.WouldBlock:
            self._lose(1, "the queue is full")
        return marked_event_id(stream_id, f"{digest}.{event}")

    async def run_writer(self) -> None:
        """Until cancelled: the queued events to Redis, in order, as many per round trip as are waiting; and
        this writer's progress, so that replays elsewhere know which of its ids can still arrive."""
        async with anyio.create_task_group() as task_group:
            # Deleted on the way out: an id of this process not stored by then never will be.
            progress = self._writer_prefix + self._tag
            interval = self.presence.interval
            task_group.start_soon(
                keep_key, self.client, progress, lambda: self._written, interval, self._log, "SSE writer progress"
            )
            while True:
                first = await self._queued.receive()
                await self.write([first])

    async def write(self, batch: list[Queued]) -> None:
        """`batch` and whatever else is queued, in one pipeline."""
        while len(batch) < _WRITE_BATCH:
            try:
                batch.append(self._queued.receive_nowait())
            except anyio.WouldBlock:
                break
        # Queued in counter order: the last is the highest.
        high = max([self._written, *(_counter_of(fields[0]) for *_, fields in batch[-1:])])
        try:
            try:
                answers = await self._send(batch, high)
            except NoScriptError:
                # A cluster's pipeline leaves loading to us (a node new, restarted or failed over lacks the
                # script): every EVALSHA of the batch, all on that node, failed and added nothing.
                await self.client.script_load(ADD)
                answers = await self._send(batch, high)
            self._note_budget(answers[:-1])
        except STORE_ERRORS as exc:
            self._lose(len(batch), type(exc).__name__)
        finally:
            # Only now (stored, or lost for good) may `_announce` say so: not while the events are on their way.
            self._written = high

    async def _send(self, batch: list[Queued], high: int) -> list[Any]:
        bounds = (self.max_events, self.session_events, self.session_bytes)
        async with self.client.pipeline(transaction=False) as pipe:
            for namespace, caller, digest, fields in batch:
                keys = [f"{self.prefix}{namespace}:{digest}", *self._session_keys(namespace)]
                budget = (caller, self.caller_bytes, self.total_bytes, *self._budget_args(namespace))
                # redis-py's AsyncScript takes a ClusterPipeline (it checks for one); its annotation leaves it out.
                await self._add(keys, [*fields, *bounds, *budget], client=pipe)  # type: ignore[arg-type]
            # After the events, on the same connection: a reader that sees the counter finds them stored.
            pipe.set(self._writer_prefix + self._tag, high, px=expiry_ms(self.presence.interval))
            return list(await pipe.execute())

    def _session_keys(self, namespace: str) -> list[str]:
        """The session's list of its events and its byte count, then the budget's keys (see `BUDGET` in shared/event_scripts.py)."""
        budget = self._budget_prefix
        return [f"{self.prefix}{namespace}:held", f"{self.prefix}{namespace}:bytes"] + [
            budget + name for name in ("total", "sizes", "charged", "callers", "expiry")
        ]

    def _budget_args(self, namespace: str) -> tuple[str, str, int, str, int]:
        # The clock in ARGV, not the script's `TIME`: a script then does the same wherever it is replayed.
        return self.prefix, namespace, self.ttl_ms, self._budget_prefix + "caller:", int(time.time() * 1000)

    def _note_budget(self, answers: list[Any]) -> None:
        """Counts (and says, at most once an interval) what the callers' and the total's bounds dropped."""
        dropped = sum(int(answer[1]) for answer in answers)
        refused = sum(1 for answer in answers if not answer[0])
        if dropped:
            self.dropped += dropped
            self._log.warning(
                "caller",
                "sessions: a caller's SSE events over sessions.max_event_bytes_per_caller_in_redis (%d bytes): "
                "its oldest dropped (%d so far)",
                self.caller_bytes,
                self.dropped,
            )
        if refused:
            self.refused += refused
            self._log.warning(
                "total",
                "sessions: SSE events in Redis over sessions.max_event_bytes_in_redis (%d bytes): new events not "
                "stored (%d so far); their clients get them, but cannot resume after them",
                self.total_bytes,
                self.refused,
            )

    async def forget(self, namespace: str) -> None:
        """Deletes a session's events (it was deleted: nobody can resume its streams). An event still queued
        for it is written after, and expires with the session's idle timeout."""
        await self._forget(self._session_keys(namespace), list(self._budget_args(namespace)))

    def _lose(self, count: int, why: str) -> None:
        self.lost += count
        self._log.warning("store", "sessions: SSE events not stored (%d so far): %s", self.lost, why)

    async def holds(self, last_event_id: EventId) -> bool:
        """Whether the session's stream holds `last_event_id` (or its live writer is about to store it): a replay
        would start from it. Its `None` says both "not held" and "answered, the stream is over". Redis
        unreachable counts as held: the replay then says what it can."""
        located = self._located(last_event_id)
        if located is None:
            return False
        try:
            entries = await self._find(*located)
        except STORE_ERRORS:
            return True
        if entries:
            _FOUND.set(_Found(*located, entries))  # for the replay that follows, which then reads nothing
        return bool(entries)

    def _located(self, last_event_id: EventId) -> tuple[str, str] | None:
        """(the stream's key in this session, the event's id in it); None for an id no stream of ours holds."""
        namespace = EVENTS.get()
        digest, _, event = last_event_id.removeprefix(GET_EVENT_PREFIX).partition(".")
        if namespace is None or not event or digest != _digest_shape(digest):
            return None
        if names_get_stream(last_event_id) and digest != GET_STREAM_DIGEST:
            return None  # marked as the GET stream's, names another: not an id this store handed out
        return f"{self.prefix}{namespace}:{digest}", event

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        located = self._located(last_event_id)
        if located is None:
            return None
        key, event = located
        entries = _taken(key, event)
        if entries is None:  # no `holds` before it in this request (or Redis failed it)
            try:
                entries = await self._find(key, event)
            except STORE_ERRORS as exc:
                self._log.warning("replay", "sessions: SSE replay failed: %s", type(exc).__name__)
                return None
        if not entries:
            return None  # unknown, of another session, or dropped since
        stream_id = entries[0][1].get("s", b"").decode()
        if stream_id == GET_STREAM_KEY:
            await _Tail(stream_id, owner="", after=entries[0][0]).send(entries[1:], send_callback)
            return stream_id
        if _answers(entries[0][1]):
            return None  # resumed from the request's answer: its stream is over
        tail = _Tail(stream_id, owner=entries[0][1].get("r", b"").decode(), after=entries[0][0])
        if not await tail.send(entries[1:], send_callback):
            await self._follow(key, tail, send_callback)
        # The answer (or the error for a request lost) was sent: no stream id, so the SDK ends the response
        # rather than holding it open, with pings, for an answer already given.
        return None

    async def _follow(self, key: str, tail: _Tail, send_callback: EventCallback) -> None:
        """A request's stream without its answer yet: what is stored next, until the answer or its replica's end."""
        while True:
            await anyio.sleep(self.poll_interval)
            try:
                entries = await self._range(key, "(" + tail.after, _TAIL_BATCH)
                if await tail.send(entries, send_callback):
                    return
                if entries or await self.presence.alive(tail.owner):
                    continue
                reason = f"the replica running this request ({tail.owner}) stopped before answering"
            except STORE_ERRORS as exc:
                reason = f"the session store is unreachable ({type(exc).__name__})"
            error = ErrorData(code=INTERNAL_ERROR, message=f"Request lost: {reason}; it may be retried")
            await send_callback(EventMessage(JSONRPCError(jsonrpc="2.0", id=_request_id(tail.stream_id), error=error)))
            return

    async def _find(self, key: str, event: str) -> list[Entry]:
        """The stream's entries from the one with id `event` on; [] when it is not there and cannot arrive."""
        tag, counter = _event_parts(event)
        if counter is None or (tag == self._tag and counter > self._counter):
            return []  # not an id this gateway hands out, or one this process never issued
        # The writer's progress before the stream: an event it says is written is then in this read (it sets
        # its progress after the events); in the other order, one stored between the two reads was missed.
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self._writer_prefix + tag)
            pipe.xrange(key, min="-", max="+", count=self.max_events + 1)
            written, raw = await pipe.execute()
        entries = _entries(raw)
        found = _from_event(entries, event)
        if found or not _may_arrive(counter, written):
            return found
        return await self._await_event(key, event, tag, counter, entries[-1][0] if entries else None)

    async def _await_event(self, key: str, event: str, tag: str, counter: int, after: str | None) -> list[Entry]:
        """Entries from `event` on once its writer stores it, looking only at entries added after `after`;
        [] after `_FIND_WAIT`, once its writer has gone or written past it, or after reading a stream's worth."""
        budget = self.max_events + 1
        with anyio.move_on_after(_FIND_WAIT):
            while budget > 0:
                await anyio.sleep(self.poll_interval)
                async with self.client.pipeline(transaction=False) as pipe:  # in that order, as in `_find`
                    pipe.get(self._writer_prefix + tag)
                    pipe.xrange(key, min="-" if after is None else "(" + after, max="+", count=min(budget, _TAIL_BATCH))
                    written, raw = await pipe.execute()
                entries = _entries(raw)
                budget -= len(entries)
                found = _from_event(entries, event)
                if found:  # the rest of the stream from it (this look read at most a batch)
                    return await self._range(key, found[0][0], self.max_events + 1)
                if not _may_arrive(counter, written):
                    return []
                after = entries[-1][0] if entries else after
        return []

    async def _range(self, key: str, start: str, count: int) -> list[Entry]:
        """Entries from `start` on, as (id, fields)."""
        return _entries(await self.client.xrange(key, min=start, max="+", count=count))


class _Tail:
    """Where a replay of one stream stands: the last entry sent, and the replica running its request."""

    def __init__(self, stream_id: str, owner: str, after: str) -> None:
        self.stream_id = stream_id
        self.owner = owner
        self.after = after

    async def send(self, entries: list[Entry], send_callback: EventCallback) -> bool:
        """Sends the entries' messages; True once the request's answer was among them."""
        for entry_id, fields in entries:
            self.after = entry_id
            data = fields.get("m", b"")
            if not data:
                continue  # a priming event: an id to resume from, nothing to send
            self.owner = fields.get("r", b"").decode()
            try:
                message = jsonrpc_message_adapter.validate_json(data, by_name=False)
            except ValidationError:
                logger.warning("sessions: an unreadable SSE event was skipped")
                continue
            event_id = marked_event_id(self.stream_id, f"{_digest(self.stream_id)}.{fields.get('e', b'').decode()}")
            await send_callback(EventMessage(message, event_id))
            if isinstance(message, JSONRPCResponse | JSONRPCError) and self.stream_id != GET_STREAM_KEY:
                return True
        return False


def _taken(key: str, event: str) -> list[Entry] | None:
    """What `holds` read in this request from `event` of stream `key`, emptied out of its holder; None if nothing."""
    found = _FOUND.get()
    if found is None or found.key != key or found.event != event:
        return None
    entries, found.entries = found.entries, None
    return entries


def _answers(fields: dict[str, bytes]) -> bool:
    """Whether an entry holds a request's answer (a response or an error)."""
    data = fields.get("m", b"")
    if not data:
        return False
    try:
        message = jsonrpc_message_adapter.validate_json(data, by_name=False)
    except ValidationError:
        return False
    return isinstance(message, JSONRPCResponse | JSONRPCError)


def _entries(raw: Any) -> list[Entry]:
    """XRANGE's answer as (id, fields)."""
    return [
        (_text(entry_id), {_text(name): _bytes(value) for name, value in fields.items()}) for entry_id, fields in raw
    ]


def _from_event(entries: list[Entry], event: str) -> list[Entry]:
    """`entries` from the one whose event id is `event` on; [] when none is."""
    for index, (_, fields) in enumerate(entries):
        if fields.get("e", b"").decode() == event:
            return entries[index:]
    return []


def _event_parts(event: str) -> tuple[str, int | None]:
    """(process tag, counter) of an event id's `<tag>-<counter>`; counter None when it is not of that shape."""
    tag, _, number = event.partition("-")
    shaped = len(tag) == 8 and all(c in "0123456789abcdef" for c in tag) and number.isdigit() and len(number) < 20
    return tag, int(number) if shaped else None


def _counter_of(event: str) -> int:
    return _event_parts(event)[1] or 0


def _may_arrive(counter: int, written: Any) -> bool:
    """Whether an event numbered `counter`, not in its stream, may still be on its way: its writer is running
    (its progress key is there) and has not written that far yet."""
    return written is not None and _text(written).isdigit() and int(_text(written)) < counter


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _digest(stream_id: str) -> str:
    return hashlib.sha256(stream_id.encode()).hexdigest()[:16]


def _digest_shape(value: str) -> str:
    """`value` when it could be a stream digest, else "" (never a key of ours)."""
    return value if len(value) == 16 and all(c in "0123456789abcdef" for c in value) else ""


def _request_id(stream_id: str) -> RequestId:
    """The SDK names a request's stream `str(request id)`; clients number their requests."""
    return int(stream_id) if stream_id.isdigit() else stream_id
