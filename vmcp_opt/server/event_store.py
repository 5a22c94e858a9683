"""A bounded in-memory event store, so SSE streams can be resumed with `Last-Event-ID`.

The SDK defines the `EventStore` interface but ships no implementation. This one keeps the last
`max_events` events of all streams in one ring (oldest dropped first) and, per stream, the ids of its
events still held, so a replay walks only the resumed stream. Event ids are a process-wide counter
prefixed by a random run tag, so an id from an earlier gateway process never matches.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage

DEFAULT_MAX_EVENTS = 10_000


class BoundedEventStore(EventStore):
    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.max_events = max_events
        self._tag = secrets.token_hex(4)
        self._counter = 0
        # event number -> (stream, message); insertion order is event order.
        self._events: OrderedDict[int, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._streams: dict[StreamId, deque[int]] = {}

    def __len__(self) -> int:
        return len(self._events)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._counter += 1
        number = self._counter
        self._events[number] = (stream_id, message)
        self._streams.setdefault(stream_id, deque()).append(number)
        while len(self._events) > self.max_events:
            _, (old_stream, _) = self._events.popitem(last=False)
            numbers = self._streams.get(old_stream)
            if numbers:
                numbers.popleft()
                if not numbers:
                    del self._streams[old_stream]
        return f"{self._tag}-{number}"

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        number = self._parse(last_event_id)
        if number is None or number not in self._events:
            return None
        stream_id = self._events[number][0]
        for later in list(self._streams.get(stream_id, ())):
            if later <= number:
                continue
            entry = self._events.get(later)
            if entry is None:
                continue
            message = entry[1]
            if message is not None:  # priming events carry no message
                await send_callback(EventMessage(message, f"{self._tag}-{later}"))
        return stream_id

    def _parse(self, event_id: EventId) -> int | None:
        tag, _, number = event_id.rpartition("-")
        if tag != self._tag or not number.isdigit():
            return None
        return int(number)
