"""A bounded in-memory event store, so SSE streams can be resumed with `Last-Event-ID`.

The SDK defines the `EventStore` interface but ships no implementation. This one keeps the last
`max_events` events of all sessions in one ring (oldest dropped first) and, per stream, the ids of its
events still held, so a replay walks only the resumed stream. Event ids are a process-wide counter
prefixed by a random run tag, so an id from an earlier gateway process never matches.

The SDK hands one store to every session and names a request's stream by the request's id, which is the
same in every session ("1", "2", ...). So each session gets its own view (`session_view`): its streams are
keyed by (session, stream), and a replay only follows an event its own session stored. Without that, a
client could resume from an event id of its own and be sent another session's messages on the same
request id, or name another session's event id (the counter is guessable).

The ring is bounded in events and in bytes (oldest dropped first): each message is kept as its JSON (the
same encoding the Redis store keeps), whose length is what it costs, and decoded again on a replay. A count
alone let 10,000 large streamed answers stay, each as a tree of Python objects the garbage collector walked.
Each session is bounded too (`sessions.max_events_per_session`, `sessions.max_event_bytes_per_session`):
past its own bound a session drops its own oldest events, so one busy session cannot push every other
session's events out of the ring. So is each caller (`sessions.max_event_bytes_per_caller_in_memory`; a caller:
the session's principal, else its client's address, as in redis mode): past it, the caller's oldest event of any of
its sessions goes. And past the ring's own bounds, the oldest event of the caller holding the most goes, not the
ring's oldest: one address's ten sessions of 4 MB answers pushed every other client's events out, and a client
resuming a cut call was refused, its result lost. A session that ends (DELETE, idle) takes its events with it
(`forget`). The newest event of a session always stays, whatever its size: it is the one a client cut off now
would resume from.

A replay of a request's stream ends with the request's answer: it returns no stream id once the answer was
sent (or was the event resumed from), so the SDK closes the response. Returning the stream's id then made the
SDK hold the resumed stream open, with pings, for an answer already given: a client that does not stop
reading at the answer (curl, an EventSource) waited for ever. A replay reads the stream again after sending
what it found, until nothing new came meanwhile: an event stored while the client took the replay was in no
snapshot and on no live stream (the SDK registers that only after the replay), so it was lost.

The gateway's sessions (through `UnsentAnswers`) go further: a replay of a request's stream follows it, sending each
event as it is stored, until the answer (None) or the session's end (`forget`), as the Redis store's replay does
(shared/events.py). Handed the stream's id, the SDK minted a priming event and registered its live stream only once
the response's writer took that event, which waits on a client slow to read: an answer routed meanwhile was stored
but sent on no stream, and the resumed stream got pings for ever.

A replay's `None` says both "nothing of that id is held" and "the answer was sent, the stream is over", as
the SDK's interface wants; `holds` tells the first apart before a replay, so the transport can refuse an id
it cannot resume from (server/lazy_stream.py) rather than answer an empty stream the SDK's client resumes
from again and again.

An event of the standalone GET stream (server-to-client notifications) has an id starting with
`GET_EVENT_PREFIX` (shared/event_ids.py), in both stores, so the transport can tell what an id no longer held was for without the
store: a request's stream lost its result (refused), the GET stream only notifications (served afresh, or
the client never hears one again). The mark says only that; the rest of the id stays unguessable. An id
without it (as every id was before) is a request stream's.

The SDK asks `if self._event_store:`, so the store is always true: with only `__len__`, an empty store
was false, nothing was ever stored, and no stream could be resumed.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from contextvars import ContextVar
from itertools import count
from typing import Protocol, runtime_checkable

import anyio
from mcp.server.streamable_http import GET_STREAM_KEY, EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCError, JSONRPCMessage, JSONRPCNotification, JSONRPCResponse, jsonrpc_message_adapter

from vmcp_opt.config import SessionsConfig
from vmcp_opt.server.released_streams import RELEASE_STREAM
from vmcp_opt.shared.event_ids import GET_EVENT_PREFIX, marked_event_id, names_get_stream

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# Whether a followed replay sends a priming event once it has sent what was held (set by the transport for a client
# that reads one: 2025-11-25 on), as the SDK primes a resumed stream it holds open: the client sees it is live.
PRIME_FOLLOWED: ContextVar[bool] = ContextVar("vmcp_prime_followed", default=False)
# That priming event's message, for the transport to write as a priming event (no data): never sent as it is.
PRIMING = JSONRPCNotification(jsonrpc="2.0", method="notifications/vmcp/priming")

# (session view number, the SDK's stream id)
_StreamKey = tuple[int, StreamId]
# An event held: its stream, its message's JSON (b"" for a priming event), and whether it ends its stream.
_Event = tuple[_StreamKey, bytes, bool]


class _Held:
    """One session's events in the ring, oldest first, and their bytes; the caller they are charged to."""

    __slots__ = ("bytes", "caller", "numbers")

    def __init__(self, caller: str) -> None:
        self.numbers: deque[int] = deque()
        self.bytes = 0
        self.caller = caller


class _Caller:
    """One caller's events in the ring: how many, their bytes, and the sessions holding them."""

    __slots__ = ("bytes", "events", "views")

    def __init__(self) -> None:
        self.bytes = 0
        self.events = 0
        self.views: set[int] = set()


class _Waiter:
    """Replays waiting for a stream's next event: set when one is stored (`ended`: when its session ended)."""

    __slots__ = ("ended", "stored")

    def __init__(self) -> None:
        self.stored = anyio.Event()
        self.ended = False


class BoundedEventStore(EventStore):
    """The ring shared by all sessions. Used directly (a single-session server, as in the examples) it is
    one view; `session_view()` gives each session of the gateway its own."""

    def __init__(
        self,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        session_events: int | None = None,
        session_bytes: int | None = None,
        caller_bytes: int | None = None,
    ) -> None:
        """`max_*`: all sessions together; `session_*`: each session; `caller_bytes`: each caller's sessions
        together (unset: the same as all together)."""
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.session_events = max_events if session_events is None else session_events
        self.session_bytes = max_bytes if session_bytes is None else session_bytes
        self.caller_bytes = max_bytes if caller_bytes is None else caller_bytes
        bounds = (self.max_events, self.max_bytes, self.session_events, self.session_bytes, self.caller_bytes)
        if min(bounds) < 1:
            raise ValueError("event store bounds must be at least 1")
        self.bytes = 0
        self._tag = secrets.token_hex(4)
        self._counter = 0
        self._views = count(1)
        # event number -> the event; insertion order is event order.
        self._events: OrderedDict[int, _Event] = OrderedDict()
        self._streams: dict[_StreamKey, deque[int]] = {}
        self._held: dict[int, _Held] = {}  # per session view
        self._callers: dict[str, _Caller] = {}
        self._waiters: dict[_StreamKey, _Waiter] = {}  # replays of request streams waiting for their next event

    def __bool__(self) -> bool:
        # The SDK tests `if self._event_store:`; a store must count as present even while it is empty.
        return True

    def __len__(self) -> int:
        return len(self._events)

    def session_view(self, caller: str | None = None) -> SessionEvents:
        """A store for one session over this ring: same bound, replays confined to the session; its events charged
        to `caller` (None: the session alone)."""
        return SessionEvents(self, next(self._views), caller)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        return self.store(0, stream_id, message)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        return await self.replay(0, last_event_id, send_callback)

    async def holds(self, last_event_id: EventId) -> bool:
        return self.holds_event(0, last_event_id)

    def holds_event(self, view: int, last_event_id: EventId) -> bool:
        """Whether session `view` can be replayed from `last_event_id`: the event is still held, and its own."""
        return self._entry(view, last_event_id) is not None

    def _entry(self, view: int, last_event_id: EventId) -> tuple[int, _Event] | None:
        number = self._parse(last_event_id)
        entry = None if number is None else self._events.get(number)
        if number is None or entry is None or entry[0][0] != view:
            return None  # unknown, dropped, or another session's event
        if names_get_stream(last_event_id) != (entry[0][1] == GET_STREAM_KEY):
            return None  # marked as the other kind of stream: not an id this store handed out
        return number, entry

    def store(
        self, view: int, stream_id: StreamId, message: JSONRPCMessage | None, caller: str | None = None
    ) -> EventId:
        self._counter += 1
        number = self._counter
        key = (view, stream_id)
        data = b"" if message is None else jsonrpc_message_adapter.dump_json(message, by_alias=True, exclude_unset=True)
        self._events[number] = (key, data, _ends_stream(stream_id, message))
        self.bytes += len(data)
        self._streams.setdefault(key, deque()).append(number)
        held = self._held_by(view, caller)
        held.numbers.append(number)
        held.bytes += len(data)
        charged = self._callers[held.caller]
        charged.events += 1
        charged.bytes += len(data)
        # The newest event stays whatever its size: it is the one a client cut off now would resume from.
        while len(held.numbers) > self.session_events or (held.bytes > self.session_bytes and len(held.numbers) > 1):
            self._drop(held.numbers[0])
        while charged.bytes > self.caller_bytes and charged.events > 1:
            self._drop(self._oldest_of(charged))
        while len(self._events) > self.max_events or (self.bytes > self.max_bytes and len(self._events) > 1):
            self._drop(self._victim(by_events=len(self._events) > self.max_events))
        self._wake(key)
        return self._event_id(stream_id, number)

    def _held_by(self, view: int, caller: str | None) -> _Held:
        held = self._held.get(view)
        if held is None:
            held = self._held[view] = _Held(caller or f"session {view}")
            self._callers.setdefault(held.caller, _Caller()).views.add(view)
        return held

    def _oldest_of(self, caller: _Caller) -> int:
        return min(self._held[view].numbers[0] for view in caller.views)

    def _victim(self, by_events: bool) -> int:
        """The oldest event of the caller holding the most (events or bytes) but the newest event: one caller
        cannot push every other caller's events out. Called with two events held or more, so there is one."""
        victim, most = 0, -1
        for caller in self._callers.values():
            size = caller.events if by_events else caller.bytes
            if size > most and (oldest := self._oldest_of(caller)) != self._counter:
                victim, most = oldest, size
        return victim

    def _event_id(self, stream_id: StreamId, number: int) -> EventId:
        return marked_event_id(stream_id, f"{self._tag}-{number}")

    def forget(self, view: int) -> None:
        """Drops every event of session `view` (it ended: nobody can resume its streams)."""
        held = self._held.get(view)
        while held is not None and held.numbers:
            self._drop(held.numbers[0])
        for key in [key for key in self._waiters if key[0] == view]:
            self._wake(key, ended=True)

    def _drop(self, number: int) -> None:
        """Drops event `number`, the oldest of its session and so of its stream."""
        key, data, _ = self._events.pop(number)
        self.bytes -= len(data)
        numbers = self._streams[key]
        numbers.popleft()
        if not numbers:
            del self._streams[key]
        held = self._held[key[0]]
        held.numbers.popleft()
        held.bytes -= len(data)
        charged = self._callers[held.caller]
        charged.events -= 1
        charged.bytes -= len(data)
        if not held.numbers:
            del self._held[key[0]]
            charged.views.discard(key[0])
            if not charged.views:
                del self._callers[held.caller]

    async def replay(
        self, view: int, last_event_id: EventId, send_callback: EventCallback, follow: bool = False
    ) -> StreamId | None:
        """Sends what followed `last_event_id` on its stream; the stream's id while it goes on, else None. With
        `follow`, a request's stream is sent as it is stored, until its answer (or its session's end): None."""
        found = self._entry(view, last_event_id)
        if found is None:
            return None
        number, (key, _, ended) = found
        sent, primed = number, not PRIME_FOLLOWED.get()
        while not ended:
            later = [held for held in self._streams.get(key, ()) if held > sent]
            if not later and (not follow or key[1] == GET_STREAM_KEY):
                return key[1]  # its later events go out live: the SDK registers the stream after this
            if not later and not primed:
                primed = True  # stored, so a client cut from here on resumes from it
                await send_callback(EventMessage(PRIMING, self.store(view, key[1], None)))
                continue
            if not later:
                if not await self._stored_on(key):
                    return None  # the session ended: no answer will come
                continue
            for event in later:
                held_event = self._events.get(event)
                if held_event is None:
                    continue  # dropped while an earlier one was being sent
                sent, (_, data, ended) = event, held_event
                if data:  # priming events carry no message
                    message = jsonrpc_message_adapter.validate_json(data)
                    await send_callback(EventMessage(message, self._event_id(key[1], event)))
                if ended:
                    break
        return None  # the request's answer was sent: its stream is over

    async def _stored_on(self, key: _StreamKey) -> bool:
        """Waits for the next event of stream `key`: True once one is stored, False once its session ended."""
        waiter = self._waiters.setdefault(key, _Waiter())
        await waiter.stored.wait()
        return not waiter.ended

    def _wake(self, key: _StreamKey, ended: bool = False) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is not None:
            waiter.ended = ended
            waiter.stored.set()

    def _parse(self, event_id: EventId) -> int | None:
        tag, _, number = event_id.removeprefix(GET_EVENT_PREFIX).rpartition("-")
        if tag != self._tag or not number.isdigit():
            return None
        return int(number)


def _ends_stream(stream_id: StreamId, message: JSONRPCMessage | None) -> bool:
    """A request's answer ends its stream; the standalone GET stream has none."""
    return stream_id != GET_STREAM_KEY and isinstance(message, JSONRPCResponse | JSONRPCError)


def memory_event_store(settings: SessionsConfig) -> BoundedEventStore:
    """The store of `sessions.store: memory`, bounded as `settings` says."""
    return BoundedEventStore(
        settings.max_events_in_memory,
        settings.max_event_bytes_in_memory,
        settings.max_events_per_session,
        settings.max_event_bytes_per_session,
        settings.max_event_bytes_per_caller_in_memory,
    )


class SessionEvents(EventStore):
    """One session's events in the shared ring."""

    def __init__(self, ring: BoundedEventStore, view: int, caller: str | None = None) -> None:
        self._ring = ring
        self._view = view
        self._caller = caller

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        return self._ring.store(self._view, stream_id, message, self._caller)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        return await self._ring.replay(self._view, last_event_id, send_callback)

    async def follow(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        """The replay, a request's stream followed until its answer (`BoundedEventStore.replay`)."""
        return await self._ring.replay(self._view, last_event_id, send_callback, follow=True)

    async def holds(self, last_event_id: EventId) -> bool:
        return self._ring.holds_event(self._view, last_event_id)

    def forget(self) -> None:
        self._ring.forget(self._view)


_UNSTORED = "unstored"


@runtime_checkable
class ProbedStore(Protocol):
    """A store that can say whether a replay from an event id has an event to start from (both of ours)."""

    async def holds(self, last_event_id: EventId) -> bool: ...


class UnsentAnswers(EventStore):
    """The session's event store, less the answers that go out as plain JSON.

    The SDK stores every message for a request before the transport sees it, so that a cut SSE stream can be
    resumed. An answer sent as one JSON body has no stream and no event id a client could resume from, yet it
    stayed in the store: a 10k-tool `tools/list` answer held ~12 MB of objects there, every time, until 10,000
    later events pushed it out. While a request is `undecided` (nothing of it stored yet), its own answer
    arriving first is that case and is not stored. Nor is the release message (server/released_streams.py): it
    is no client's."""

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner
        self.undecided: set[StreamId] = set()

    def __bool__(self) -> bool:
        return True  # the SDK asks `if self._event_store:`

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        if stream_id == RELEASE_STREAM:
            return stream_id  # no client's message: it only takes the place of the last one in the SDK's router
        if stream_id in self.undecided and message is not None:
            self.undecided.discard(stream_id)
            if isinstance(message, JSONRPCResponse | JSONRPCError):
                return f"{_UNSTORED}-{stream_id}"  # answered as JSON: no client ever sees this id
        return await self.inner.store_event(stream_id, message)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        if isinstance(self.inner, SessionEvents):
            # A request's stream followed to its answer here: the live stream the SDK registers after the replay
            # missed an answer stored before it was (Redis's replay follows it too).
            return await self.inner.follow(last_event_id, send_callback)
        return await self.inner.replay_events_after(last_event_id, send_callback)

    async def holds(self, last_event_id: EventId) -> bool:
        return await self.inner.holds(last_event_id) if isinstance(self.inner, ProbedStore) else True

    def forget(self) -> None:
        """The session ended: its events in memory go (Redis keeps them to their expiry, bounded per session)."""
        if isinstance(self.inner, SessionEvents):
            self.inner.forget()
