"""A session's record in Redis is bounded (`sessions.store: redis`): an `initialize` whose params are larger than
a record keeps is refused with a JSON-RPC error naming the bound, and leaves nothing in Redis; every replica
would otherwise keep up to `server.max_body_bytes` per session of one client in the Redis all clients share.

Real `redis-server`, a real `vmcp serve`, raw HTTP for the oversized request (no SDK client sends one), the
real SDK client for an ordinary session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import httpx2
import pytest
import redis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.redis_server import running_redis
from tests.support import EXAMPLES, RAW_HEADERS, RAW_INITIALIZE, running_gateway, write_config

pytestmark = [pytest.mark.slow]


def test_an_initialize_too_large_to_share_is_refused_and_leaves_nothing_in_redis(tmp_path: Path) -> None:
    demo = {"name": "notes", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "demo_server.py")]}
    with running_redis() as server:
        path = write_config(
            tmp_path, {"backends": [demo], "redis": {"url": server.url, "timeout": 1.0}, "sessions": {"store": "redis"}}
        )
        admin = redis.Redis(port=server.port)
        with running_gateway(path) as gateway:
            params = RAW_INITIALIZE["params"]
            huge = {
                **RAW_INITIALIZE,
                "params": {**params, "capabilities": {"experimental": {"x": {"y": "z" * 1_000_000}}}},
            }
            answer = httpx2.post(gateway.url, json=huge, headers=RAW_HEADERS, timeout=30)
            text = answer.text
            assert "initialize: the params are" in text and "sessions.store: redis" in text, text
            assert '"result"' not in text, text
            assert list(admin.scan_iter("vmcp:session:*")) == []

            async def ordinary() -> int:
                async with Client(streamable_http_client(gateway.url), mode="legacy") as client:
                    assert (await client.list_tools()).tools
                    return len(list(admin.scan_iter("vmcp:session:*")))  # before the client deletes its session

            assert anyio.run(ordinary) == 1  # an ordinary client is not affected: its session is recorded
