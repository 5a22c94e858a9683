"""A 2025-11-25 client's `notifications/cancelled` reaches the replica running the call (`sessions.store: redis`).

The client POSTs its cancellation as a new message, which a load balancer without affinity may send to a
replica other than the one running the call. Real replicas on a real Redis, the conformance backend (which
counts the `test_slow` calls cancelled by their caller), the SDK client cancelling a call it gave up on, and
each POST sent where the test says, so the cancellation lands on the replica not running the call.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, Gateway, running_gateways, write_config
from tests.test_elicit19_answers_on_any_replica import Routed

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[list[Gateway]]:
    directory = tmp_path_factory.mktemp("cancel19")
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "redis": {"url": redis.url, "timeout": 1.0},
        "sessions": {"store": "redis"},
    }
    with running_gateways(write_config(directory, config), 2) as replicas:
        yield replicas


def _is_cancel(body: dict[str, object]) -> bool:
    return body.get("method") == "notifications/cancelled"


async def _count(client: Client, tool: str) -> int:
    result = await client.call_tool(tool, {})
    return int("".join(c.text for c in result.content if isinstance(c, types.TextContent)))


async def _cancelled_calls(client: Client) -> int:
    return await _count(client, "test_cancelled_calls")


async def _give_up_on_a_slow_call(home: Gateway, caller: Gateway, other: Gateway, seen: dict[str, object]) -> None:
    """One session (opened on `home`) whose calls run on `caller` and whose cancellation lands on `other`: the
    backend's count of cancelled calls before and once it moved (or the deadline passed), into `seen`."""
    route = Routed(lambda body: other if _is_cancel(body) else home if body.get("method") == "initialize" else caller)
    http = httpx2.AsyncClient(transport=route, timeout=60)
    async with Client(streamable_http_client(home.url, http_client=http), mode="legacy") as client:
        before = await _cancelled_calls(client)
        # Once the call runs at the backend the client gives up on it: the SDK sends `notifications/cancelled`,
        # which lands on `other`.
        giving_up = anyio.CancelScope()

        async def slow_call() -> None:
            with giving_up:
                await client.call_tool("test_slow", {"seconds": 60})

        async with anyio.create_task_group() as group:
            group.start_soon(slow_call)
            with anyio.fail_after(30):
                while await _count(client, "test_running_calls") == 0:  # noqa: ASYNC110 - the backend's count
                    await anyio.sleep(0.05)
            giving_up.cancel()
        seen["before"] = seen["after"] = before
        with anyio.move_on_after(10):  # the backend's call would run for a minute: cancelled, it counts at once
            while seen["after"] == before:
                await anyio.sleep(0.1)
                seen["after"] = await _cancelled_calls(client)
        seen["cancel landed on"] = [port for body, port in route.landed if _is_cancel(body)]


@pytest.mark.parametrize("call_on", [0, 1], ids=["call-on-home-replica", "call-on-restoring-replica"])
def test_a_cancellation_landing_on_another_replica_cancels_the_call_and_its_backend_call(
    pair: list[Gateway], call_on: int
) -> None:
    home, caller, other = pair[0], pair[call_on], pair[1 - call_on]
    seen: dict[str, object] = {}
    try:
        anyio.run(_give_up_on_a_slow_call, home, caller, other, seen)
    finally:  # the SDK client fails its exit while the call it gave up on still runs: the cause is said here
        assert seen["cancel landed on"] == [other.port]
        assert seen["after"] == seen["before"] + 1, "the backend's call was not cancelled"  # type: ignore[operator]
