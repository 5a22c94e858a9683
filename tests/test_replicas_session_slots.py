"""A session's slots on every replica that held it are freed when it is deleted, not when each copy idles out.

Two real replicas (`sessions.store: redis`) on a real Redis behind a real nginx round-robin, the SDK client:
one client opening, using and closing (DELETE) one session at a time must always get its next session, though
each of its sessions was restored on the replica its DELETE did not reach.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.nginx_server import Nginx, running_nginx
from tests.redis_server import running_redis
from tests.support import EXAMPLES, running_gateway, write_config

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
DEADLINE = 10.0  # well past the replicas' look for deletions, far below the 600 s idle timeout


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    directory = tmp_path_factory.mktemp("slots")
    with running_redis() as redis:
        config = {
            "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
            "redis": {"url": redis.url, "timeout": 1.0},
            "sessions": {"store": "redis"},
            # nginx is not a trusted proxy: every session comes from its one address.
            "limits": {"max_sessions_per_address": 1},
        }
        path = write_config(directory, config)
        with (
            running_gateway(path) as first,
            running_gateway(path) as second,
            running_nginx(directory / "nginx", [first.port, second.port]) as proxy,
        ):
            yield proxy


async def one_session(url: str) -> list[str]:
    """Opens a session, lists tools twice (round-robin: on both replicas), closes it; the replicas that answered."""
    replicas: list[str] = []

    async def note(response: httpx2.Response) -> None:
        replicas.append(response.headers.get("vmcp-replica", "?"))

    http = httpx2.AsyncClient(timeout=30, event_hooks={"response": [note]})
    async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        for _ in range(2):
            await client.list_tools()
    return replicas


async def next_session(url: str) -> list[str]:
    """`one_session`, retried while it is refused, up to the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            return await one_session(url)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await anyio.sleep(0.2)


def test_one_session_at_a_time_through_round_robin_is_never_refused(nginx: Nginx) -> None:
    async def main() -> list[set[str]]:
        return [set(await next_session(nginx.url)) for _ in range(4)]

    answered = anyio.run(main)
    # Each session was held by both replicas (opened on one, restored on the other), yet the next one was
    # admitted though each replica admits one session of this address at a time.
    assert all(len(replicas) == 2 for replicas in answered), answered
