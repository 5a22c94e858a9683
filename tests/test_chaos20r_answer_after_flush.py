"""A client's answer relayed to the asking replica right after Redis restarted empty (`sessions.store: redis`).

Each replica keeps `<prefix>asker:<tag>` alive (every second) so that others relay answers only to a live tag; a
Redis that restarts empty has lost every such key until the next beat. Found by a chaos run (two replicas behind
nginx round-robin, Redis killed and restarted): an answer landing on the other replica in that window was dropped
("named no live replica") and the asking call waited out `timeouts.input`, its replica running on. Real replicas
on a real Redis, the conformance backend, the SDK client; the client's answer is sent to the replica that did not
ask, and Redis is emptied (FLUSHALL, as a restart without persistence) just before the client answers.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import anyio
import httpx2
import mcp_types as types
import pytest
import redis as redis_py
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client

from tests.redis_server import RedisServer, running_redis
from tests.support import Gateway, running_gateways, write_config
from tests.test_replicas19_relays import CONFORMANCE_SERVER, Routed, _wait_until_both_listen, is_answer

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[list[Gateway]]:
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "redis": {"url": redis.url, "timeout": 1.0},
        "sessions": {"store": "redis"},
        # A lost answer fails the call after this.
        "timeouts": {"input": 8},
    }
    with running_gateways(write_config(tmp_path_factory.mktemp("chaos20r"), config), 2) as replicas:
        _wait_until_both_listen(redis)
        yield replicas


def test_an_answer_relayed_just_after_redis_restarted_empty_reaches_the_asking_call(
    pair: list[Gateway], redis: RedisServer
) -> None:
    a, b = pair
    # B holds a copy of the session (tools/list lands there), asks nothing; A runs the call; the answer goes to B.
    route = Routed(lambda body: b if is_answer(body) or body.get("method") == "tools/list" else a)
    store = redis_py.Redis.from_url(redis.url)

    async def flush_then_accept(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        store.flushall()  # Redis restarted without persistence: every replica's tag key is gone until its next beat
        return types.ElicitResult(action="accept", content={"username": "u", "email": "e@example.com"})

    async def main() -> types.CallToolResult:
        http = httpx2.AsyncClient(transport=route, timeout=30)
        transport = streamable_http_client(a.url, http_client=http)
        with anyio.fail_after(30):  # a guard against hanging, not a measure
            async with Client(transport, mode="legacy", elicitation_callback=flush_then_accept) as client:
                await client.list_tools()
                return await client.call_tool("test_elicitation", {"message": "who?"})

    try:
        result = anyio.run(main)
    finally:
        store.close()
    text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
    assert not result.is_error, text
    assert text == 'User response: action=accept, content={"username": "u", "email": "e@example.com"}'
    assert any(is_answer(body) and port == b.port for body, port in route.landed), "the answer did not land on B"
