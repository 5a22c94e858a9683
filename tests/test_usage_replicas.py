"""Replicas learn from each other: with `optimizer.usage_store: redis` the co-usage history is one, in Redis.

Two real `vmcp serve` processes, each with its own backends and its own index directory (so nothing is
shared through files), on one real `redis-server`. A client's task on replica A raises a companion in
find_tool's answer on replica B, and `vmcp index usage` reads the pair from Redis.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.redis_server import RedisServer, running_redis
from tests.support import Gateway, running_gateway, write_config
from tests.test_usage_gateway import COMPANION, call_ok, find_answer, usage_config, wait_for_vectors

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def replica_config(directory: Path, redis: RedisServer) -> Path:
    config: dict[str, Any] = usage_config(directory / "index")
    config["optimizer"] |= {"usage_store": "redis", "usage_sync_interval": 0.5}
    config["redis"] = {"url": redis.url, "key_prefix": "vmcp-test:"}
    return write_config(directory, config)


async def companion_on(replica: Gateway) -> dict[str, Any]:
    """find_tool's answer on `replica` once the companion has joined it (the other replica's learning)."""
    async with Client(replica.url, mode="legacy") as client:
        with anyio.fail_after(60):
            while True:
                answer = {tool["name"]: tool for tool in await find_answer(client)}
                if COMPANION in answer:
                    return answer[COMPANION]
                await anyio.sleep(0.3)


def test_a_task_on_one_replica_raises_its_companion_on_the_other(tmp_path: Path, redis: RedisServer) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    configs = [replica_config(tmp_path / name, redis) for name in ("a", "b")]
    with ExitStack() as stack:
        first, second = (stack.enter_context(running_gateway(config, ready_timeout=120)) for config in configs)

        async def main() -> dict[str, Any]:
            async with Client(second.url, mode="legacy") as client:
                await wait_for_vectors(client)
                assert COMPANION not in [tool["name"] for tool in await find_answer(client)]
            async with Client(first.url, mode="legacy") as client:  # one task, on replica A only
                await call_ok(client, "notes_save_note", {"title": "t", "text": "x"})
                await call_ok(client, COMPANION, {"timezone": "Asia/Tokyo"})
            return await companion_on(second)

        found = anyio.run(main)
    assert found["used_with"] == "notes_save_note"
    listed = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "index", "usage", "-c", str(configs[1])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "2 tools used" in listed.stdout and "Redis" in listed.stdout, listed.stdout
    assert COMPANION in listed.stdout and "notes_save_note" in listed.stdout
    assert not (tmp_path / "a" / "index" / "usage.json").exists()  # nothing went through a file
