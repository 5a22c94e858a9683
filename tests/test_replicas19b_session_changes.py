"""A change to a 2025-11-25 session made on one replica reaches the other replicas' copies (`sessions.store: redis`).

Each replica serving a session holds a copy of it, restored from its record in Redis: the log level and
subscriptions replayed then set up that replica's backend sessions. A `resources/subscribe` or
`logging/setLevel` made on another replica afterwards updates the record, and is relayed to the copies already
held. Real replicas on a real Redis, the conformance backend, the SDK client, and each request sent where the
test says: the copy on B exists before the change is made on A.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import redis as redis_py
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, Gateway, running_gateways, write_config
from tests.test_elicit19_answers_on_any_replica import Routed

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
WATCHED = "test://watched-resource"
CHANNEL = "vmcp:cancels"  # `redis.key_prefix` + "cancels": relayed cancellations and session changes


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[list[Gateway]]:
    directory = tmp_path_factory.mktemp("changes19")
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "redis": {"url": redis.url, "timeout": 1.0},
        "sessions": {"store": "redis"},
    }
    with running_gateways(write_config(directory, config), 2) as replicas:
        _wait_until_both_listen(redis)
        yield replicas


def _wait_until_both_listen(server: RedisServer) -> None:
    """Both replicas subscribed to the channel changes are relayed on (pub/sub keeps nothing for later)."""
    client = redis_py.Redis.from_url(server.url)
    deadline = time.monotonic() + 10
    try:
        while dict(client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode()) != 2:
            assert time.monotonic() < deadline, "the replicas do not both listen for relayed changes"
            time.sleep(0.05)
    finally:
        client.close()


async def _updates_heard_on_b(home: Gateway, a: Gateway, b: Gateway, seen: dict[str, Any]) -> None:
    updates: list[str] = []

    async def heard(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    # initialize on `home`, the subscription on A; the rest (the standalone GET stream, the calls) on B
    route = Routed(
        lambda body: (
            home if body.get("method") == "initialize" else a if body.get("method") == "resources/subscribe" else b
        )
    )
    http = httpx2.AsyncClient(transport=route, timeout=30)
    transport = streamable_http_client(home.url, http_client=http)
    async with Client(transport, mode="legacy", message_handler=heard) as client:
        await client.send_ping()  # B holds a copy now (opened or restored), before the subscription exists
        await client.subscribe_resource(WATCHED)  # on A
        with anyio.move_on_after(5):
            while not updates:
                # On B: its backend (each replica runs its own) tells the sessions subscribed there.
                await client.call_tool("test_update_resource", {"uri": WATCHED})
                with anyio.move_on_after(0.5):
                    while not updates:  # noqa: ASYNC110 - the GET stream's notifications arrive in their own task
                        await anyio.sleep(0.02)
        seen["updates"] = updates
        seen["landed"] = route.landed


@pytest.mark.parametrize("opened_on", [0, 1], ids=["opened-on-A-restored-on-B", "opened-on-B-restored-on-A"])
def test_a_subscription_made_on_one_replica_is_heard_on_the_get_stream_of_another(
    pair: list[Gateway], opened_on: int
) -> None:
    a, b = pair
    seen: dict[str, Any] = {}
    anyio.run(_updates_heard_on_b, pair[opened_on], a, b, seen)
    assert [port for body, port in seen["landed"] if body.get("method") == "resources/subscribe"] == [a.port]
    assert seen["updates"][:1] == [WATCHED], f"B's GET stream heard no resources/updated; B:\n{b.output()[-3000:]}"


async def _logs_on_b_after_level_set_on_a(a: Gateway, b: Gateway, seen: dict[str, Any]) -> None:
    logs: list[str] = []

    async def logged(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.level)

    route = Routed(lambda body: b if body.get("method") == "tools/call" else a)  # calls on B, the rest on A
    http = httpx2.AsyncClient(transport=route, timeout=30)
    async with Client(
        streamable_http_client(a.url, http_client=http), mode="legacy", logging_callback=logged
    ) as client:
        await client.set_logging_level("debug")  # on A, before B holds a copy: B's restore replays it
        await client.call_tool("test_tool_with_logging", {})  # on B: its copy logs at debug
        seen["before"] = list(logs)
        await client.set_logging_level("error")  # on A
        seen["after"] = None
        with anyio.move_on_after(5):
            while seen["after"] != 0:
                logs.clear()
                await client.call_tool("test_tool_with_logging", {})  # on B: info logs unless B took the level
                seen["after"] = len(logs)
        seen["landed"] = route.landed


def test_a_log_level_set_on_one_replica_applies_to_the_copy_on_another(pair: list[Gateway]) -> None:
    a, b = pair
    seen: dict[str, Any] = {}
    anyio.run(_logs_on_b_after_level_set_on_a, a, b, seen)
    assert [port for body, port in seen["landed"] if body.get("method") == "logging/setLevel"] == [a.port] * 2
    assert seen["before"] == ["info"] * 3
    assert seen["after"] == 0, "the copy on the other replica still logs below the level set"
