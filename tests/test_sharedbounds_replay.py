"""A `Last-Event-ID` naming an event that is not stored (forged, or dropped from its stream) is answered at
once from one read (`sessions.store: redis`): before, the replay re-read the whole stream ten times a second
for two seconds, for every such request. An event still stored is replayed as before.

Real `redis-server`, a real `vmcp serve` with the conformance backend, raw HTTP (the SDK client sends only
ids it was given); Redis's own command counts (`INFO commandstats`) tell how many reads a resumption cost.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
import redis
import redis.asyncio as aioredis
from mcp.server.streamable_http import GET_STREAM_KEY, EventMessage
from mcp_types import JSONRPCNotification

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, Gateway, raw_session, running_gateway, sse_messages, write_config
from vmcp_opt.shared.events import EVENTS, RedisEventStore, ReplicaPresence

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Gateway]]:
    conformance = [sys.executable, str(EXAMPLES / "backends" / "conformance_server.py")]
    with running_redis() as server:
        config = {
            "backends": [{"name": "conformance", "command": conformance[0], "args": conformance[1:]}],
            "aggregation": {"conflict_resolution": "priority"},  # the backend's own tool names
            "redis": {"url": server.url, "timeout": 2.0},
            # A stream keeps its last two events: the call's first ones are dropped, as old events are.
            "sessions": {"store": "redis", "max_events_per_stream": 2},
        }
        with running_gateway(write_config(tmp_path_factory.mktemp("replay"), config)) as gateway:
            yield server, gateway


def streamed_call(gateway: Gateway, headers: dict[str, str]) -> list[tuple[str, dict[str, Any] | None]]:
    """(event id, message) of each event of a call answered as an SSE stream (it sends progress)."""
    params = {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "p"}}
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": params}
    events = []
    with httpx2.stream("POST", gateway.url, json=call, headers=headers, timeout=30) as response:
        for event_id, message in sse_messages(response.iter_lines()):
            assert event_id is not None
            events.append((event_id, message))
    assert events[-1][1] is not None and events[-1][1].get("id") == 5
    return events


def written(admin: redis.Redis, event_id: str) -> None:
    """Until the gateway has stored `event_id` and every event before it (it writes them in the background)."""
    tag, counter = event_id.split(".")[1].split("-")
    deadline = time.monotonic() + 30  # a hang guard: the loop ends once stored
    while int(admin.get(f"vmcp:events-writer:{tag}") or 0) < int(counter):
        assert time.monotonic() < deadline, "the gateway did not store its events"
        time.sleep(0.02)


def resumed(gateway: Gateway, headers: dict[str, str], admin: redis.Redis, event_id: str) -> tuple[list[Any], int]:
    """The messages a GET with `Last-Event-ID: event_id` replays up to the call's answer (the stream ends
    there), and the stream reads (XRANGE) it cost."""
    admin.config_resetstat()
    messages = []
    with httpx2.stream("GET", gateway.url, headers={**headers, "last-event-id": event_id}, timeout=30) as answer:
        if answer.status_code == 400:  # nothing held to resume from
            return [], xrange_calls(admin)
        assert answer.status_code == 200
        for _, message in sse_messages(answer.iter_lines()):
            if message is not None:
                messages.append(message)
            if message is not None and "id" in message:
                break
    return messages, xrange_calls(admin)


def xrange_calls(admin: redis.Redis) -> int:
    """Stream reads since the last `CONFIG RESETSTAT`."""
    stats: dict[str, Any] = admin.info("commandstats")
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


def test_a_forged_last_event_id_costs_one_read(served: tuple[RedisServer, Gateway]) -> None:
    server, gateway = served
    admin = redis.Redis(port=server.port)
    headers = raw_session(gateway.url)
    events = streamed_call(gateway, headers)
    written(admin, events[-1][0])
    # The stream's real digest, an event of a process that does not exist.
    digest = events[-1][0].split(".")[0]
    messages, reads = resumed(gateway, headers, admin, f"{digest}.{secrets.token_hex(4)}-3")
    assert messages == [] and reads == 1


def test_an_event_dropped_from_its_stream_costs_one_read_and_a_stored_one_still_replays(
    served: tuple[RedisServer, Gateway],
) -> None:
    server, gateway = served
    admin = redis.Redis(port=server.port)
    headers = raw_session(gateway.url)
    events = streamed_call(gateway, headers)
    assert len(events) > 2
    written(admin, events[-1][0])
    first, _ = events[0]  # its stream kept its last two events only
    messages, reads = resumed(gateway, headers, admin, first)
    assert messages == [] and reads == 1
    # The one before the answer is still stored: the answer is replayed.
    messages, _ = resumed(gateway, headers, admin, events[-2][0])
    assert [m.get("id") for m in messages] == [5]


@pytest.mark.anyio
async def test_an_event_still_in_its_writers_queue_is_waited_for(served: tuple[RedisServer, Gateway]) -> None:
    """The one case worth waiting for: the event's writer runs and has not stored it yet (a client resuming on
    another replica faster than the first wrote). The wait reads the stream's new entries until it is there."""
    server, _ = served
    client = aioredis.Redis.from_url(server.url)
    admin = redis.Redis(port=server.port)
    store = RedisEventStore(client, "t:", ReplicaPresence(client, "t:", "r"), max_events=10, ttl=60)
    token = EVENTS.set("ns-waiting")
    got: list[EventMessage] = []

    async def collect(message: EventMessage) -> None:
        got.append(message)

    try:
        await store.store_event(GET_STREAM_KEY, None)
        await store.write([])  # the stream exists, and its writer has said how far it has written
        message = JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"data": 1})
        priming = await store.store_event(GET_STREAM_KEY, None)
        await store.store_event(GET_STREAM_KEY, message)
        admin.config_resetstat()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(store.replay_events_after, priming, collect)
            with anyio.fail_after(30):  # until the replay has looked twice in vain
                while xrange_calls(admin) < 3:  # noqa: ASYNC110 - Redis's own count: no event to wait on
                    await anyio.sleep(0.01)
            await store.write([])
    finally:
        EVENTS.reset(token)
        await client.aclose()
    assert [m.message for m in got] == [message]
