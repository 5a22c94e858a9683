"""How an SSE event id says it is the standalone GET stream's, the same in both event stores.

The memory store (server/event_store.py) and the Redis store (shared/events.py) mark the ids of the standalone
GET stream's events, so the transport (server/lazy_stream.py) can tell what an id no longer held was for without
the store: a request's stream lost its result (refused), the GET stream only notifications (served afresh). The
rule lives here, below both stores, so that `shared/` need not import `server/`.
"""

from __future__ import annotations

import hashlib

from mcp.server.streamable_http import GET_STREAM_KEY, EventId, StreamId

# How the ids of the standalone GET stream's events start (in either store).
GET_EVENT_PREFIX = "get-"
# The standalone GET stream's digest in the Redis store's ids (`<digest>.<tag>-<counter>`, shared/events.py): an
# id written unmarked by a replica of the previous version is still known for the GET stream's by it.
GET_STREAM_DIGEST = hashlib.sha256(GET_STREAM_KEY.encode()).hexdigest()[:16]


def marked_event_id(stream_id: StreamId, event_id: str) -> EventId:
    """`event_id` as handed out: marked when it is an event of the standalone GET stream."""
    return GET_EVENT_PREFIX + event_id if stream_id == GET_STREAM_KEY else event_id


def names_get_stream(event_id: EventId) -> bool:
    """Whether `event_id` says it is an event of the standalone GET stream (it may still be forged, or dropped:
    that costs nothing, the stream holds only what a GET without `Last-Event-ID` is sent)."""
    return event_id.startswith((GET_EVENT_PREFIX, GET_STREAM_DIGEST + "."))
