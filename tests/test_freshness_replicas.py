"""A backend change one replica notices reaches the clients of another (`redis.share_changes`).

Two real `vmcp serve` replicas on one real Redis, each with its own copy of a backend whose copies share
their tools through a file (examples/backends/shared_tools_server.py), as replicas of a real deployment
reach the same service. A tool is added through replica A: only A's copy announces `list_changed`, to A.
A client session open on replica B gets `notifications/tools/list_changed` and lists the new tool.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow]
SHARED_TOOLS_SERVER = EXAMPLES / "backends" / "shared_tools_server.py"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def replicas_config(directory: Path, redis: RedisServer) -> Path:
    backend = {
        "name": "shared",
        "command": sys.executable,
        "args": [str(SHARED_TOOLS_SERVER)],
        "env": {"SHARED_TOOLS_FILE": str(directory / "tools.json")},
    }
    return write_config(directory, {"backends": [backend], "redis": {"url": redis.url, "share_changes": True}})


async def names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


async def told_on_b(first: Gateway, second: Gateway) -> set[str]:
    """Add a tool through A with a session open on B; B's tools once B's client was told."""
    told = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            told.set()

    async with Client(second.url, mode="legacy", message_handler=on_message) as on_b:
        assert "shared_shout" not in await names(on_b)
        async with Client(first.url, mode="legacy") as on_a:
            await on_a.call_tool("shared_add_tool", {"name": "shout"})
        with anyio.fail_after(30):
            await told.wait()
        return await names(on_b)


def test_a_tool_added_through_one_replica_reaches_a_session_on_the_other(tmp_path: Path, redis: RedisServer) -> None:
    config = replicas_config(tmp_path, redis)
    with ExitStack() as stack:
        first, second = (stack.enter_context(running_gateway(config)) for _ in range(2))
        tools = anyio.run(told_on_b, first, second)
    assert "shared_shout" in tools
    assert "backend shared changed on another replica: re-listing it" in second.output()
    assert "changed on another replica" not in first.output()  # B's echo told A nothing new


def test_a_replica_sharing_changes_exits_on_sigterm(tmp_path: Path, redis: RedisServer) -> None:
    # The changes listener runs until cancelled; left running it held the lifespan, and the process, forever.
    with running_gateway(replicas_config(tmp_path, redis)) as gateway:
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(timeout=30) == 0
    assert "drained in" in gateway.output()
