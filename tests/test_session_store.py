"""The Redis forms of a session's record and of its SSE events, against a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from mcp.server.streamable_http import GET_STREAM_KEY, EventMessage
from mcp_types import InitializeRequestParams, JSONRPCError, JSONRPCNotification, JSONRPCResponse

from tests.redis_server import RedisServer, running_redis
from vmcp_opt.shared.events import EVENTS, RedisEventStore, ReplicaPresence
from vmcp_opt.shared.session_store import RedisSessions, SessionRecord

SESSION = "0123456789abcdef0123456789abcdef"
PARAMS = InitializeRequestParams.model_validate(
    {"protocolVersion": "2025-06-18", "capabilities": {"sampling": {}}, "clientInfo": {"name": "c", "version": "2"}},
    by_name=False,
)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis.url)
    await connection.flushdb()
    yield connection
    await connection.aclose()


@pytest.mark.anyio
async def test_a_session_record_round_trips_with_its_level_and_subscriptions(client: aioredis.Redis) -> None:
    sessions = RedisSessions(client, "t:", ttl=60)
    await sessions.save(SESSION, SessionRecord(PARAMS, "2025-06-18", "ns1"))
    await sessions.set_level(SESSION, "debug")
    for uri in ("test://a", "test://b", "test://c"):
        await sessions.subscription(SESSION, uri, subscribed=True)
    await sessions.subscription(SESSION, "test://b", subscribed=False)
    record = await sessions.load(SESSION)
    assert record == SessionRecord(PARAMS, "2025-06-18", "ns1", "debug", ("test://a", "test://c"))
    keys = [key.decode() for key in await client.keys("*")]
    assert len(keys) == 1 and SESSION not in keys[0]  # the id, a key to the session, is not written
    assert 0 < await client.pttl(keys[0]) <= 60_000


@pytest.mark.anyio
async def test_a_deleted_or_expired_session_is_gone(client: aioredis.Redis) -> None:
    sessions = RedisSessions(client, "t:", ttl=60)
    await sessions.save(SESSION, SessionRecord(PARAMS, "2025-06-18", "ns1"))
    assert await sessions.touch(SESSION) == "live"
    await sessions.delete(SESSION)
    assert await sessions.touch(SESSION) == "ended"
    assert await sessions.load(SESSION) is None
    # Written again by a replica that still holds it, a deleted session stays ended.
    await sessions.save(SESSION, SessionRecord(PARAMS, "2025-06-18", "ns1"))
    assert await sessions.load(SESSION) is None


@pytest.mark.anyio
async def test_a_record_lost_without_a_delete_is_missing_not_ended(client: aioredis.Redis) -> None:
    sessions = RedisSessions(client, "t:", ttl=60)
    await sessions.save(SESSION, SessionRecord(PARAMS, "2025-06-18", "ns1", "info", ("test://a",)))
    await client.flushdb()  # Redis restarted without its data
    assert await sessions.touch(SESSION) == "missing"
    await sessions.save(SESSION, SessionRecord(PARAMS, "2025-06-18", "ns1", "info", ("test://a",)))
    record = await sessions.load(SESSION)
    assert record is not None and record.subscriptions == ("test://a",)


@pytest.mark.anyio
async def test_an_unreadable_record_counts_as_no_session(client: aioredis.Redis) -> None:
    sessions = RedisSessions(client, "t:", ttl=60)
    await sessions.save(SESSION, SessionRecord(PARAMS, "2025-06-18", "ns1"))
    key = (await client.keys("*"))[0]
    await client.hset(key, "params", "{not json")
    assert await sessions.load(SESSION) is None


@pytest.mark.anyio
async def test_subscriptions_kept_per_session_are_bounded(client: aioredis.Redis) -> None:
    sessions = RedisSessions(client, "t:", ttl=60, max_subscriptions=2)
    await sessions.save(SESSION, SessionRecord(PARAMS, "2025-06-18", "ns1"))
    for n in range(5):
        await sessions.subscription(SESSION, f"test://{n}", subscribed=True)
    record = await sessions.load(SESSION)
    assert record is not None and record.subscriptions == ("test://0", "test://1")


def notification(n: int) -> JSONRPCNotification:
    return JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"level": "info", "data": n})


def event_store(client: aioredis.Redis, max_events: int = 10, **session_bounds: int) -> RedisEventStore:
    presence = ReplicaPresence(client, "t:", "replica-a")
    return RedisEventStore(client, "t:", presence, max_events=max_events, ttl=60, poll_interval=0.01, **session_bounds)


async def stream_keys(client: aioredis.Redis, namespace: str) -> list[bytes]:
    """The session's streams (not its list of events or its byte count)."""
    return [key for key in await client.keys(f"t:events:{namespace}:*") if await client.type(key) == b"stream"]


async def stored(store: RedisEventStore, namespace: str, messages: list[tuple[str, Any]]) -> list[str]:
    """The event ids of `messages` ((stream, message) pairs) stored for session `namespace`, written out."""
    token = EVENTS.set(namespace)
    try:
        ids = [await store.store_event(stream, message) for stream, message in messages]
    finally:
        EVENTS.reset(token)
    await store.write([])
    return ids


async def replay_in(store: RedisEventStore, namespace: str, event_id: str) -> list[Any]:
    token = EVENTS.set(namespace)
    try:
        _, got = await replay(store, event_id)
    finally:
        EVENTS.reset(token)
    return [m.message for m in got]


async def replay(store: RedisEventStore, event_id: str) -> tuple[str | None, list[EventMessage]]:
    got: list[EventMessage] = []

    async def collect(message: EventMessage) -> None:
        got.append(message)

    stream = await store.replay_events_after(event_id, collect)
    return stream, got


@pytest.mark.anyio
async def test_events_are_bounded_per_stream_and_expire(client: aioredis.Redis) -> None:
    store = event_store(client, max_events=10)
    token = EVENTS.set("ns1")
    try:
        ids = [await store.store_event(GET_STREAM_KEY, notification(n)) for n in range(35)]
        await store.write([])  # what the writer task does with the queue
        stream, got = await replay(store, ids[-4])
        assert stream == GET_STREAM_KEY
        assert [m.message.params["data"] for m in got] == [32, 33, 34]  # type: ignore[union-attr]
        assert [m.event_id for m in got] == ids[-3:]
        assert await replay(store, ids[0]) == (None, [])  # dropped: the oldest go first
    finally:
        EVENTS.reset(token)
    (key,) = await stream_keys(client, "ns1")
    assert await client.xlen(key) == 10
    for kept in await client.keys("t:events:*"):  # the stream, the session's list of events, its byte count
        assert 0 < await client.pttl(kept) <= 60_000


def answer(request: int) -> JSONRPCResponse:
    return JSONRPCResponse(jsonrpc="2.0", id=request, result={"n": request})


@pytest.mark.anyio
async def test_a_session_is_bounded_in_events_across_its_streams(client: aioredis.Redis) -> None:
    """30 streamed requests of 3 events each, 20 events per session: only the newest 20 stay, the streams
    they emptied are gone, and another session's events are untouched."""
    store = event_store(client, session_events=20)
    await stored(store, "ns2", [("1", notification(1))])
    firsts = []
    for request in range(1, 31):
        ids = await stored(
            store, "ns1", [(str(request), None), (str(request), notification(request)), (str(request), answer(request))]
        )
        firsts.append(ids[0])
    assert await client.llen("t:events:ns1:held") == 20
    assert len(await stream_keys(client, "ns1")) == 7  # the last 6 requests' streams whole, and 2 of a 7th's 3
    assert await replay_in(store, "ns1", firsts[0]) == []  # its stream was dropped
    assert await replay_in(store, "ns1", firsts[-1]) == [notification(30), answer(30)]
    assert await client.llen("t:events:ns2:held") == 1
    assert await stream_keys(client, "ns2")


@pytest.mark.anyio
async def test_a_deleted_sessions_events_are_gone_and_no_other_sessions(client: aioredis.Redis) -> None:
    store = event_store(client)
    await stored(store, "ns1", [(str(request), notification(request)) for request in range(1, 6)])
    await stored(store, "ns2", [("1", None)])
    await store.forget("ns1")
    assert await client.keys("t:events:ns1*") == []
    assert len(await stream_keys(client, "ns2")) == 1 and await client.llen("t:events:ns2:held") == 1
    await store.forget("ns3")  # a session that never streamed: nothing to do


@pytest.mark.anyio
async def test_a_session_is_bounded_in_bytes_and_keeps_its_newest_whatever_its_size(client: aioredis.Redis) -> None:
    store = event_store(client, session_bytes=10_000)
    big = JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"data": "x" * 3000})
    await stored(store, "ns1", [(GET_STREAM_KEY, big) for _ in range(10)])
    held = int(await client.get("t:events:ns1:bytes") or 0)
    assert 3 * 3000 < held <= 10_000  # three of ~3,050 bytes fit
    assert await client.llen("t:events:ns1:held") == 3
    huge = JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"data": "y" * 50_000})
    (last,) = await stored(store, "ns1", [(GET_STREAM_KEY, huge)])
    assert await client.llen("t:events:ns1:held") == 1  # only the newest, over the bound on its own
    (key,) = await stream_keys(client, "ns1")
    assert await client.xlen(key) == 1 and int(await client.get("t:events:ns1:bytes") or 0) > 50_000
    ((_, fields),) = await client.xrange(key)
    assert last.endswith("." + fields[b"e"].decode())  # the entry kept is the newest event


@pytest.mark.anyio
async def test_a_replay_reads_only_its_own_sessions_events(client: aioredis.Redis) -> None:
    store = event_store(client)
    token = EVENTS.set("ns1")
    first = await store.store_event("1", None)
    await store.store_event("1", notification(1))
    await store.write([])
    EVENTS.reset(token)
    token = EVENTS.set("ns2")
    try:
        assert await replay(store, first) == (None, [])
        assert await replay(store, "not an event id") == (None, [])
    finally:
        EVENTS.reset(token)


@pytest.mark.anyio
async def test_a_request_stream_is_followed_until_its_answer(client: aioredis.Redis) -> None:
    store = event_store(client)
    presence = store.presence
    token = EVENTS.set("ns1")
    try:
        priming = await store.store_event("4", None)
        await store.write([])
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(presence.run)
            while not await presence.alive("replica-a"):  # noqa: ASYNC110 - its first heartbeat
                await anyio.sleep(0.01)

            async def answer_later() -> None:
                await store.store_event("4", notification(1))
                await store.store_event("4", JSONRPCResponse(jsonrpc="2.0", id=4, result={}))
                await store.write([])

            tasks.start_soon(answer_later)
            stream, got = await replay(store, priming)
            tasks.cancel_scope.cancel()
    finally:
        EVENTS.reset(token)
    assert stream is None  # the answer was sent: the stream is over, the SDK ends the response
    assert [type(m.message) for m in got] == [JSONRPCNotification, JSONRPCResponse]


@pytest.mark.anyio
async def test_a_request_whose_replica_is_gone_ends_with_an_error(client: aioredis.Redis) -> None:
    store = event_store(client)  # its replica never heartbeats: it counts as gone
    token = EVENTS.set("ns1")
    try:
        priming = await store.store_event("5", None)
        await store.store_event("5", notification(1))
        await store.write([])
        stream, got = await replay(store, priming)
    finally:
        EVENTS.reset(token)
    assert stream is None  # the error for the lost request was sent: the stream is over
    error = got[-1].message
    assert isinstance(error, JSONRPCError) and error.id == 5
    assert "replica-a" in error.error.message and "stopped before answering" in error.error.message


@pytest.mark.anyio
async def test_events_without_redis_still_get_an_id_and_are_counted_lost(redis: RedisServer) -> None:
    connection = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    store = event_store(connection)
    token = EVENTS.set("ns1")
    try:
        event_id = await store.store_event("1", notification(1))
        assert store.lost == 0  # queued: sending the message did not wait for Redis
        await store.write([])
    finally:
        EVENTS.reset(token)
    assert event_id and store.lost == 1
    await connection.aclose()
