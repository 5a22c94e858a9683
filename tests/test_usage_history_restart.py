"""The optimizer's usage history in Redis (`optimizer.usage_store: redis`) survives a Redis restarted empty even
when a replica that holds nothing merges into it first: the longest-lived history wins, and the newcomer's
counts are added to it, not the other way round.

A real `redis-server` without persistence (a restart empties it), real `vmcp serve` replicas and the real SDK
client. Which replica merges first after the restart is made certain, not left to timing: the old replica is
paused (SIGSTOP) while Redis restarts and the new one merges, then resumed. Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis
from mcp import Client

from tests.redis_server import running_redis
from tests.support import Gateway, demo_backend, running_gateway, write_config
from tests.test_redis_ops import after_two_more_merges, eventually

pytestmark = [pytest.mark.slow]

PREFIX = "vmcp-restart:"
TASKS, PAIRS = PREFIX + "usage:tasks", PREFIX + "usage:together"
TASK = (("notes_save_note", {"title": "t", "text": "x"}), ("notes_whoami", {}))


def usage_config(directory: Path, redis_url: str, name: str) -> Path:
    directory.mkdir(exist_ok=True)
    return write_config(
        directory,
        {
            "backends": [demo_backend("notes")],
            "optimizer": {
                "enabled": True,
                "index_dir": str(directory / "index"),
                "usage_store": "redis",
                "usage_sync_interval": 0.2,
            },
            "redis": {"url": redis_url, "key_prefix": PREFIX, "timeout": 1.0},
        },
        name,
    )


def one_task(gateway: Gateway) -> None:
    async def main() -> None:
        async with Client(gateway.url, mode="legacy") as client:  # hidden behind the optimizer, callable
            for name, arguments in TASK:
                result = await client.call_tool(name, arguments)
                assert not result.is_error, result.content

    anyio.run(main)


@contextlib.contextmanager
def paused(gateway: Gateway) -> Iterator[None]:
    os.kill(gateway.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(gateway.proc.pid, signal.SIGCONT)


def test_a_new_replica_merging_first_after_redis_restarts_empty_does_not_replace_the_older_history(
    tmp_path: Path,
) -> None:
    with running_redis() as server:
        store = redis.Redis(port=server.port)
        first = usage_config(tmp_path / "old", server.url, "old.yaml")
        with running_gateway(first, "--log-level", "debug") as old:
            one_task(old)
            learned = eventually(lambda: store.hgetall(TASKS) if len(store.hgetall(TASKS)) == 2 else None, "the task")
            assert learned == {b"notes_save_note": b"1", b"notes_whoami": b"1"}

            second = usage_config(tmp_path / "new", server.url, "new.yaml")
            with paused(old):
                server.stop()
                server.start()  # no persistence: empty
                with running_gateway(second, "--log-level", "debug") as new:  # holds no history: Redis was empty
                    one_task(new)
                    eventually(lambda: store.hgetall(TASKS) == learned, "the new replica's first counts")
            # Resumed: the old replica finds a history born after its own and writes its own back, added.
            after_two_more_merges(old)
            after_two_more_merges(old)  # written back once, not added again
            assert store.hgetall(TASKS) == {b"notes_save_note": b"2", b"notes_whoami": b"2"}
            assert store.hgetall(PAIRS) == {
                b'["notes_save_note", "notes_whoami"]': b"2",
                b'["notes_whoami", "notes_save_note"]': b"2",
            }
            assert old.output().count("was gone (Redis restarted empty?) or born after this replica's") == 1
