"""The SSE events kept in Redis for resumption (`sessions.store: redis`) are bounded per caller and in total:
`sessions.max_event_bytes_per_caller_in_redis` drops the caller's oldest, `sessions.max_event_bytes_in_redis`
stores no new event past it. Before, only each session was bounded: one API key's sessions held ~8 MB each.

Real `redis-server`, a real `vmcp serve` with API keys, a real backend whose call sends progress (so the answer
is an SSE stream, stored) and then a big result; raw HTTP. What Redis holds is read from Redis itself: the
bytes of every stored event's message, per session (the session's record names its events' namespace).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from tests.redis_server import RedisServer, running_redis
from tests.support import (
    RAW_HEADERS,
    RAW_INITIALIZE,
    Gateway,
    api_keys_file,
    running_gateway,
    running_gateways,
    sse_messages,
    write_config,
)
from vmcp_opt.shared.session_store import session_key_digest

pytestmark = [pytest.mark.slow]

# Each call's answer: a text of RESULT characters (its stored event a little more, with its envelope).
RESULT = 100_000
# Alice keeps two answers of hers, not three; with hers, the total has room for one answer of Bob's, not two.
PER_CALLER = int(2.5 * RESULT)
TOTAL = int(3.5 * RESULT)
ALICE_CALLS, BOB_CALLS = 5, 3
IDLE = 5.0  # seconds a session of `expiring` lives unused

BACKEND = """
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("big")


@server.tool(structured_output=False)
async def big(size: int, ctx: Context) -> str:
    '''Reports progress, then answers `size` characters.'''
    await ctx.report_progress(1, 2)
    return "x" * size


server.run()
"""


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def budget_config(directory: Path, server: RedisServer, prefix: str, **sessions: Any) -> Path:
    """The big backend, API keys, sessions in Redis under `prefix`, with `sessions` settings."""
    (directory / "big.py").write_text(BACKEND)
    config = {
        "limits": {"session_idle_timeout": sessions.pop("idle", 600.0)},
        "backends": [{"name": "big", "command": sys.executable, "args": [str(directory / "big.py")]}],
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "redis": {"url": server.url, "key_prefix": prefix},
        "sessions": {"store": "redis", **sessions},
    }
    return write_config(directory, config)


@dataclass
class Served:
    redis: redis.Redis
    prefix: str
    replicas: list[Gateway]
    keys: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Served]:
    """Two replicas: a session opened on one is served by the other too, its events charged to the same caller."""
    directory = tmp_path_factory.mktemp("budget")
    keys = api_keys_file(directory / "keys.json", {"alice": ["dev"], "bob": ["dev"]})
    budgets = {"max_event_bytes_per_caller_in_redis": PER_CALLER, "max_event_bytes_in_redis": TOTAL}
    with running_gateways(budget_config(directory, redis_server, "two:", **budgets), 2) as replicas:
        yield Served(redis.Redis.from_url(redis_server.url), "two:", replicas, keys)


@pytest.fixture(scope="module")
def expiring(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Served]:
    """Room in total for one answer; sessions (and their events) expire after IDLE seconds unused."""
    directory = tmp_path_factory.mktemp("expiring")
    keys = api_keys_file(directory / "keys.json", {"alice": ["dev"], "bob": ["dev"]})
    path = budget_config(directory, redis_server, "short:", idle=IDLE, max_event_bytes_in_redis=int(1.5 * RESULT))
    with running_gateway(path) as gateway:
        yield Served(redis.Redis.from_url(redis_server.url), "short:", [gateway], keys)


def open_session(url: str, key: str) -> dict[str, str]:
    headers = {**RAW_HEADERS, "Authorization": f"Bearer {key}"}
    opened = httpx2.post(url, json=RAW_INITIALIZE, headers=headers, timeout=60)
    assert opened.status_code == 200, opened.text
    headers |= {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    initialized = httpx2.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert initialized.status_code == 202
    return headers


@dataclass
class Call:
    headers: dict[str, str]
    progress_id: str  # the event id of the call's progress notification: where a cut stream resumes from


def call_big(url: str, headers: dict[str, str], size: int = RESULT) -> Call:
    """One call, read to its end: its answer is the whole text; returns where it could be resumed from."""
    params = {"name": "big_big", "arguments": {"size": size}, "_meta": {"progressToken": "p"}}
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": params}
    answer = httpx2.post(url, json=body, headers=headers, timeout=60)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    events = list(sse_messages(iter([*answer.text.splitlines(), ""])))
    progress = [event for event, message in events if message and message.get("method") == "notifications/progress"]
    results = [message["result"] for _, message in events if message and message.get("id") == 5]
    assert results and results[0]["content"][0]["text"] == "x" * size
    assert progress and progress[0] is not None
    return Call(headers, progress[0])


def namespace_of(served: Served, call: Call) -> str:
    """Where the events of the call's session are kept: its record (while it lives) says."""
    namespace = served.redis.hget(
        f"{served.prefix}session:{session_key_digest(call.headers['mcp-session-id'])}", "events"
    )
    assert namespace is not None
    return str(namespace.decode())


def streams_in(served: Served, namespace: str) -> list[bytes]:
    """The Redis streams holding a session's events."""
    return list(served.redis.scan_iter(match=f"{served.prefix}events:{namespace}:*", _type="STREAM"))


def stored_bytes(served: Served, calls: list[Call]) -> int:
    """The bytes of the messages Redis holds for the sessions of `calls`, read from its streams."""
    total = 0
    for call in calls:
        for key in streams_in(served, namespace_of(served, call)):
            total += sum(len(fields.get(b"m", b"")) for _, fields in served.redis.xrange(key))
    return total


def resume(url: str, call: Call) -> tuple[int, list[dict[str, Any]]]:
    """A GET resuming the call's stream after its progress: the status and the messages replayed."""
    headers = {**call.headers, "last-event-id": call.progress_id}
    with httpx2.stream("GET", url, headers=headers, timeout=60) as response:
        text = response.read().decode()
    if response.status_code != 200:
        return response.status_code, [httpx2.Response(response.status_code, content=text).json()]
    return 200, [message for _, message in sse_messages(iter([*text.splitlines(), ""])) if message is not None]


def test_event_bytes_in_redis_stay_within_the_callers_and_the_total_budget(served: Served) -> None:
    """Alice's calls one after another, half of them on the replica that did not open their session, then
    Bob's: every client gets its whole answer, Redis holds at most each caller's budget and the total; a
    resumption from an event dropped or never stored is refused (400), one from an event kept replays the answer."""
    first, second = (replica.url for replica in served.replicas)
    alice = [call_big((first, second)[n % 2], open_session(first, served.keys["alice"])) for n in range(ALICE_CALLS)]
    bob = [call_big(first, open_session(first, served.keys["bob"])) for _ in range(BOB_CALLS)]

    held_by_alice, held_by_bob = stored_bytes(served, alice), stored_bytes(served, bob)
    assert 2 * RESULT < held_by_alice <= PER_CALLER  # her two newest answers
    assert held_by_bob > RESULT and held_by_alice + held_by_bob <= TOTAL  # his first answer only

    status, (error,) = resume(second, alice[0])  # her oldest: dropped for her budget
    assert status == 400 and "error" in error
    status, replayed = resume(second, alice[-1])
    assert status == 200 and replayed[-1]["result"]["content"][0]["text"] == "x" * RESULT
    status, replayed = resume(second, bob[0])
    assert status == 200 and replayed[-1]["result"]["content"][0]["text"] == "x" * RESULT
    status, (error,) = resume(second, bob[-1])  # not stored: the total was full
    assert status == 400 and "error" in error


def test_events_that_expired_no_longer_count_against_the_total(expiring: Served) -> None:
    """The total's count forgets a session whose events Redis expired, while other sessions' events keep the
    count itself alive: the next answer is stored again."""
    (url,) = (replica.url for replica in expiring.replicas)
    kept = call_big(url, open_session(url, expiring.keys["bob"]))
    namespace = namespace_of(expiring, kept)
    alice = open_session(url, expiring.keys["alice"])
    refused = call_big(url, alice)
    assert resume(url, refused)[0] == 400  # the total is full

    deadline = time.monotonic() + 30 * IDLE
    while streams_in(expiring, namespace):  # Bob's session is idle: its events expire; Alice's small calls go on
        assert time.monotonic() < deadline, "the idle session's events did not expire"
        call_big(url, alice, size=10)
        time.sleep(0.5)
    later = call_big(url, alice)
    status, replayed = resume(url, later)
    assert status == 200 and replayed[-1]["result"]["content"][0]["text"] == "x" * RESULT
