"""Replicas while Redis is frozen (SIGSTOP: connections still taken by the kernel, nothing answered), and the
sockets of the gateway's Redis pools after a burst and through an outage.

Real `redis-server` (tests/redis_server.py), real `vmcp serve` replicas, plain HTTP clients. A burst is made
real: Redis pauses writes (`CLIENT PAUSE WRITE`), so every session's touch waits on a connection of its own,
until the server side counts one per request. Every wait polls with a deadline; the one bound on an answer's
time is a client timeout far above the fast path (about a millisecond) and far below `redis.timeout` (10 s).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
import redis

from tests.redis_server import RedisServer, running_redis
from tests.support import Gateway, demo_backend, raw_session, running_gateway, running_gateways, write_config
from tests.test_redis_ops import eventually
from tests.test_redis_outage27 import redis_state

pytestmark = [pytest.mark.slow]

PING = {"jsonrpc": "2.0", "id": 4, "method": "ping"}
ADMIN = "t28-admin"  # the test's own Redis connections, left out of the counts
BURST = 24
# Far above a pool's few sockets at rest (the relays' reads, the heartbeat, /readyz's probe), far below BURST.
AT_REST = BURST // 2


def config(directory: Path, url: str, timeout: float, **settings: Any) -> Path:
    return write_config(
        directory,
        {
            "backends": [demo_backend("notes")],
            "redis": {"url": url, "timeout": timeout, "key_prefix": "t28:"},
            "sessions": {"store": "redis", "outage_grace_seconds": 600},
            **settings,
        },
    )


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[psutil.Process]:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield psutil.Process(server.proc.pid)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def gateway_clients(admin: redis.Redis) -> int:
    """Connections Redis counts, but the test's own."""
    return sum(1 for client in admin.client_list() if client.get("name") != ADMIN)


def established(gateway: Gateway, server: RedisServer) -> int:
    """The gateway's open sockets to Redis, as its side sees them (while Redis is stopped, it answers nothing)."""
    sockets = psutil.Process(gateway.proc.pid).net_connections(kind="tcp")
    return sum(1 for s in sockets if s.raddr and s.raddr.port == server.port and s.status == psutil.CONN_ESTABLISHED)


def burst(gateway: Gateway, admin: redis.Redis, sessions: list[dict[str, str]]) -> None:
    """One request per session at once, each holding a Redis connection of its own until all are counted."""
    answers: list[int] = []

    def ping(session: dict[str, str]) -> None:
        answers.append(httpx2.post(gateway.url, json=PING, headers=session, timeout=60).status_code)

    admin.client_pause(60_000, all=False)  # writes wait (the touch's PEXPIRE); CLIENT LIST still answers
    try:
        threads = [threading.Thread(target=ping, args=(session,)) for session in sessions]
        for thread in threads:
            thread.start()
        eventually(lambda: gateway_clients(admin) >= len(sessions), "a Redis connection per request")
    finally:
        admin.client_unpause()
    for thread in threads:
        thread.join(60)
    assert answers == [200] * len(sessions), answers


def test_a_session_held_elsewhere_is_answered_at_once_while_redis_is_known_frozen(tmp_path: Path) -> None:
    with running_redis() as server:
        path = config(tmp_path, server.url, timeout=10.0)
        with running_gateways(path, 2) as [first, second]:
            session = raw_session(first.url)
            with frozen(server) as redis_process:
                eventually(lambda: redis_state(second) == "unreachable", "a frozen Redis unreachable", within=60)
                for _ in range(3):
                    # Before: each paid redis.timeout (10 s) on the lookup, past this client's patience.
                    answer = httpx2.post(second.url, json=PING, headers=session, timeout=3)
                    assert answer.status_code == 503, answer.text  # not 404: the session may well exist
                    assert answer.headers["retry-after"] == "1"
                    error = answer.json()["error"]
                    assert error["code"] == -32000 and "unreachable" in error["message"], error
                    assert error["data"] == {"retry_after": 1}
                assert redis_process.status() == psutil.STATUS_STOPPED  # answered while Redis was still stopped
            # One probe a second finds Redis back; the session is then restored on the second replica.
            eventually(
                lambda: httpx2.post(second.url, json=PING, headers=session, timeout=30).status_code == 200,
                "the session served by the other replica once Redis answers",
            )


def test_a_bursts_redis_sockets_are_closed_once_idle(tmp_path: Path) -> None:
    with running_redis() as server:
        admin = redis.Redis(port=server.port, client_name=ADMIN)
        with running_gateway(config(tmp_path, server.url, timeout=20.0)) as gateway:
            sessions = [raw_session(gateway.url) for _ in range(BURST)]
            burst(gateway, admin, sessions)
            # Before: the pool kept every socket the burst opened, for good.
            eventually(lambda: gateway_clients(admin) <= AT_REST, "the burst's idle sockets closed", within=60)
            assert httpx2.post(gateway.url, json=PING, headers=sessions[0], timeout=30).status_code == 200


def test_sockets_to_a_frozen_redis_are_released(tmp_path: Path) -> None:
    with running_redis() as server:
        admin = redis.Redis(port=server.port, client_name=ADMIN)
        with running_gateway(config(tmp_path, server.url, timeout=20.0)) as gateway:
            sessions = [raw_session(gateway.url) for _ in range(BURST)]
            burst(gateway, admin, sessions)
            with frozen(server):
                # Before: the idle sockets stayed open to the stopped Redis, each costing its next user a timeout.
                eventually(lambda: established(gateway, server) <= AT_REST, "sockets released while frozen", 90)
            eventually(lambda: gateway_clients(admin) <= AT_REST, "few connections once Redis is back", within=60)
            eventually(lambda: redis_state(gateway) == "reachable", "Redis reachable again", within=60)
