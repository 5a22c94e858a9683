"""A Redis that answers but refuses the gateway's writes (`sessions.store: redis`): at maxmemory with a policy
that evicts nothing, or with an ACL user lacking rights on the gateway's keys. `/readyz` must say so (a PING
alone is answered), the log must not call it unreachable, and sessions must still move between replicas
while it is full (their records are read, not written).

Real `redis-server` (tests/redis_server.py), made full with CONFIG SET maxmemory 1 and restricted with ACL
SETUSER; real `vmcp serve` replicas; `/readyz` over HTTP; every wait polls with a deadline.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
import redis

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, Gateway, raw_session, running_gateway, write_config

pytestmark = [pytest.mark.slow]

T = TypeVar("T")
LISTING = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def eventually(check: Callable[[], T | None], what: str, within: float = 30.0) -> T:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {within}s")
        time.sleep(0.1)


def config(directory: Path, server: RedisServer) -> Path:
    demo = {"name": "notes", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "demo_server.py")]}
    return write_config(
        directory, {"backends": [demo], "redis": {"url": server.url, "timeout": 1.0}, "sessions": {"store": "redis"}}
    )


def redis_in_readyz(gateway: Gateway, state: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx2.get(f"{gateway.base}/readyz", timeout=10).json()
        return body if body.get("redis", {}).get("state") == state else None

    return check


def test_a_full_redis_is_named_in_readyz_and_sessions_still_move_between_replicas(tmp_path: Path) -> None:
    with running_redis() as server:
        admin = redis.Redis(port=server.port)
        with running_gateway(config(tmp_path, server)) as first, running_gateway(config(tmp_path, server)) as second:
            eventually(redis_in_readyz(first, "reachable"), "Redis reachable in /readyz")
            session = raw_session(first.url)  # recorded while Redis has room
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")  # every write refused from now on
            try:
                # The other replica reads the session's record: a full Redis still answers reads.
                answer = httpx2.post(second.url, json=LISTING, headers=session, timeout=30)
                assert answer.status_code == 200, answer.text
                body = eventually(redis_in_readyz(first, "refusing"), "a full Redis in /readyz")
                assert body["status"] == "degraded", body
                assert "full" in body["redis"]["error"] and "maxmemory" in body["redis"]["error"], body
                raw_session(first.url)  # opening a session still works, held by this replica alone
            finally:
                admin.config_set("maxmemory", "0")
            body = eventually(redis_in_readyz(first, "reachable"), "Redis taking writes again in /readyz")
            assert body["status"] == "ready", body
            log = first.output()
    assert "refuses writes: it is full" in log, log
    assert "Redis unreachable" not in log, log  # it answered all along


def test_an_acl_user_without_rights_on_the_gateways_keys_is_named_in_readyz(tmp_path: Path) -> None:
    with running_redis() as server:
        admin = redis.Redis(port=server.port)
        with running_gateway(config(tmp_path, server)) as gateway:
            eventually(redis_in_readyz(gateway, "reachable"), "Redis reachable in /readyz")
            admin.acl_setuser("default", reset_keys=True, keys=["~other:*"])  # PING still answered
            try:
                body = eventually(redis_in_readyz(gateway, "refusing"), "an ACL refusal in /readyz")
                assert body["status"] == "degraded", body
                assert "permission" in body["redis"]["error"] and "redis.key_prefix" in body["redis"]["error"], body
                raw_session(gateway.url)  # served by this replica alone, its record refused
            finally:
                admin.acl_setuser("default", keys=["~*"])
            eventually(redis_in_readyz(gateway, "reachable"), "Redis taking writes again in /readyz")
            log = gateway.output()
    assert "refused a command for lack of permission" in log, log
    assert "Redis unreachable" not in log, log
