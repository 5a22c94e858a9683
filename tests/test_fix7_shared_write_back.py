"""A held session's record, written back when Redis lacks it, never lands next to its tombstone: a DELETE (on any
replica) between reading the state "missing" and the write wins, and the replica holding a copy ends it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis
from mcp_types import InitializeRequestParams

from tests.redis_server import RedisServer, running_redis
from vmcp_opt.server.session_relays import Held
from vmcp_opt.server.shared_sessions import SharedSessions
from vmcp_opt.shared.session_store import RedisSessions, SessionRecord, session_key_digest

pytestmark = pytest.mark.anyio
SESSION = "0123456789abcdef0123456789abcdef"
PARAMS = InitializeRequestParams.model_validate(
    {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}},
    by_name=False,
)
RECORD = SessionRecord(PARAMS, "2025-06-18", "ns1", "info", ("test://a",), owner="")
RECORD_KEY = "t:session:" + session_key_digest(SESSION)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


async def lost_then_deleted(client: aioredis.Redis, sessions: RedisSessions) -> None:
    """A record Redis lost (restarted empty), seen "missing", and then the session's DELETE on some replica."""
    await sessions.save(SESSION, RECORD)
    await client.flushdb()
    assert await sessions.held_states([SESSION]) == {SESSION: "missing"}
    await sessions.delete(SESSION)


async def test_a_record_written_back_after_its_tombstone_is_refused(client: aioredis.Redis) -> None:
    sessions = RedisSessions(client, "t:", ttl=60)
    await lost_then_deleted(client, sessions)
    assert await sessions.save_unless_ended(SESSION, RECORD) is False
    assert await client.exists(RECORD_KEY) == 0  # not next to the tombstone, to outlive it
    assert await sessions.held_states([SESSION]) == {SESSION: "ended"}


async def test_a_missing_record_is_written_back_whole(client: aioredis.Redis) -> None:
    sessions = RedisSessions(client, "t:", ttl=60)
    await sessions.save(SESSION, RECORD)
    await client.flushdb()
    assert await sessions.save_unless_ended(SESSION, RECORD) is True
    assert await sessions.load(SESSION) == RECORD
    assert 0 < await client.pttl(RECORD_KEY) <= 60_000


class Manager:
    """The session manager's one method the reaper calls, for a session it opened here."""

    def __init__(self) -> None:
        self.ended: list[str] = []

    async def end_session(self, session_id: str) -> None:
        self.ended.append(session_id)


def holding(sessions: RedisSessions, manager: Manager) -> tuple[SharedSessions, Held]:
    """A `SharedSessions` holding SESSION, opened here; only the parts the reaper and a request's check use."""
    parts: Any = SimpleNamespace(
        store=sessions,
        presence=None,
        relay=None,
        answers=None,
        cancels=None,
        events=None,
        rounds=None,
        shapes=None,
        refused=None,
    )
    shared = SharedSessions(app=None, manager=manager, parts=parts, gate=None)  # type: ignore[arg-type]
    held = shared._held[SESSION] = Held(RECORD)
    return shared, held


async def test_the_reaper_ends_its_copy_instead_of_writing_back_a_deleted_session(client: aioredis.Redis) -> None:
    sessions, manager = RedisSessions(client, "t:", ttl=60), Manager()
    shared, held = holding(sessions, manager)
    await lost_then_deleted(client, sessions)
    await shared._record_again(SESSION, held)
    assert await client.exists(RECORD_KEY) == 0
    assert manager.ended == [SESSION] and shared.held == 0


async def test_the_reaper_still_writes_back_a_lost_record(client: aioredis.Redis) -> None:
    sessions, manager = RedisSessions(client, "t:", ttl=60), Manager()
    shared, held = holding(sessions, manager)
    await sessions.save(SESSION, RECORD)
    await client.flushdb()
    await shared._record_again(SESSION, held)
    assert await sessions.load(SESSION) == RECORD
    assert manager.ended == [] and shared.held == 1


async def test_a_request_learns_the_session_ended_when_its_write_back_meets_the_tombstone(
    client: aioredis.Redis,
) -> None:
    sessions = RedisSessions(client, "t:", ttl=60)
    shared, held = holding(sessions, Manager())
    held.recorded = False  # Redis was unreachable when it opened: the request writes it whole
    await sessions.delete(SESSION)
    assert await shared._still_open(SESSION, held) is False
    assert await client.exists(RECORD_KEY) == 0
